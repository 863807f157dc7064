/** BlockReader's guarantees to pinning: warm() leaves the block in the local store, memory cache or not. */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import t from 'tap';
import { BlockReader } from '../../src/client/block-reader.js';
import { LocalStore } from '../../src/client/local-store.js';
import type { RemoteWorkspace } from '../../src/client/remote.js';
import { openBlock, sealBlock } from '../../src/crypto/index.js';
import { fillRandom } from '../../src/crypto/random.js';
import type { BlockRef } from '../../src/model/manifests.js';

t.test('warm() stores a block again after the store evicted it, though its plaintext is cached', async (t) => {
  const store = new LocalStore(join(mkdtempSync(join(tmpdir(), 'coffer-reader-')), 'ws.sqlite'), Buffer.alloc(32, 7), 1 << 30);
  t.teardown(() => store.close());
  const plain = Buffer.alloc(200_000);
  fillRandom(plain);
  const sealed = sealBlock(plain);
  const ref: BlockRef = { id: 'ab'.repeat(16), offset: 0, size: plain.length, key: sealed.key, digest: sealed.digest };
  let downloads = 0;
  // The server's side of a block download: the sealed bytes, as RemoteWorkspace.fetchBlockCiphertext returns them.
  const server = { fetchBlockCiphertext: async () => (downloads++, Buffer.from(sealed.ciphertext)) } as Pick<RemoteWorkspace, 'fetchBlockCiphertext'>;
  const reader = new BlockReader(store, server as RemoteWorkspace, async (r, ct) => openBlock(r.key, ct, r.digest), pino({ level: 'silent' }));

  await reader.warm(ref);
  t.ok(store.hasBlock(ref.id), 'downloaded into the store');
  const out = Buffer.alloc(plain.length);
  t.equal(await reader.copy(ref, out, 0, 0, plain.length), plain.length);
  t.ok(out.equals(plain), 'reads back (now from memory)');
  await reader.warm(ref);
  t.equal(downloads, 1, 'a stored block is not fetched again');

  store.dropCleanBlock(ref.id); // what the cache's eviction does
  t.notOk(store.hasBlock(ref.id));
  await reader.warm(ref);
  t.ok(store.hasBlock(ref.id), 'stored again, although its plaintext was in memory');
  t.equal(downloads, 2);
  out.fill(0);
  await reader.copy(ref, out, 0, 0, plain.length);
  t.ok(out.equals(plain), 'and still reads back');
});

t.test('prefetch: blocks from the server are asked for in groups (one batched request), blocks in the local store at once', async (t) => {
  const store = new LocalStore(join(mkdtempSync(join(tmpdir(), 'coffer-reader-')), 'ws.sqlite'), Buffer.alloc(32, 7), 1 << 30);
  t.teardown(() => store.close());
  const sealed = Array.from({ length: 24 }, (_, i) => sealBlock(Buffer.alloc(1000, i)));
  const refs: BlockRef[] = sealed.map((s, i) => ({ id: i.toString(16).padStart(32, '0'), offset: i * 1000, size: 1000, key: s.key, digest: s.digest }));
  const fetched: number[] = [];
  const server = {
    fetchBlockCiphertext: async (ref: BlockRef) => {
      const i = refs.indexOf(ref);
      fetched.push(i);
      return Buffer.from(sealed[i]!.ciphertext);
    },
  } as Pick<RemoteWorkspace, 'fetchBlockCiphertext'>;
  const reader = new BlockReader(store, server as RemoteWorkspace, async (r, ct) => openBlock(r.key, ct, r.digest), pino({ level: 'silent' }));
  const window = (from: number) => refs.slice(from, from + 8);
  const fetchedAfter = async (fn: () => void) => {
    fn();
    await new Promise((r) => setImmediate(r)); // the loads have asked the server by now
    return [...fetched].sort((a, b) => a - b);
  };

  t.same(await fetchedAfter(() => reader.prefetch(window(1))), [1, 2, 3, 4, 5, 6, 7, 8], 'the first window at once');
  // A sequential reader slides the window one block per block read: 1, 2, 3 new blocks wait ...
  t.same(await fetchedAfter(() => [2, 3, 4].forEach((i) => reader.prefetch(window(i)))), [1, 2, 3, 4, 5, 6, 7, 8], 'fewer than half the window missing: nothing asked yet');
  // ... until half the window is missing: then together.
  t.same((await fetchedAfter(() => reader.prefetch(window(5)))).slice(8), [9, 10, 11, 12], 'half the window missing: asked for together');
  // The very next block missing (the reader jumped, or a block was dropped): asked for at once.
  t.same((await fetchedAfter(() => reader.prefetch([refs[13]!, ...refs.slice(6, 13)]))).slice(12), [13], 'the next block is asked for at once');
  // A block the local store holds costs no request: read at once, without waiting for the others.
  await store.putCleanBlock(refs[20]!.id, Buffer.from(sealed[20]!.ciphertext));
  t.same((await fetchedAfter(() => reader.prefetch([...refs.slice(7, 13), refs[20]!]))).slice(13), [], 'a stored block: no request');
  const out = Buffer.alloc(1000);
  t.equal(await reader.copy(refs[20]!, out, 0, 0, 1000), 1000);
  t.ok(out.equals(Buffer.alloc(1000, 20)), 'and it reads back');
  t.equal(fetched.length, 13, 'still nothing fetched from the server for it');
  for (const i of [1, 9, 12, 13]) {
    await reader.copy(refs[i]!, out, 0, 0, 1000);
    t.ok(out.equals(Buffer.alloc(1000, i)), `prefetched block ${i} reads back`);
  }
  t.equal(fetched.length, 13, 'every block fetched once');
});
