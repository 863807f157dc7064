/** Pure block arithmetic for files split into fixed-size blocks; no I/O, no crypto. */
import { BadInputError } from '../errors.js';
import type { BlockRef } from './manifests.js';

export interface BlockSlice {
  index: number;
  blockOffset: number; // index * blockSize
  start: number; // within the block
  end: number; // exclusive, within the block
  bufferOffset: number; // offset into the caller's buffer
}
export interface TruncatePlan {
  keep: BlockRef[]; // unchanged
  drop: BlockRef[]; // entirely at or past the new size
  trim: { block: BlockRef; newSize: number } | null; // straddles the new size: rewrite its first newSize bytes
}
/** One write, in the order it happened. */
export interface DirtyChunk {
  offset: number;
  data: Uint8Array;
}
/** Pieces in write order, positions within the block. */
export interface BlockWrite {
  index: number;
  pieces: Array<{ start: number; data: Uint8Array }>;
}

function checkUint(name: string, n: number): void {
  if (!Number.isSafeInteger(n) || n < 0) throw new BadInputError(`${name} must be a non-negative safe integer, got ${n}`);
}
function checkBlockSize(blockSize: number): void {
  if (!Number.isSafeInteger(blockSize) || blockSize <= 0) {
    throw new BadInputError(`blockSize must be a positive safe integer, got ${blockSize}`);
  }
}

export function touchedBlocks(offset: number, length: number, blockSize: number): BlockSlice[] {
  checkUint('offset', offset);
  checkUint('length', length);
  checkBlockSize(blockSize);
  const endOffset = offset + length;
  checkUint('offset + length', endOffset);
  const slices: BlockSlice[] = [];
  if (length === 0) return slices;
  const first = Math.floor(offset / blockSize);
  const last = Math.floor((endOffset - 1) / blockSize);
  for (let index = first; index <= last; index++) {
    const blockOffset = index * blockSize;
    const from = Math.max(offset, blockOffset);
    const to = Math.min(endOffset, blockOffset + blockSize);
    slices.push({ index, blockOffset, start: from - blockOffset, end: to - blockOffset, bufferOffset: from - offset });
  }
  return slices;
}

export function blockCount(size: number, blockSize: number): number {
  checkUint('size', size);
  checkBlockSize(blockSize);
  return Math.ceil(size / blockSize);
}

/** Shrinking drops and trims blocks; growing keeps everything, the new range reads as a hole (zeros). */
export function planTruncate(blocks: readonly BlockRef[], newSize: number, blockSize: number): TruncatePlan {
  checkUint('newSize', newSize);
  checkBlockSize(blockSize);
  const plan: TruncatePlan = { keep: [], drop: [], trim: null };
  for (const block of blocks) {
    if (block.offset >= newSize) plan.drop.push(block);
    else if (block.offset + block.size > newSize) {
      // Blocks are aligned and at most blockSize long, so at most one can straddle newSize.
      if (plan.trim !== null) throw new BadInputError('overlapping blocks: more than one block straddles the new size');
      plan.trim = { block, newSize: newSize - block.offset };
    } else plan.keep.push(block);
  }
  return plan;
}

/** Groups writes by block, splitting chunks at block boundaries (views, no copies); sorted by index. */
export function reshapeChunks(chunks: readonly DirtyChunk[], blockSize: number): BlockWrite[] {
  checkBlockSize(blockSize);
  const byIndex = new Map<number, BlockWrite>();
  for (const chunk of chunks) {
    for (const s of touchedBlocks(chunk.offset, chunk.data.byteLength, blockSize)) {
      let write = byIndex.get(s.index);
      if (write === undefined) {
        write = { index: s.index, pieces: [] };
        byIndex.set(s.index, write);
      }
      write.pieces.push({ start: s.start, data: chunk.data.subarray(s.bufferOffset, s.bufferOffset + (s.end - s.start)) });
    }
  }
  return [...byIndex.values()].sort((a, b) => a.index - b.index);
}

/**
 * New content of one block: the first baseSize bytes of base (zeros where base is null or
 * shorter, i.e. a hole), then each piece in order so later writes win.
 */
export function applyPieces(
  base: Uint8Array | null,
  baseSize: number,
  pieces: BlockWrite['pieces'],
  blockSize: number,
): Uint8Array {
  checkUint('baseSize', baseSize);
  checkBlockSize(blockSize);
  if (baseSize > blockSize) throw new BadInputError(`baseSize ${baseSize} exceeds blockSize ${blockSize}`);
  let size = baseSize;
  for (const p of pieces) {
    checkUint('piece start', p.start);
    const end = p.start + p.data.byteLength;
    if (end > blockSize) throw new BadInputError(`piece [${p.start}, ${end}) extends past blockSize ${blockSize}`);
    size = Math.max(size, end);
  }
  const out = new Uint8Array(size);
  if (base !== null) out.set(base.subarray(0, Math.min(base.byteLength, baseSize)));
  for (const p of pieces) out.set(p.data, p.start);
  return out;
}
