import { mkdtemp, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import t from 'tap';
import { BlockBufferPool } from '../../src/server/blocks/buffer-pool.js';
import { FolderBlockStore } from '../../src/server/blocks/folder.js';

t.test('a buffer given back is lent again for the same size, once', async (t) => {
  const pool = new BlockBufferPool(2, 2);
  const a = pool.take(100);
  t.equal(a.length, 100);
  pool.giveBack(a);
  pool.giveBack(a); // twice: ignored, never listed twice
  t.equal(pool.spareCount, 1);
  t.equal(pool.take(100), a, 'reused');
  t.not(pool.take(100), a, 'not lent to two owners');
  t.not(pool.take(50), a, 'another size gets another buffer');
});

t.test('only what the pool lent comes back; spares are bounded per size and in sizes', async (t) => {
  const pool = new BlockBufferPool(2, 2);
  pool.giveBack(Buffer.alloc(100));
  t.equal(pool.spareCount, 0, 'a stranger is ignored');
  const taken = [pool.take(100), pool.take(100), pool.take(100), pool.take(200), pool.take(300)];
  for (const b of taken) pool.giveBack(b);
  t.equal(pool.spareCount, 3, 'two of size 100, one of size 200; a third size is not kept');
});

t.test('the folder store reads a block into the memory it is given, as it is on disk', async (t) => {
  const root = await mkdtemp(join(tmpdir(), 'coffer-blocks-'));
  const store = new FolderBlockStore(root);
  const id = 'ab'.padEnd(32, '0');
  const data = randomBytes(300_000);
  await store.put('acme', id, data);
  const sizes: number[] = [];
  const into = Buffer.alloc(data.length);
  const got = await store.getInto('acme', id, (size) => {
    sizes.push(size);
    return into;
  });
  t.equal(got, into, 'the buffer given');
  t.ok(got!.equals(data));
  t.same(sizes, [data.length]);
  t.equal(await store.getInto('acme', 'cd'.padEnd(32, '0'), () => Buffer.alloc(0)), null, 'absent: null');
  await truncate(join(root, 'acme', 'ab', id), 1000); // damaged on disk: served as it is
  t.ok((await store.getInto('acme', id, (size) => Buffer.alloc(size)))!.equals(data.subarray(0, 1000)));
});
