import t from 'tap';
import { conflictCopyName, freeConflictName, mergeChildren } from '../../src/client/sync/merge.js';
import { MAX_NAME_BYTES } from '../../src/model/names.js';

const when = new Date('2026-11-30T21:05:59Z');
const dev = 'ab12cd34ef56';
const name = (n: string, seq: number): string => conflictCopyName(n, dev, when, seq);

t.test('conflictCopyName', async (t) => {
  t.equal(conflictCopyName('report.txt', dev, when), 'report (conflict ab12cd34 2026-11-30 21-05).txt');
  t.equal(conflictCopyName('report.txt', dev, when, 2), 'report (conflict ab12cd34 2026-11-30 21-05 2).txt', 'a second copy in the same minute');
  t.equal(conflictCopyName('Makefile', dev, when), 'Makefile (conflict ab12cd34 2026-11-30 21-05)');
  t.equal(conflictCopyName('.bashrc', dev, when), '.bashrc (conflict ab12cd34 2026-11-30 21-05)', 'a dot file has no extension');
  t.equal(conflictCopyName('notes.this-is-not-an-extension', dev, when), 'notes.this-is-not-an-extension (conflict ab12cd34 2026-11-30 21-05)');
  const long = conflictCopyName(`${'é'.repeat(126)}.txt`, dev, when, 3);
  t.ok(Buffer.byteLength(long) <= MAX_NAME_BYTES, `a long name is shortened to a valid one (${Buffer.byteLength(long)} bytes)`);
  t.ok(long.endsWith(' (conflict ab12cd34 2026-11-30 21-05 3).txt'));
  t.notOk(long.includes('\uFFFD'), 'cut at a character boundary');
});

t.test('freeConflictName skips names already taken', async (t) => {
  const taken = { [name('a.txt', 1)]: 'x', [name('a.txt', 2)]: 'y' };
  t.equal(freeConflictName(taken, 'a.txt', name), 'a (conflict ab12cd34 2026-11-30 21-05 3).txt');
  t.equal(freeConflictName({}, 'a.txt', name), 'a (conflict ab12cd34 2026-11-30 21-05).txt');
});

t.test('mergeChildren', async (t) => {
  t.same(mergeChildren({ a: '1' }, { a: '1', b: '2' }, { a: '1', c: '3' }, name), { a: '1', b: '2', c: '3' }, 'both sides add: both kept');
  t.same(
    mergeChildren({}, { n: 'mine' }, { n: 'theirs' }, name),
    { n: 'theirs', [name('n', 1)]: 'mine' },
    'one name bound to two entries: remote keeps the name, local gets a conflict name',
  );
  t.same(
    mergeChildren({}, { n: 'mine' }, { n: 'theirs', [name('n', 1)]: 'older' }, name),
    { n: 'theirs', [name('n', 1)]: 'older', [name('n', 2)]: 'mine' },
    'an existing conflict copy is not overwritten',
  );
  t.same(mergeChildren({ a: '1', b: '2' }, { b: '2' }, { a: '1', b: '2' }, name), { b: '2' }, 'a local delete applies');
  t.same(mergeChildren({ a: '1' }, {}, { a: '1' }, name, new Set(['1'])), { a: '1' }, 'a local delete loses against a remote edit');
  t.same(mergeChildren({ a: '1' }, { a: '1' }, {}, name, new Set(['1'])), { a: '1' }, 'a remote delete loses against a local edit');
  t.same(
    mergeChildren({ a: '1' }, { a: '1' }, { a: '9' }, name, new Set(['1'])),
    { a: '9', [name('a', 1)]: '1' },
    'remote replaced the name while we edited: ours is kept under a conflict name',
  );
  t.same(mergeChildren({ a: '1' }, { b: '1' }, { a: '1' }, name), { b: '1' }, 'a local rename does not leave the old name behind');
  t.same(mergeChildren({ a: '1' }, { a: '1' }, { z: '1' }, name), { z: '1' }, 'a remote rename applies');
});
