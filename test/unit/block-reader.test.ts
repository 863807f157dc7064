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
