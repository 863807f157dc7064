import Database from 'better-sqlite3';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { LocalStore } from '../../src/client/local-store.js';
import type { FileManifest } from '../../src/model/manifests.js';

const KEY = Buffer.alloc(32, 3);
/** The end of the current event-loop turn (uploaded blocks turn clean then: see markBlockClean). */
const endOfTurn = () => new Promise<void>((r) => setImmediate(r));
const id = (n: number) => n.toString(16).padStart(32, '0');

function storeIn(t: Test): { file: string; open: (cacheBytes?: number) => LocalStore } {
  const file = join(mkdtempSync(join(tmpdir(), 'coffer-store-')), 'ws.sqlite');
  const opened: LocalStore[] = [];
  t.teardown(() => opened.forEach((s) => s.close()));
  return {
    file,
    open: (cacheBytes = 1 << 30) => {
      const s = new LocalStore(file, KEY, cacheBytes);
      opened.push(s);
      return s;
    },
  };
}

function rows(file: string): { blocks: Array<{ id: string; inline: number; dirty: number }>; data: string[] } {
  const db = new Database(file, { readonly: true });
  try {
    return {
      blocks: db.prepare('SELECT id, inline, dirty FROM blocks ORDER BY id').all() as Array<{ id: string; inline: number; dirty: number }>,
      data: (db.prepare('SELECT id FROM block_data ORDER BY id').all() as Array<{ id: string }>).map((r) => r.id),
    };
  } finally {
    db.close();
  }
}

t.test('small blocks live in the database, big ones in files; both read back', async (t) => {
  const { file, open } = storeIn(t);
  const s = open();
  const small = randomBytes(2_000);
  const limit = randomBytes(64 * 1024); // the largest inline block
  const big = randomBytes(64 * 1024 + 1);
  await s.putDirtyBlock(id(1), small);
  await s.putDirtyBlock(id(2), limit);
  await s.putDirtyBlock(id(3), big);
  t.same(readdirSync(`${file}.blocks`), [id(3)], 'only the big block has a file');
  t.same(rows(file).data, [id(1), id(2)], 'the small ones are stored inline');
  t.ok((await s.getBlock(id(1)))?.equals(small));
  t.ok((await s.getBlock(id(2)))?.equals(limit));
  t.ok((await s.getBlock(id(3)))?.equals(big));
  t.same(s.pendingStats(), { manifests: 0, blocks: 3, bytes: small.length + limit.length + big.length });

  // Reopened (a crash right after the insert looks the same): nothing is lost, nothing is a stray.
  s.close();
  const again = open();
  t.ok((await again.getBlock(id(1)))?.equals(small), 'inline block survives a reopen');
  t.ok((await again.getBlock(id(3)))?.equals(big), 'file block survives a reopen');
  t.same(readdirSync(`${file}.blocks`), [id(3)]);
});

t.test('inline blocks follow their row: clean marking, eviction, orphans and dropped garbage', async (t) => {
  const { file, open } = storeIn(t);
  const s = open(10_000); // a cache of clean blocks of 10 kB
  for (let i = 1; i <= 4; i++) await s.putDirtyBlock(id(i), Buffer.alloc(4_000, i));
  s.markBlockClean(id(1));
  s.markBlockClean(id(2));
  s.markBlockClean(id(3)); // 12 kB clean > 10 kB: the least recently used goes
  await endOfTurn();
  t.equal(await s.getBlock(id(1)), null, 'evicted inline block reads as not cached');
  t.equal(s.cacheStats().cleanBytes, 8_000);
  t.ok((await s.getBlock(id(3)))?.equals(Buffer.alloc(4_000, 3)), 'a clean inline block still reads');
  t.notOk(rows(file).data.includes(id(1)), "the evicted block's bytes are gone with its row");

  s.dropCleanBlock(id(2));
  t.notOk(rows(file).data.includes(id(2)), 'dropCleanBlock removes the bytes');

  s.saveManifests([], [id(4)]); // a replaced dirty block (garbage of a rewrite)
  t.notOk(rows(file).data.includes(id(4)), 'garbage inline block removed with its row');

  await s.putDirtyBlock(id(5), Buffer.alloc(100, 5));
  t.equal(s.dropOrphanDirtyBlocks(new Set()), 1, 'an unreferenced dirty block is an orphan');
  t.same(rows(file).data, [id(3)], 'only the cached clean block is left');
  t.same(readdirSync(`${file}.blocks`), [], 'and no file was ever written');
});

t.test('uploaded blocks turn clean together at the end of the turn; a crash before leaves them dirty', async (t) => {
  const { file, open } = storeIn(t);
  const s = open();
  for (let i = 1; i <= 3; i++) await s.putDirtyBlock(id(i), Buffer.alloc(1_000 * i, i));
  s.markBlockClean(id(1));
  s.markBlockClean(id(2));
  t.ok(!s.isDirtyBlock(id(1)) && !s.isDirtyBlock(id(2)) && s.isDirtyBlock(id(3)), 'clean for the uploader at once');
  t.same(rows(file).blocks.map((r) => r.dirty), [1, 1, 1], 'rows unchanged within the turn');
  t.same(s.pendingStats(), { manifests: 0, blocks: 1, bytes: 3_000 }, 'what reads rows by the flag commits them first');
  t.same(rows(file).blocks.map((r) => r.dirty), [0, 0, 1]);
  t.equal(s.cacheStats().cleanBytes, 3_000);

  s.markBlockClean(id(3));
  await endOfTurn();
  t.same(rows(file).blocks.map((r) => r.dirty), [0, 0, 0], 'committed at the end of the turn');
  t.equal(s.cacheStats().cleanBytes, 6_000);
  s.markBlockClean(id(3)); // answered twice (a retried upload): nothing more to do
  await endOfTurn();
  t.equal(s.cacheStats().cleanBytes, 6_000);

  // A crash within the turn: a store opened now sees the block dirty, so it is uploaded again.
  await s.putDirtyBlock(id(4), Buffer.alloc(500, 4));
  s.markBlockClean(id(4));
  const again = new LocalStore(file, KEY, 1 << 30);
  t.teardown(() => again.close());
  t.ok(again.isDirtyBlock(id(4)), 'still dirty after a crash');
  s.close();
  t.notOk(again.isDirtyBlock(id(4)), 'close() commits it');
});

t.test('a clean block fetched from the server is cached inline too, once', async (t) => {
  const { file, open } = storeIn(t);
  const s = open();
  const b = randomBytes(1_000);
  await s.putCleanBlock(id(7), b);
  await s.putCleanBlock(id(7), b);
  t.same(rows(file).blocks, [{ id: id(7), inline: 1, dirty: 0 }]);
  t.equal(s.cacheStats().cleanBytes, 1_000, 'counted once');
  t.ok((await s.getBlock(id(7)))?.equals(b));
});

t.test('a store written before inline blocks existed opens and keeps its file blocks', async (t) => {
  const { file, open } = storeIn(t);
  const first = open();
  const big = randomBytes(100_000);
  await first.putDirtyBlock(id(9), big);
  first.close();
  // The schema of the previous release: no inline column, no block_data table.
  const db = new Database(file);
  db.exec('DROP TRIGGER block_data_follows; DROP TABLE block_data; ALTER TABLE blocks DROP COLUMN inline');
  db.close();
  const s = open();
  t.ok((await s.getBlock(id(9)))?.equals(big), 'an old file block reads');
  await s.putDirtyBlock(id(10), Buffer.alloc(10, 1));
  t.ok((await s.getBlock(id(10)))?.equals(Buffer.alloc(10, 1)), 'new small blocks go inline after the upgrade');
  t.ok(existsSync(join(`${file}.blocks`, id(9))));
});

t.test('a staged small block is committed by the next manifest save, in its transaction', async (t) => {
  const { file, open } = storeIn(t);
  const s = open();
  const small = randomBytes(3_000);
  t.ok(s.stageDirtyBlock(id(1), small), 'a small block is staged');
  t.notOk(s.stageDirtyBlock(id(2), randomBytes(64 * 1024 + 1)), 'a block too big for the database is not');
  t.same(rows(file).blocks, [], 'nothing committed yet: a crash now keeps neither the block nor its manifest');
  t.ok((await s.getBlock(id(1)))?.equals(small), 'a staged block reads');
  t.ok(s.hasBlock(id(1)) && s.isDirtyBlock(id(1)), 'and counts as a dirty block');

  // A save that fails (its transaction rolls back) keeps the block staged for the next one.
  const manifest: FileManifest = { type: 'file', id: id(100), parent: id(101), created: 1, updated: 1, mode: 0o644, size: small.length, blockSize: 512 * 1024, blocks: [{ id: id(1), offset: 0, size: small.length, key: Buffer.alloc(32, 1), digest: Buffer.alloc(32, 2) }] };
  const broken = { ...manifest, mode: () => 0 } as unknown as FileManifest; // cannot be encoded: the transaction fails
  t.throws(() => s.saveManifests([{ id: id(100), manifest: broken, base: null, baseVersion: 0, needSync: true }], []));
  t.same(rows(file).blocks, [], 'a failed save commits no block row');
  t.ok(s.isDirtyBlock(id(1)), 'the block is still staged');

  s.saveManifests([{ id: id(100), manifest, base: null, baseVersion: 0, needSync: true }], []);
  t.same(rows(file).blocks, [{ id: id(1), inline: 1, dirty: 1 }], 'committed with the manifest that references it');
  t.same(rows(file).data, [id(1)]);
  t.ok(s.loadManifest(id(100)), 'and the manifest is there');

  // Replaced before any save: never gets a row.
  s.stageDirtyBlock(id(3), Buffer.alloc(10, 3));
  s.saveManifests([], [id(3)]);
  t.notOk(s.hasBlock(id(3)), 'a staged block dropped as garbage is gone');
  t.same(rows(file).blocks.map((r) => r.id), [id(1)]);

  // Uploaded before the save that would commit it: it gets its row, clean.
  s.stageDirtyBlock(id(4), Buffer.alloc(10, 4));
  s.markBlockClean(id(4));
  await endOfTurn();
  t.same(rows(file).blocks.find((r) => r.id === id(4)), { id: id(4), inline: 1, dirty: 0 });
  t.equal(s.cacheStats().cleanBytes, 10);

  // Closing the store commits what is staged.
  s.stageDirtyBlock(id(5), Buffer.alloc(10, 5));
  s.close();
  t.ok(rows(file).data.includes(id(5)), 'close() commits staged blocks');
});

t.test("a big dirty block's row waits for the next save, or for a timer, and a crash before it leaves a stray file only", async (t) => {
  const { file, open } = storeIn(t);
  const s = open();
  const big = randomBytes(100_000);
  await s.putDirtyBlock(id(1), big);
  t.same(rows(file).blocks, [], 'no commit of its own');
  t.ok((await s.getBlock(id(1)))?.equals(big), 'readable at once');
  t.ok(s.hasBlock(id(1)) && s.isDirtyBlock(id(1)), 'and a dirty block');
  await s.putCleanBlock(id(1), randomBytes(100_000));
  t.ok((await s.getBlock(id(1)))?.equals(big), 'a clean copy of the same id does not replace it');

  // The manifest that references it and its row: one transaction.
  const manifest: FileManifest = { type: 'file', id: id(100), parent: id(101), created: 1, updated: 1, mode: 0o644, size: big.length, blockSize: 512 * 1024, blocks: [{ id: id(1), offset: 0, size: big.length - 28, key: Buffer.alloc(32, 1), digest: Buffer.alloc(32, 2) }] };
  s.saveManifests([{ id: id(100), manifest, base: null, baseVersion: 0, needSync: true }], []);
  t.same(rows(file).blocks, [{ id: id(1), inline: 0, dirty: 1 }], 'committed with the save');

  // No save comes: the timer commits it.
  await s.putDirtyBlock(id(2), randomBytes(70_000));
  t.equal(rows(file).blocks.length, 1);
  await new Promise((r) => setTimeout(r, 300));
  t.same(rows(file).blocks.map((r) => r.id), [id(1), id(2)], 'committed by the timer');

  // Dropped as garbage before any commit: no row, no file.
  await s.putDirtyBlock(id(3), randomBytes(70_000));
  s.saveManifests([], [id(3)]);
  t.notOk(s.hasBlock(id(3)));
  t.notOk(existsSync(join(`${file}.blocks`, id(3))), 'its file is removed');

  // Uploaded before a save: it gets its row, clean.
  await s.putDirtyBlock(id(4), randomBytes(70_000));
  s.markBlockClean(id(4));
  await endOfTurn();
  t.same(rows(file).blocks.find((r) => r.id === id(4)), { id: id(4), inline: 0, dirty: 0 });

  // A crash with a row still staged: the file is a stray, removed when the store opens again.
  await s.putDirtyBlock(id(5), randomBytes(70_000));
  // `s` is not closed: a second store opened now sees what a restart after a crash would.
  const again = new LocalStore(file, KEY, 1 << 30);
  t.teardown(() => again.close());
  t.notOk(again.hasBlock(id(5)), 'no row after the crash');
  t.notOk(existsSync(join(`${file}.blocks`, id(5))), 'and no stray file');
  t.ok((await again.getBlock(id(1)))?.length === big.length, 'committed blocks are all there');
});

t.test("fsync(2)'s flush of block files runs off the event loop; a block removed meanwhile needs none", async (t) => {
  const { file, open } = storeIn(t);
  const s = open();
  for (let n = 1; n <= 40; n++) await s.putDirtyBlock(id(n), randomBytes(100_000));
  rmSync(join(`${file}.blocks`, id(7))); // gone behind the store's back: nothing to flush
  // Turns of the event loop while the files are flushed (each file takes several thread-pool round trips).
  let turns = 0;
  let flushing = true;
  const count = () => {
    turns++;
    if (flushing) setImmediate(count);
  };
  setImmediate(count);
  await s.syncBlockFiles();
  flushing = false;
  t.ok(turns > 1, `the event loop turned while the files were flushed (${turns} turns)`);
  let ticked = false;
  setImmediate(() => (ticked = true));
  await s.syncBlockFiles();
  t.notOk(ticked, 'a second flush has nothing left to do');
  s.saveManifests([], [], true); // the durable save after it
  t.equal((await s.getBlock(id(8)))?.length, 100_000);
});
