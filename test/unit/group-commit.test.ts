import Database from 'better-sqlite3';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { WalGroupCommit } from '../../src/server/metadata/group-commit.js';

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
