/**
 * POSIX semantics of the mount, as docs/design.md ("POSIX semantics") documents them, through
 * ordinary system calls from this process (the mount runs in its own `coffer mount` process).
 * Everything is checked again on a second mount with a fresh local store after a sync, so the
 * rules hold for what the server keeps, not only for what the first client remembers.
 */
import { closeSync, constants as C, openSync, readSync, writeSync } from 'node:fs';
import { mkdir, open, opendir, readdir, readFile, rename, rmdir, stat, truncate, unlink, utimes, writeFile, chmod } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { mountWorkspace, setupEnvironment } from '../helpers/mount.js';

async function errorCode(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'no error';
  } catch (err) {
    return (err as NodeJS.ErrnoException).code ?? String(err);
  }
}

t.test('POSIX semantics on a mounted workspace', { timeout: 300_000 }, async (t) => {
  const big = Buffer.alloc(2_400_000); // appended below, checked again on the fresh store
  for (let i = 0; i < big.length; i += 4) big.writeUInt32LE(i, i);
  const envx = await setupEnvironment(t);
  const m = await mountWorkspace(t, envx, { dataDir: join(envx.root, 'data-a') });
  const at = (...p: string[]): string => join(m.mnt, ...p);
  const oldUmask = process.umask(0);
  t.teardown(() => void process.umask(oldUmask));

  await t.test('modes: create, mkdir and chmod keep the permission bits', async (t) => {
    await writeFile(at('mode640'), 'x', { mode: 0o640 });
    t.equal((await stat(at('mode640'))).mode & 0o7777, 0o640, 'open(O_CREAT, 0640)');
    await mkdir(at('dir750'), { mode: 0o750 });
    t.equal((await stat(at('dir750'))).mode & 0o7777, 0o750, 'mkdir(0750)');
    await chmod(at('mode640'), 0o604);
    t.equal((await stat(at('mode640'))).mode & 0o7777, 0o604, 'chmod(0604)');
    t.ok((await stat(at('dir750'))).isDirectory());
  });

  await t.test('sizes: writes, truncate up (zeros) and down', async (t) => {
    await writeFile(at('sized'), Buffer.alloc(1000, 7));
    t.equal((await stat(at('sized'))).size, 1000);
    await truncate(at('sized'), 5000);
    const up = await readFile(at('sized'));
    t.equal(up.length, 5000);
    t.ok(up.subarray(0, 1000).every((b) => b === 7) && up.subarray(1000).every((b) => b === 0), 'grown part reads as zeros');
    await truncate(at('sized'), 10);
    t.same(await readFile(at('sized')), Buffer.alloc(10, 7));
  });

  await t.test('timestamps: mtime follows writes and utimes; atime and ctime equal mtime; reads change nothing', async (t) => {
    await writeFile(at('times'), 'one');
    const set = new Date('2021-06-01T10:20:30.000Z');
    await utimes(at('times'), set, set);
    let st = await stat(at('times'));
    t.equal(st.mtimeMs, set.getTime(), 'utimes sets mtime to the millisecond');
    t.equal(st.atimeMs, st.mtimeMs, 'atime = mtime (reads are never recorded)');
    t.equal(st.ctimeMs, st.mtimeMs, 'ctime = mtime');
    await readFile(at('times'));
    t.equal((await stat(at('times'))).mtimeMs, set.getTime(), 'a read leaves mtime alone');
    await rename(at('times'), at('times-renamed'));
    t.equal((await stat(at('times-renamed'))).mtimeMs, set.getTime(), 'a rename keeps the file mtime');
    const before = Date.now();
    await writeFile(at('times-renamed'), 'two');
    st = await stat(at('times-renamed'));
    t.ok(st.mtimeMs >= before - 1000 && st.mtimeMs <= Date.now() + 1000, `a write sets mtime to now (${st.mtime.toISOString()})`);
  });

  await t.test('rename over existing files and directories', async (t) => {
    await writeFile(at('r-src'), 'new');
    await writeFile(at('r-dst'), 'old content');
    await rename(at('r-src'), at('r-dst'));
    t.equal(await readFile(at('r-dst'), 'utf8'), 'new', 'file over file replaces it');
    t.equal(await errorCode(stat(at('r-src'))), 'ENOENT');
    await mkdir(at('d-src'));
    await writeFile(at('d-src', 'inside'), 'i');
    await mkdir(at('d-empty'));
    await rename(at('d-src'), at('d-empty'));
    t.same(await readdir(at('d-empty')), ['inside'], 'directory over an empty directory replaces it');
    await mkdir(at('d-full'));
    await writeFile(at('d-full', 'keep'), 'k');
    await mkdir(at('d-other'));
    t.equal(await errorCode(rename(at('d-other'), at('d-full'))), 'ENOTEMPTY', 'directory over a non-empty directory');
    t.equal(await errorCode(rename(at('r-dst'), at('d-full'))), 'EISDIR', 'file over a directory');
    t.equal(await errorCode(rename(at('d-other'), at('r-dst'))), 'ENOTDIR', 'directory over a file');
    t.equal(await errorCode(rename(at('d-full'), at('d-full', 'sub'))), 'EINVAL', 'directory into itself');
    t.equal(await readFile(at('d-full', 'keep'), 'utf8'), 'k', 'nothing lost by the refused renames');
  });

  await t.test('rmdir and unlink refuse what they must', async (t) => {
    t.equal(await errorCode(rmdir(at('d-full'))), 'ENOTEMPTY');
    t.equal(await errorCode(rmdir(at('r-dst'))), 'ENOTDIR');
    t.equal(await errorCode(unlink(at('d-full'))), 'EISDIR');
    t.equal(await errorCode(unlink(at('missing'))), 'ENOENT');
    await rmdir(at('d-other'));
    t.equal(await errorCode(stat(at('d-other'))), 'ENOENT');
  });

  await t.test('O_EXCL, O_APPEND, O_TRUNC', async (t) => {
    await writeFile(at('excl'), 'first');
    t.equal(await errorCode(open(at('excl'), C.O_CREAT | C.O_EXCL | C.O_WRONLY)), 'EEXIST', 'O_CREAT|O_EXCL on an existing file');
    t.equal(await readFile(at('excl'), 'utf8'), 'first', 'and the file is untouched');
    const fresh = await open(at('excl-new'), C.O_CREAT | C.O_EXCL | C.O_WRONLY, 0o600);
    await fresh.close();
    t.equal((await stat(at('excl-new'))).size, 0, 'O_EXCL creates a new file');

    await writeFile(at('append'), 'A');
    const a1 = openSync(at('append'), C.O_WRONLY | C.O_APPEND);
    const a2 = openSync(at('append'), C.O_WRONLY | C.O_APPEND);
    writeSync(a1, 'B', 0); // the position is ignored with O_APPEND
    writeSync(a2, 'C');
    writeSync(a1, 'D');
    closeSync(a1);
    closeSync(a2);
    t.equal(await readFile(at('append'), 'utf8'), 'ABCD', 'two O_APPEND descriptors interleave at the end');

    // One write bigger than a FUSE request, through O_DIRECT|O_APPEND: the kernel splits it into
    // 1 MiB pieces, which must land one after the other (with async direct I/O they overlapped).
    const direct = openSync(at('append'), C.O_WRONLY | C.O_APPEND | C.O_DIRECT);
    t.equal(writeSync(direct, big), big.length, 'one 2.4 MB O_DIRECT|O_APPEND write is taken whole');
    closeSync(direct);
    t.same(await readFile(at('append')), Buffer.concat([Buffer.from('ABCD'), big]), 'and lands after the old end, in order');

    await writeFile(at('trunc'), 'a long first version');
    const tr = openSync(at('trunc'), C.O_WRONLY | C.O_TRUNC);
    t.equal((await stat(at('trunc'))).size, 0, 'O_TRUNC empties at open');
    writeSync(tr, 'short');
    closeSync(tr);
    t.equal(await readFile(at('trunc'), 'utf8'), 'short');
  });

  await t.test('names: 255 bytes, ENAMETOOLONG, unicode kept byte for byte', async (t) => {
    const ascii255 = 'a'.repeat(255);
    const utf8255 = 'é'.repeat(127) + 'z'; // 254 + 1 bytes
    await writeFile(at(ascii255), '255');
    await writeFile(at(utf8255), 'utf8');
    t.equal(await errorCode(writeFile(at('b'.repeat(256)), 'x')), 'ENAMETOOLONG', '256 ASCII bytes');
    t.equal(await errorCode(writeFile(at('é'.repeat(128)), 'x')), 'ENAMETOOLONG', '128 two-byte characters');
    const nfc = 'caf\u00e9.txt';
    const nfd = 'cafe\u0301.txt';
    await writeFile(at(nfc), 'nfc');
    await writeFile(at(nfd), 'nfd');
    await writeFile(at('日本語 📁 ß.txt'), 'cjk');
    const names = await readdir(m.mnt);
    for (const n of [ascii255, utf8255, nfc, nfd, '日本語 📁 ß.txt']) t.ok(names.includes(n), `listed: ${Buffer.from(n).toString('hex').slice(0, 24)}…`);
    t.equal(await readFile(at(nfc), 'utf8'), 'nfc', 'NFC and NFD forms are two different names');
    t.equal(await readFile(at(nfd), 'utf8'), 'nfd');
  });

  await t.test('sparse files: holes read as zeros, size covers the hole', async (t) => {
    const fd = openSync(at('sparse'), C.O_CREAT | C.O_RDWR, 0o644);
    const tail = Buffer.from('end of a sparse file');
    const offset = 9 * 1024 * 1024 + 12345;
    writeSync(fd, tail, 0, tail.length, offset);
    writeSync(fd, Buffer.from('head'), 0, 4, 0);
    const probe = Buffer.alloc(64);
    t.equal(readSync(fd, probe, 0, 64, 5 * 1024 * 1024), 64);
    t.ok(probe.every((b) => b === 0), 'the middle of the hole is zeros');
    closeSync(fd);
    t.equal((await stat(at('sparse'))).size, offset + tail.length);
    const all = await readFile(at('sparse'));
    t.equal(all.subarray(0, 4).toString(), 'head');
    t.equal(all.subarray(offset).toString(), tail.toString());
    t.ok(all.subarray(4, offset).every((b) => b === 0), 'every byte of the hole is zero');
  });

  await t.test('readdir while entries change: entries present throughout are seen exactly once', async (t) => {
    await mkdir(at('busy'));
    const stable = Array.from({ length: 300 }, (_, i) => `stable-${String(i).padStart(3, '0')}`);
    for (const n of stable) await writeFile(at('busy', n), '');
    const dir = await opendir(at('busy'), { bufferSize: 16 });
    const seen: string[] = [];
    let i = 0;
    for await (const d of dir) {
      seen.push(d.name);
      if (i < 100) {
        await writeFile(at('busy', `churn-${i}`), ''); // created during the listing
        if (i > 0) await unlink(at('busy', `churn-${i - 1}`));
      }
      i++;
    }
    const seenStable = seen.filter((n) => n.startsWith('stable-'));
    t.equal(seenStable.length, stable.length, 'every stable entry listed');
    t.equal(new Set(seenStable).size, stable.length, 'none listed twice');
    t.same((await readdir(at('busy'))).filter((n) => n.startsWith('churn-')), ['churn-99'], 'the churn left exactly its last entry');
  });

  await t.test('an open file unlinked or renamed over lives on through its descriptor, then is gone', async (t) => {
    await mkdir(at('gone'));
    await writeFile(at('gone', 'victim'), 'before');
    const fh = await open(at('gone', 'victim'), 'r+');
    await unlink(at('gone', 'victim'));
    t.equal(await errorCode(stat(at('gone', 'victim'))), 'ENOENT', 'the name is gone at once');
    await fh.write('AFTER-UNLINK', 0);
    t.equal((await fh.stat()).size, 12, 'fstat through the descriptor');
    const back = Buffer.alloc(12);
    await fh.read(back, 0, 12, 0);
    t.equal(back.toString(), 'AFTER-UNLINK', 'reads what was written after the unlink');

    await writeFile(at('gone', 'target'), 'old target');
    await writeFile(at('gone', 'source'), 'new content');
    const held = await open(at('gone', 'target'), 'r');
    await rename(at('gone', 'source'), at('gone', 'target'));
    t.equal(await readFile(at('gone', 'target'), 'utf8'), 'new content', 'the name has the renamed file');
    const old = Buffer.alloc(10);
    await held.read(old, 0, 10, 0);
    t.equal(old.toString(), 'old target', 'the descriptor still reads the file it opened');

    await fh.close();
    await held.close();
    // The last close removes what was kept for the descriptors (after the close returns).
    let left = await readdir(at('gone'));
    for (let i = 0; i < 50 && left.length > 1; i++) {
      await new Promise((r) => setTimeout(r, 100));
      left = await readdir(at('gone'));
    }
    t.same(left, ['target'], 'nothing left behind once closed');
  });

  // The same rules hold for what reached the server: a second mount on a fresh local store.
  t.equal((await envx.coffer(['sync', '--wait'], { COFFER_DATA_DIR: join(envx.root, 'data-a') })).code, 0, 'synced');
  const fresh = await mountWorkspace(t, envx, { dataDir: join(envx.root, 'data-b') });
  const b = (...p: string[]): string => join(fresh.mnt, ...p);
  t.equal((await stat(b('mode640'))).mode & 0o7777, 0o604, 'mode on a fresh store');
  t.equal((await stat(b('dir750'))).mode & 0o7777, 0o750, 'directory mode on a fresh store');
  t.equal((await stat(b('sparse'))).size, 9 * 1024 * 1024 + 12345 + 20, 'sparse size on a fresh store');
  t.same(await readFile(b('append')), Buffer.concat([Buffer.from('ABCD'), big]), 'appended file on a fresh store');
  t.equal(await readFile(b('cafe\u0301.txt'), 'utf8'), 'nfd');
  t.equal(await readFile(b('a'.repeat(255)), 'utf8'), '255');
  t.same(await readdir(b('d-empty')), ['inside']);
  t.equal((await readdir(b('busy'))).length, 301);
  t.same(await readdir(b('gone')), ['target'], 'no hidden names reached the server');
});
