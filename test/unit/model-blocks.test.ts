import t from 'tap';
import { BadInputError } from '../../src/errors.js';
import { applyPieces, blockCount, planTruncate, reshapeChunks, touchedBlocks, type DirtyChunk } from '../../src/model/blocks.js';
import { newId } from '../../src/model/ids.js';
import type { BlockRef } from '../../src/model/manifests.js';

const BS = 4096;

function ref(offset: number, size: number): BlockRef {
  return { id: newId(), offset, size, key: new Uint8Array(32), digest: new Uint8Array(32) };
}
function seq(n: number, from = 0): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => (from + i) % 251);
}

/** Reference model: the file as one flat array, for checking reshape + apply end to end. */
function flatApply(original: Uint8Array, chunks: readonly DirtyChunk[]): Uint8Array {
  const out = new Uint8Array(Math.max(original.length, ...chunks.map((c) => c.offset + c.data.length)));
  out.set(original);
  for (const c of chunks) out.set(c.data, c.offset);
  return out;
}

t.test('blockCount', async (t) => {
  t.equal(blockCount(0, BS), 0, 'empty file');
  t.equal(blockCount(1, BS), 1);
  t.equal(blockCount(BS, BS), 1, 'exactly one block');
  t.equal(blockCount(BS + 1, BS), 2);
  t.equal(blockCount(10 * BS, BS), 10);
  t.throws(() => blockCount(-1, BS), { name: 'BadInputError', message: /size must be a non-negative safe integer/ });
  t.throws(() => blockCount(1.5, BS), BadInputError);
  t.throws(() => blockCount(10, 0), { name: 'BadInputError', message: /blockSize must be a positive/ });
});

t.test('touchedBlocks', async (t) => {
  t.same(touchedBlocks(0, 0, BS), [], 'length 0');
  t.same(touchedBlocks(5 * BS + 3, 0, BS), [], 'length 0 anywhere');
  t.same(touchedBlocks(0, BS, BS), [{ index: 0, blockOffset: 0, start: 0, end: BS, bufferOffset: 0 }], 'exactly one whole block');
  t.same(touchedBlocks(BS, 10, BS), [{ index: 1, blockOffset: BS, start: 0, end: 10, bufferOffset: 0 }], 'starting exactly on a boundary');
  t.same(touchedBlocks(BS - 10, 10, BS), [{ index: 0, blockOffset: 0, start: BS - 10, end: BS, bufferOffset: 0 }], 'ending exactly on a boundary');
  t.same(touchedBlocks(100, 50, BS), [{ index: 0, blockOffset: 0, start: 100, end: 150, bufferOffset: 0 }], 'unaligned inside one block');
  t.same(touchedBlocks(BS - 1, 2, BS), [
    { index: 0, blockOffset: 0, start: BS - 1, end: BS, bufferOffset: 0 },
    { index: 1, blockOffset: BS, start: 0, end: 1, bufferOffset: 1 },
  ], 'two bytes across a boundary');
  t.same(touchedBlocks(BS + 100, 2 * BS, BS), [
    { index: 1, blockOffset: BS, start: 100, end: BS, bufferOffset: 0 },
    { index: 2, blockOffset: 2 * BS, start: 0, end: BS, bufferOffset: BS - 100 },
    { index: 3, blockOffset: 3 * BS, start: 0, end: 100, bufferOffset: 2 * BS - 100 },
  ], 'unaligned write spanning 3 blocks');
  const many = touchedBlocks(7, 10 * BS, BS);
  t.equal(many.length, 11);
  t.equal(many.reduce((n, s) => n + (s.end - s.start), 0), 10 * BS, 'slices cover exactly the range');
  t.ok(many.every((s, i) => i === 0 || s.bufferOffset === many[i - 1]!.bufferOffset + (many[i - 1]!.end - many[i - 1]!.start)), 'buffer offsets are contiguous');
  t.throws(() => touchedBlocks(-1, 1, BS), { name: 'BadInputError', message: /offset must be/ });
  t.throws(() => touchedBlocks(0, -1, BS), { name: 'BadInputError', message: /length must be/ });
  t.throws(() => touchedBlocks(Number.MAX_SAFE_INTEGER, 2, BS), { name: 'BadInputError', message: /offset \+ length must be/ });
  t.throws(() => touchedBlocks(0, 1, -BS), BadInputError);
});

t.test('planTruncate', async (t) => {
  // Blocks 0, 1 and 3 exist; 2 is a hole. File size 3*BS + 100.
  const b0 = ref(0, BS);
  const b1 = ref(BS, BS);
  const b3 = ref(3 * BS, 100);
  const blocks = [b0, b1, b3];
  t.same(planTruncate(blocks, 0, BS), { keep: [], drop: blocks, trim: null }, 'down to 0 drops everything');
  t.same(planTruncate(blocks, BS + 10, BS), { keep: [b0], drop: [b3], trim: { block: b1, newSize: 10 } }, 'mid-block trims the straddling block');
  t.same(planTruncate(blocks, 2 * BS, BS), { keep: [b0, b1], drop: [b3], trim: null }, 'exact boundary: nothing to trim');
  t.same(planTruncate(blocks, BS, BS), { keep: [b0], drop: [b1, b3], trim: null }, 'exact boundary at block 1');
  t.same(planTruncate(blocks, 2 * BS + 50, BS), { keep: [b0, b1], drop: [b3], trim: null }, 'cut inside a hole');
  t.same(planTruncate(blocks, 3 * BS + 40, BS), { keep: [b0, b1], drop: [], trim: { block: b3, newSize: 40 } }, 'trim the last, partial block');
  t.same(planTruncate(blocks, 3 * BS + 100, BS), { keep: blocks, drop: [], trim: null }, 'same size: no change');
  t.same(planTruncate(blocks, 100 * BS, BS), { keep: blocks, drop: [], trim: null }, 'grow keeps all blocks; the rest is a hole');
  t.same(planTruncate([], 0, BS), { keep: [], drop: [], trim: null }, 'empty file');
  t.same(planTruncate([], 5 * BS, BS), { keep: [], drop: [], trim: null }, 'grow an empty file');
  t.throws(() => planTruncate(blocks, -5, BS), { name: 'BadInputError', message: /newSize must be/ });
  t.throws(() => planTruncate([ref(0, BS), ref(0, BS)], 10, BS), { name: 'BadInputError', message: /more than one block straddles/ });
});

t.test('reshapeChunks', async (t) => {
  t.same(reshapeChunks([], BS), [], 'no writes');
  t.same(reshapeChunks([{ offset: 10, data: new Uint8Array(0) }], BS), [], 'empty write touches nothing');

  const big = seq(3 * BS);
  const crossing = reshapeChunks([{ offset: BS / 2, data: big }], BS);
  t.same(crossing.map((w) => w.index), [0, 1, 2, 3], 'a chunk crossing several blocks');
  t.same(crossing.map((w) => w.pieces.map((p) => [p.start, p.data.length])), [[[BS / 2, BS / 2]], [[0, BS]], [[0, BS]], [[0, BS / 2]]]);
  t.equal(crossing[1]!.pieces[0]!.data.buffer, big.buffer, 'pieces are views, not copies');
  t.equal(crossing[1]!.pieces[0]!.data.byteOffset, BS / 2);

  const chunks: DirtyChunk[] = [
    { offset: 2 * BS + 5, data: seq(10, 1) }, // later block first
    { offset: 0, data: seq(BS + 20, 2) },
    { offset: 10, data: seq(5, 3) }, // overlaps the previous one, must win
  ];
  const writes = reshapeChunks(chunks, BS);
  t.same(writes.map((w) => w.index), [0, 1, 2], 'sorted by block index');
  t.same(writes[0]!.pieces.map((p) => [p.start, p.data.length]), [[0, BS], [10, 5]], 'pieces keep write order');
  t.same(writes[1]!.pieces.map((p) => [p.start, p.data.length]), [[0, 20]]);
  t.same(writes[2]!.pieces.map((p) => [p.start, p.data.length]), [[5, 10]]);
  t.throws(() => reshapeChunks([{ offset: -1, data: seq(3) }], BS), BadInputError);
});

t.test('applyPieces', async (t) => {
  t.same([...applyPieces(null, 0, [{ start: 2, data: Uint8Array.of(7, 8) }], BS)], [0, 0, 7, 8], 'hole: zeros before the write');
  const base = Uint8Array.of(1, 2, 3, 4, 5, 6);
  t.same([...applyPieces(base, 6, [{ start: 1, data: Uint8Array.of(9) }], BS)], [1, 9, 3, 4, 5, 6], 'unaligned write inside existing data');
  t.same([...applyPieces(base, 6, [{ start: 4, data: Uint8Array.of(9, 9, 9) }], BS)], [1, 2, 3, 4, 9, 9, 9], 'write extending the block');
  t.same([...applyPieces(base, 4, [{ start: 1, data: Uint8Array.of(9) }], BS)], [1, 9, 3, 4], 'base bytes past baseSize are ignored');
  t.same([...applyPieces(Uint8Array.of(1, 2), 5, [], BS)], [1, 2, 0, 0, 0], 'base shorter than baseSize reads as zeros');
  t.same([...applyPieces(null, 3, [], BS)], [0, 0, 0], 'pure hole');
  t.same(
    [...applyPieces(base, 6, [{ start: 0, data: Uint8Array.of(7, 7, 7) }, { start: 1, data: Uint8Array.of(8) }, { start: 0, data: Uint8Array.of(6) }], BS)],
    [6, 8, 7, 4, 5, 6],
    'later pieces overwrite earlier ones',
  );
  const full = applyPieces(null, 0, [{ start: BS - 1, data: Uint8Array.of(1) }], BS);
  t.equal(full.length, BS, 'write on the last byte of a block');
  base.fill(0);
  t.throws(() => applyPieces(null, 0, [{ start: BS - 1, data: Uint8Array.of(1, 2) }], BS), { name: 'BadInputError', message: /extends past blockSize/ });
  t.throws(() => applyPieces(null, BS + 1, [], BS), { name: 'BadInputError', message: /baseSize 4097 exceeds blockSize/ });
  t.throws(() => applyPieces(null, 0, [{ start: -1, data: Uint8Array.of(1) }], BS), { name: 'BadInputError', message: /piece start/ });
});

t.test('reshape + apply matches a flat reference model', async (t) => {
  // File: 2.5 blocks, block 1 is a hole.
  const size = 2 * BS + BS / 2;
  const original = new Uint8Array(size);
  original.set(seq(BS, 50), 0);
  original.set(seq(BS / 2, 60), 2 * BS);
  const stored = new Map<number, Uint8Array>([[0, original.slice(0, BS)], [2, original.slice(2 * BS)]]);
  const chunks: DirtyChunk[] = [
    { offset: BS - 3, data: seq(2 * BS + 10, 1) }, // spans 0,1,2,3 and grows the file
    { offset: 5, data: seq(20, 2) },
    { offset: BS - 1, data: seq(3, 3) }, // overlaps the first write across a boundary
    { offset: 3 * BS + 100, data: seq(7, 4) }, // beyond the end: leaves a hole before it
  ];
  const expected = flatApply(original, chunks);

  const result = new Uint8Array(expected.length);
  for (const [index, block] of stored) result.set(block, index * BS);
  for (const w of reshapeChunks(chunks, BS)) {
    const baseSize = Math.min(BS, Math.max(0, size - w.index * BS));
    const content = applyPieces(stored.get(w.index) ?? null, baseSize, w.pieces, BS);
    result.set(content, w.index * BS);
  }
  t.same([...result], [...expected], 'blockwise result equals the flat model');
  t.equal(result.length, 3 * BS + 107);
});
