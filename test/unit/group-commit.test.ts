import Database from 'better-sqlite3';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { WalGroupCommit } from '../../src/server/metadata/group-commit.js';
import { SqliteMetadataStore } from '../../src/server/metadata/sqlite.js';
import type { VlobWrite } from '../../src/server/metadata/types.js';

/** Counts the flushes a WalGroupCommit makes (its private flush, wrapped). */
function counted(group: WalGroupCommit): { flushes: () => number } {
  const target = group as unknown as { flush: () => Promise<void> };
  const real = target.flush.bind(group);
  let n = 0;
  target.flush = () => {
    n++;
    return real();
  };
  return { flushes: () => n };
}

t.test('concurrent commits share WAL flushes; a commit made during a flush waits for the next one', async (t) => {
  const file = join(mkdtempSync(join(tmpdir(), 'coffer-gc-')), 'm.sqlite');
  const db = new Database(file);
  t.teardown(() => db.close());
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  db.exec('CREATE TABLE t (n INTEGER)');
  const group = new WalGroupCommit(`${file}-wal`);
  const count = counted(group);
  const insert = db.prepare('INSERT INTO t (n) VALUES (?)');

  const acknowledged: number[] = [];
  await Promise.all(
    Array.from({ length: 50 }, (_, i) => {
      insert.run(i);
      return group.committedDurably().then(() => acknowledged.push(i));
    }),
  );
  t.equal(acknowledged.length, 50, 'every writer was acknowledged');
  t.equal(count.flushes(), 2, '50 commits made while the first flush ran shared one more flush (2 in all, not 50)');

  insert.run(100);
  const first = group.committedDurably(); // starts a flush covering commit 51
  insert.run(101); // committed while that flush runs: not covered by it
  let secondDone = false;
  const second = group.committedDurably().then(() => (secondDone = true));
  await first;
  t.notOk(secondDone, 'the later commit is not acknowledged by the flush that began before it');
  await second;
  t.equal(count.flushes(), 4, 'it got a flush of its own');
  t.equal((db.prepare('SELECT COUNT(*) AS n FROM t').get() as { n: number }).n, 52);
});

t.test('a flush failure reaches the writer (its write is not acknowledged)', async (t) => {
  const group = new WalGroupCommit(join(mkdtempSync(join(tmpdir(), 'coffer-gc-')), 'absent.sqlite-wal'));
  await t.rejects(group.committedDurably(), { code: 'ENOENT' });
});

t.test('the SQLite metadata store commits the writes of one turn together, each answered on its own', async (t) => {
  const store = new SqliteMetadataStore(join(mkdtempSync(join(tmpdir(), 'coffer-gc-')), 'metadata.sqlite'));
  t.teardown(() => store.close());
  const id = (n: number) => n.toString(16).padStart(32, '0');
  const buf = (s: string) => Buffer.from(s, 'utf8');
  const [ADMIN, DEVICE, REALM] = [id(1), id(2), id(3)];
  const at = (n: number) => 1_800_000_000_000 + n;
  await store.createOrganization('acme', buf('token'), 1);
  await store.bootstrapOrganization(
    'acme',
    buf('root'),
    { userId: ADMIN, publicKey: buf('pk'), profile: 'admin', certificate: buf('cu'), timestamp: at(1) },
    { deviceId: DEVICE, userId: ADMIN, verifyKey: buf('vk'), certificate: buf('cd'), timestamp: at(2) },
    2,
  );
  await store.createRealm('acme', REALM, ADMIN, 1, buf('sealed'), 3, [{ blob: buf('cr'), timestamp: at(3) }]);
  const vlob = (realmId: string, vlobId: string, version: number): VlobWrite => ({
    orgId: 'acme', realmId, vlobId, version, keyIndex: 1, author: DEVICE, timestamp: 10, createdAt: 10, blob: buf(`${vlobId}-${version}`),
  });
  await store.createVlob(vlob(REALM, id(100), 1));

  // Count the durable flushes asked for (one per transaction committed).
  const group = (store as unknown as { groupCommit: { committedDurably: () => Promise<void> } }).groupCommit;
  const real = group.committedDurably.bind(group);
  let commits = 0;
  group.committedDurably = () => {
    commits++;
    return real();
  };
  const answers = await Promise.allSettled([
    ...Array.from({ length: 20 }, (_, i) => store.createVlob(vlob(REALM, id(200 + i), 1))),
    store.createVlob(vlob(REALM, id(100), 1)), // exists: a conflict
    store.createVlob(vlob(id(9), id(300), 1)), // no such realm: this write fails
    store.updateVlob(vlob(REALM, id(100), 2)),
  ]);
  t.equal(commits, 1, '23 writes of one turn: one transaction, one durable flush');
  const values = answers.map((a) => (a.status === 'fulfilled' ? a.value : 'rejected'));
  t.same(values.slice(0, 20), Array.from({ length: 20 }, (_, i) => ({ ok: true, checkpoint: 2 + i })), 'each write got its own checkpoint, in order');
  t.same(values[20], { ok: false, currentVersion: 1 }, 'the conflict is answered as one');
  t.equal(values[21], 'rejected', 'the failing write is refused');
  t.same(values[22], { ok: true, checkpoint: 22 }, 'and the writes after it in the batch stand');
  t.equal((await store.readVlob('acme', REALM, id(219), {}))?.version, 1, 'stored');
  t.equal(await store.readVlob('acme', id(9), id(300), {}), null, 'the failed write left nothing');
});
