import { randomBytes } from 'node:crypto';
import { constants as fsc } from 'node:fs';
import t from 'tap';
import { sessionOnFreshServer } from '../helpers/client.js';
import { readEngineFile, writeEngineFile } from '../helpers/engine-io.js';

/**
 * Engine operations on one file that interleave at their awaits, made deterministic. Both failed
 * before the fixes (data lost; with the shared-memory pool, bytes written into recycled memory).
 */

const BS = 512 * 1024;
const RW = fsc.O_RDWR;


// FUSE RELEASE comes after close(2) returned: it can seal another descriptor's buffers while an
// ftruncate waits for the block it trims.
t.test('truncate loading the straddling block while a release seals another block of the file', async (t) => {
  const s = await sessionOnFreshServer(t);
  const e = s.engine;
  const base = randomBytes(3 * BS);
  await writeEngineFile(e, '/f', base);
  const fh1 = await e.open('/f', { flags: RW });
  const fh2 = await e.open('/f', { flags: RW });
  // Block 1 gets new bytes, kept in memory (not a full block: not sealed yet).
  const x = randomBytes(1000);
  await e.write(fh2, x, x.length, BS);
  // The straddling block (2) is still loading when a release of the other handle seals block 1.
  const getBlock = s.store.getBlock.bind(s.store);
  let loads = 0;
  let released!: () => void;
  const gate = new Promise<void>((resolve) => (released = resolve));
  s.store.getBlock = async (id) => {
    loads++;
    const r = await getBlock(id);
    await gate;
    return r;
  };
  const trunc = e.ftruncate(fh2, 2 * BS + 100);
  t.equal(loads, 1, 'the truncate is loading the straddling block');
  await e.release(fh1);
  released();
  await trunc;
  s.store.getBlock = getBlock;
  await e.release(fh2);
  const expected = Buffer.from(base.subarray(0, 2 * BS + 100));
  x.copy(expected, BS);
  const got = await readEngineFile(e, '/f');
  t.equal(got.length, expected.length);
  t.ok(got.equals(expected), 'the bytes sealed during the truncate are kept');
});

// With the writeback cache the kernel sends several writes to one file at once: the one that completes
// the block seals it while the other has its buffer in hand.
t.test('two writes into one block at once, one of them completing it', async (t) => {
  const s = await sessionOnFreshServer(t);
  const e = s.engine;
  const fh = await e.create('/g', 0o644, { flags: RW });
  const head = randomBytes(1000);
  await e.write(fh, head, head.length, 0);
  const mid = randomBytes(1000);
  const tail = randomBytes(BS - 4000);
  await Promise.all([e.write(fh, tail, tail.length, 4000), e.write(fh, mid, mid.length, 2000)]);
  await e.release(fh);
  const expected = Buffer.alloc(BS);
  head.copy(expected, 0);
  mid.copy(expected, 2000);
  tail.copy(expected, 4000);
  const got = await readEngineFile(e, '/g');
  t.ok(got.equals(expected), 'both writes are in the block');
});

// Block buffers are recycled memory, not zeroed as a whole (a small file's close zeroed 512 KiB):
// no byte of another block (poison, with the pool's checks on in tests) may show through a hole.
t.test('holes inside a block being written read as zeros, in memory and once sealed', async (t) => {
  const s = await sessionOnFreshServer(t);
  const e = s.engine;
  for (let i = 0; i < 3; i++) await writeEngineFile(e, `/full${i}`, randomBytes(BS)); // buffers back to the pool
  const fh = await e.create('/holes', 0o644, { flags: RW });
  await e.write(fh, Buffer.from('a'), 1, 0);
  await e.ftruncate(fh, 100); // grows inside the buffered block
  await e.write(fh, Buffer.from('b'), 1, 200); // a hole before it, inside the block
  await e.write(fh, Buffer.from('c'), 1, BS + 5); // and the rest of block 0 becomes a hole too
  const expected = Buffer.alloc(BS + 6);
  expected[0] = 0x61;
  expected[200] = 0x62;
  expected[BS + 5] = 0x63;
  const inMemory = Buffer.alloc(BS + 6, 0xee);
  t.equal(await e.read(fh, inMemory, inMemory.length, 0), BS + 6);
  t.ok(inMemory.equals(expected), 'read while buffered: zeros in every hole');
  await e.release(fh);
  t.ok((await readEngineFile(e, '/holes')).equals(expected), 'read once sealed: the same');
});

// An append reads its position from the size before it awaits the block it extends: two at once
// (two appenders, or the pieces of one big O_DIRECT append) both wrote at the old end.
t.test('two O_APPEND writes at once land one after the other', async (t) => {
  const s = await sessionOnFreshServer(t);
  const e = s.engine;
  const base = randomBytes(1000);
  await writeEngineFile(e, '/log', base); // stored: the next append must load its block first
  const fh1 = await e.open('/log', { flags: fsc.O_WRONLY | fsc.O_APPEND });
  const fh2 = await e.open('/log', { flags: fsc.O_WRONLY | fsc.O_APPEND });
  const a = randomBytes(BS + 300);
  const b = randomBytes(700);
  t.same(await Promise.all([e.write(fh1, a, a.length, 0), e.write(fh2, b, b.length, 5)]), [a.length, b.length]);
  await e.release(fh1);
  await e.release(fh2);
  const got = await readEngineFile(e, '/log');
  t.equal(got.length, base.length + a.length + b.length, 'the file grew by both');
  t.ok(got.equals(Buffer.concat([base, a, b])), 'each append after the other, in call order');
});
