import { randomBytes } from 'node:crypto';
import { mkdtempSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import t from 'tap';
import { LocalStore } from '../../src/client/local-store.js';
import { WalCheckpointer } from '../../src/client/wal-checkpointer.js';

const KEY = Buffer.alloc(32, 5);
const silent = pino({ level: 'silent' });
const id = (n: number) => n.toString(16).padStart(32, '0');
// 48 x 32 KiB: ≈400 WAL pages, under SQLite's automatic checkpoint (1,000 pages), so without a
// checkpoint of its own the database file stays at its empty size.
const BLOCKS = 48;
const BLOCK_BYTES = 32 * 1024;

async function fill(store: LocalStore, blocks: Buffer[]): Promise<void> {
  for (let i = 0; i < blocks.length; i++) await store.putCleanBlock(id(i), blocks[i]!);
}

async function until(what: string, check: () => boolean, timeoutMs = 20_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

t.test('background checkpoints copy committed pages into the database file, off the committing thread', async (t) => {
  const file = join(mkdtempSync(join(tmpdir(), 'coffer-wal-')), 'ws.sqlite');
  const store = new LocalStore(file, KEY, 1 << 30, { backgroundCheckpoints: { logger: silent, minDelayMs: 10, maxDelayMs: 50 } });
  const blocks = Array.from({ length: BLOCKS }, () => randomBytes(BLOCK_BYTES));
  await fill(store, blocks);
  await until('the worker to report a checkpoint', () => store.checkpointer!.checkpoints > 0);
  t.ok(statSync(file).size > (BLOCKS * BLOCK_BYTES) / 2, 'the database file holds the blocks');
  // Idle: a WAL fully copied answers the same until the next write; that is not a new checkpoint.
  const before = store.checkpointer!.checkpoints;
  await new Promise((r) => setTimeout(r, 300));
  t.equal(store.checkpointer!.checkpoints, before, 'an idle store is not reported again (the worker backs off)');
  store.close();
  const again = new LocalStore(file, KEY, 1 << 30);
  for (let i = 0; i < BLOCKS; i++) t.same(await again.getBlock(id(i)), blocks[i], `block ${i} reads back after a reopen`);
  again.close();
});

t.test('without them the same writes stay in the WAL (the observation above means something)', async (t) => {
  const file = join(mkdtempSync(join(tmpdir(), 'coffer-wal-')), 'ws.sqlite');
  const store = new LocalStore(file, KEY, 1 << 30);
  const empty = statSync(file).size;
  await fill(store, Array.from({ length: BLOCKS }, () => randomBytes(BLOCK_BYTES)));
  await new Promise((r) => setTimeout(r, 300));
  t.equal(statSync(file).size, empty, 'nothing was checkpointed');
  store.close();
});

t.test('a worker that cannot open the database reports it (the store then checkpoints inline)', async (t) => {
  const failed = await new Promise<Error>((resolve) => {
    const c = new WalCheckpointer(join(mkdtempSync(join(tmpdir(), 'coffer-wal-')), 'missing.sqlite'), silent, resolve);
    t.teardown(() => c.close());
  });
  t.match(failed.message, /SQLITE_CANTOPEN|unable to open/);
});
