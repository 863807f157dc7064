/**
 * Issue 5, the file explorer: a real file manager (Debian's pcmanfm, GTK, libfm/GIO) in a real
 * window under Xvfb, on a real `coffer mount`. It opens the mounted workspace given on its command
 * line, shows its files (checked on a screenshot, kept in test-artifacts/, with OCR), opens a folder
 * and a file, copies files out and in (its own clipboard copy/paste: libfm's file operations over
 * GIO, as a person does with Ctrl+C/Ctrl+V), creates a folder, moves a file to the trash and deletes
 * another for good, all with keyboard input from xdotool. Before that, the shell checks what the
 * file manager relies on: statfs, names, attributes and timestamps.
 */
import { readFile, mkdir, writeFile } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import t from 'tap';
import { fuzzyIncludes, missingDesktopCommands, startDesktop, startFileManager, waitFor } from '../helpers/desktop.js';
import { mountWorkspace, setupEnvironment, sh } from '../helpers/mount.js';

const ARTIFACTS = resolve(import.meta.dirname, '../../test-artifacts');
const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
/** OCR may misread a letter of a name; numbers (sizes, dates, capacity) must read exactly. */
const shows = (ocrText: string, token: string) => fuzzyIncludes(ocrText, token, /\d/.test(token) ? 0 : undefined);

t.test('a real file manager browses, opens, copies in and deletes on a mounted workspace', async (t) => {
  const missing = await missingDesktopCommands();
  if (missing.length > 0) {
    t.fail(`missing ${missing.join(', ')}: install the Makefile's APT_PACKAGES (make deps)`);
    return;
  }
  const t0 = Date.now();
  const elapsed = (what: string) => t.comment(`${what} at ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  const envx = await setupEnvironment(t);
  // Debug level: every FUSE op that answers an error is logged, so we can see what the file manager hit.
  envx.env.COFFER_LOG_LEVEL = 'debug';
  const m = await mountWorkspace(t, envx);
  const mnt = m.mnt;
  const uid = process.getuid?.() ?? 0;
  const shOk = async (what: string, cmd: string, tt: typeof t = t): Promise<string> => {
    const r = await sh(cmd, { env: { ...process.env, TZ: 'UTC', LC_ALL: 'C.UTF-8' } });
    tt.equal(r.code, 0, `${what}${r.code === 0 ? '' : `: ${r.stderr.slice(0, 500)}`}`);
    return r.stdout;
  };

  // Files with distinctive names, put in through the shell.
  const zebraTime = Date.UTC(2021, 5, 15, 10, 0, 0) / 1000;
  await shOk(
    'populate the mount',
    `set -e; cd ${q(mnt)}; mkdir Quarterly-Reports; printf 'revenue up\\n' > Quarterly-Reports/summary-2024.txt; ` +
      `printf 'zebra\\n' > zebra-notes.txt; touch -d @${zebraTime} zebra-notes.txt; ` +
      `printf 'accents\\n' > 'Résumé café.txt'; head -c 2000000 /dev/urandom > photo-archive.bin`,
  );
  const incoming = join(envx.root, 'incoming');
  const out = join(envx.root, 'out');
  const inTime = Date.UTC(2019, 2, 4, 5, 6, 7) / 1000;
  await mkdir(incoming);
  await mkdir(out);
  await writeFile(join(incoming, 'from-desktop.txt'), 'brought in by the file manager\n');
  // Only the mtime is old: the atime stays "now", as for any file a person has looked at.
  await shOk('date the incoming file', `touch -m -d @${inTime} ${q(join(incoming, 'from-desktop.txt'))}`);

  await t.test('statfs: a sensible capacity (the disk of the local store)', async (t) => {
    const [blocks, free, avail, bsize, namelen] = (await shOk('stat -f', `stat -f -c '%b %f %a %S %l' ${q(mnt)}`, t)).trim().split(' ').map(Number);
    t.ok(blocks! > 0 && bsize! > 0, `size ${blocks} blocks of ${bsize}`);
    t.ok(avail! > 0 && free! >= avail! && blocks! >= free!, `free ${free} >= available ${avail} > 0`);
    t.equal(namelen, 255, 'names up to 255 bytes');
    const [dBlocks, dBsize] = (await shOk('stat -f data dir', `stat -f -c '%b %S' ${q(String(envx.env.COFFER_DATA_DIR))}`, t)).trim().split(' ').map(Number);
    t.equal(blocks! * bsize!, dBlocks! * dBsize!, 'capacity is that of the disk holding the local store');
    const df = (await shOk('df', `df -B1 --output=fstype,size,avail,target ${q(mnt)} | tail -1`, t)).trim().split(/\s+/);
    t.equal(df[0], 'fuse.coffer', 'df: file system type');
    t.ok(Number(df[1]) > 0 && Number(df[2]) > 0, `df: size ${df[1]}, available ${df[2]}`);
    t.equal(df[3], mnt, 'df: mount point');
  });

  await t.test('names, attributes and timestamps as a file manager reads them', async (t) => {
    t.same((await shOk('ls', `ls -1A ${q(mnt)}`, t)).trim().split('\n').sort(), ['Quarterly-Reports', 'Résumé café.txt', 'photo-archive.bin', 'zebra-notes.txt'].sort(), 'readdir: the names, byte for byte');
    const long = 'n'.repeat(255);
    await shOk('255-byte name', `cd ${q(mnt)} && touch ${long} && test -f ${long} && rm ${long}`, t);
    const tooLong = await sh(`touch ${q(join(mnt, 'n'.repeat(256)))}`);
    t.match(tooLong.stderr, /File name too long/, '256-byte name: ENAMETOOLONG');
    const st = async (name: string) => (await shOk(`stat ${name}`, `stat -c '%s|%a|%F|%u|%X|%Y|%Z' ${q(join(mnt, name))}`, t)).trim().split('|');
    const z = await st('zebra-notes.txt');
    t.same(z.slice(0, 4), ['6', '644', 'regular file', String(uid)], 'file: size, mode, type, owner');
    t.same(z.slice(4).map(Number), [zebraTime, zebraTime, zebraTime], 'atime, mtime and ctime report the mtime that was set');
    t.same((await st('Quarterly-Reports')).slice(1, 4), ['755', 'directory', String(uid)], 'folder: mode, type, owner');
    t.equal((await st('photo-archive.bin'))[0], '2000000', 'size of a 2 MB file');
  });

  // The desktop: Xvfb, then pcmanfm opening the mounted folder given on its command line.
  const logStart = m.output().length;
  const desktop = await startDesktop(t, { width: 1024, height: 640 });
  const marker = join(envx.root, 'opened.txt');
  const fm = await startFileManager(t, desktop, mnt, {
    // What pcmanfm launches to open a text file: records the path it was given and the content it reads.
    opener: { mimeTypes: ['text/plain'], script: `#!/bin/sh\n{ printf '%s\\n' "$1"; cat "$1"; } > ${q(marker)}.tmp && mv ${q(marker)}.tmp ${q(marker)}\n` },
  });
  const mntName = basename(mnt);
  elapsed('file manager up');
  t.equal(await fm.title(), mntName, 'the window shows the mounted folder');

  // The acceptance screenshot: the file manager lists the workspace (read back with OCR).
  const [fsBlocks, fsBsize] = (await shOk('statfs total', `stat -f -c '%b %S' ${q(mnt)}`)).trim().split(' ').map(Number);
  const statfsTotal = fsBlocks! * fsBsize!;
  const shot = join(ARTIFACTS, 'file-manager.png');
  const wanted = [
    'zebra-notes.txt',
    'photo-archive.bin',
    'uarterly-reports', // the folder icon sometimes reads as a letter before the name
    'café.txt',
    '1.9 mib', // photo-archive.bin's size
    '6 bytes', // zebra-notes.txt's size
    '06/15/21 10:00', // zebra-notes.txt's mtime (set with touch -d, shown in UTC)
    'folder',
    '4 items',
    'free space:', // statfs, in the status bar
    `${(statfsTotal / 2 ** 30).toFixed(1)} gib)`, // "(Total: <statfs capacity> GiB)"
  ];
  let seen = '';
  await waitFor(
    'the file manager to show the files',
    async () => {
      await desktop.screenshot(shot);
      seen = await desktop.ocr(shot);
      return wanted.every((w) => shows(seen, w));
    },
    30_000,
    0,
  ).catch(() => undefined);
  for (const w of wanted) t.ok(shows(seen, w), `the screenshot shows "${w}"`, { seen });
  const stats = await desktop.screenshot(shot);
  t.same([stats.width, stats.height], [1024, 640], 'a screenshot of the whole screen');
  t.ok(stats.colours > 50, `the screenshot is not blank (${stats.colours} colours)`);
  t.ok(stats.bytes > 10_000, `the screenshot is not trivial (${stats.bytes} bytes)`);
  t.comment(`screenshot: ${shot}`);
  elapsed('screenshot checked');

  await t.test('copy out: select all, copy, paste in a local folder (reads every file through the mount)', async (t) => {
    await fm.keys('ctrl+a', 'ctrl+c');
    await fm.goTo(out);
    await fm.keys('ctrl+v');
    const done = await waitFor(
      'the copies',
      async () => (await sh(`diff -r ${q(mnt)} ${q(out)} && test "$(stat -c %Y ${q(join(out, 'zebra-notes.txt'))})" = ${zebraTime}`)).code === 0,
      30_000,
    ).catch((e: Error) => e);
    t.equal(done, true, 'every file and folder copied out, identical, mtime kept');
    await fm.keys('alt+Left');
    await fm.waitForTitle(mntName);
  });

  await t.test('open a folder, then a file, with the default application', async (t) => {
    await fm.type('Quarterly');
    await desktop.xdotool(['key', 'Return']);
    await fm.waitForTitle('Quarterly-Reports');
    await fm.type('summary');
    await desktop.xdotool(['key', 'Return']);
    const opened = await waitFor('the opener to run', () => readFile(marker, 'utf8'), 15_000).catch((e: Error) => e.message);
    t.equal(opened, `${join(mnt, 'Quarterly-Reports', 'summary-2024.txt')}\nrevenue up\n`, 'the application got the file in the mount and read it');
    await fm.keys('alt+Up');
    await fm.waitForTitle(mntName);
  });

  await t.test('copy in: copy in a local folder, paste in the mount', async (t) => {
    await fm.goTo(incoming);
    await fm.keys('ctrl+a', 'ctrl+c', 'alt+Left');
    await fm.waitForTitle(mntName);
    await fm.keys('ctrl+v');
    const copied = join(mnt, 'from-desktop.txt');
    const done = await waitFor('the copy in the mount', async () => (await sh(`cmp ${q(join(incoming, 'from-desktop.txt'))} ${q(copied)}`)).code === 0, 15_000).catch((e: Error) => e);
    t.equal(done, true, 'from-desktop.txt copied into the mount, identical');
    // libfm copies the times (GIO's utimes with atime and mtime): the libfuse3 transport passes both
    // (fuse-native 2.2.6 passed the atime twice, docs/design.md).
    const mtime = await waitFor('the copy to get its times', async () => {
      const r = await sh(`stat -c %Y ${q(copied)}`);
      return r.code === 0 ? Number(r.stdout.trim()) : 0;
    });
    t.equal(mtime, inTime, 'the copy keeps the mtime of the original');
  });

  await t.test('create a folder', async (t) => {
    await fm.keys('ctrl+shift+n');
    await fm.dialog('Creating New Folder');
    await desktop.xdotool(['key', 'ctrl+a']);
    await desktop.xdotool(['type', '--delay', '15', 'Made by pcmanfm']);
    await desktop.xdotool(['key', 'Return']);
    const made = await waitFor('the new folder', async () => (await sh(`test -d ${q(join(mnt, 'Made by pcmanfm'))}`)).code === 0).catch((e: Error) => e);
    t.equal(made, true, 'the folder is in the mount');
  });

  await t.test('delete: to the trash, and for good', async (t) => {
    // Delete = move to the trash (libfm's default). GIO trashes a file on another file system into
    // <mount>/.Trash-<uid>/ when it can create it there, as on any writable FUSE mount.
    await fm.select('zebra');
    await fm.keys('Delete');
    const gone = await waitFor('zebra-notes.txt to leave its folder', async () => (await sh(`test ! -e ${q(join(mnt, 'zebra-notes.txt'))}`)).code === 0).catch((e: Error) => e);
    t.equal(gone, true, 'the trashed file is gone from its folder');
    const trashed = join(mnt, `.Trash-${uid}`);
    const where = await sh(`cat ${q(join(trashed, 'files', 'zebra-notes.txt'))} && cat ${q(join(trashed, 'info', 'zebra-notes.txt.trashinfo'))}`);
    if (where.code === 0) {
      t.comment(`trash on the mount: ${trashed}`);
      t.match(where.stdout, /^zebra\n\[Trash Info\]\nPath=zebra-notes\.txt\nDeletionDate=/, 'trashed intact, with its trash info, in the mount');
    } else {
      t.comment(`not trashed in the mount (${where.stderr.trim()}): GIO deleted it or trashed it elsewhere`);
    }
    // Shift+Delete = delete for good (no confirmation: confirm_del=0).
    await fm.select('photo-archive');
    await fm.keys('shift+Delete');
    const deleted = await waitFor('photo-archive.bin to be deleted', async () => (await sh(`test ! -e ${q(join(mnt, 'photo-archive.bin'))}`)).code === 0).catch((e: Error) => e);
    t.equal(deleted, true, 'deleted');
    t.equal((await shOk('find', `find ${q(mnt)} -name photo-archive.bin`, t)).trim(), '', 'not kept anywhere in the mount');
  });

  // The window after all that, kept as a second artifact.
  const after = join(ARTIFACTS, 'file-manager-after.png');
  const present = ['from-desktop.txt', 'made by pcmanfm', 'uarterly-reports', 'café.txt'];
  const absent = ['zebra-notes', 'photo-archive'];
  let seenAfter = '';
  await waitFor(
    'the file manager to show the changes',
    async () => {
      await desktop.screenshot(after);
      seenAfter = await desktop.ocr(after);
      return present.every((w) => shows(seenAfter, w)) && absent.every((w) => !shows(seenAfter, w));
    },
    20_000,
    0,
  ).catch(() => undefined);
  for (const w of present) t.ok(shows(seenAfter, w), `the window now shows "${w}"`, { seen: seenAfter });
  for (const w of absent) t.notOk(shows(seenAfter, w), `the window no longer shows "${w}"`, { seen: seenAfter });

  elapsed('file manager done');
  t.equal(fm.proc.exitCode, null, 'the file manager is still running (no crash)');
  await fm.stop();

  // Every error the mount answered while the file manager worked: only "no such entry" on lookups
  // and "no xattrs" (ENOSYS, by design) are expected.
  const answered = m
    .output()
    .slice(logStart)
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => {
      try {
        return JSON.parse(l) as { msg?: string; op?: string; path?: string; errno?: number; level?: number };
      } catch {
        return {};
      }
    })
    .filter((e) => typeof e.msg === 'string' && e.msg.startsWith('fuse op'));
  const expected = (e: { op?: string; errno?: number; msg?: string }) =>
    (e.errno === -2 && e.op === 'getattr' && e.msg === 'fuse op failed') || (e.errno === -38 && /xattr$/.test(e.op ?? ''));
  const summary = [...new Set(answered.map((e) => `${e.op} ${e.errno}${e.msg === 'fuse op failed unexpectedly' ? ' (unexpected)' : ''}`))].sort();
  t.comment(`errors the mount answered: ${summary.join(', ') || 'none'}`);
  t.same(
    answered.filter((e) => !expected(e)).map((e) => `${e.op} ${e.path} ${e.errno} ${e.msg}`),
    [],
    'no other error answered to the file manager',
  );

  const synced = await envx.coffer(['sync', 'Docs', '--wait', '--timeout', '60']);
  t.equal(synced.code, 0, `everything the file manager did reaches the server: ${synced.stderr}`);
  await writeFile(join(ARTIFACTS, 'file-manager-ocr.txt'), `before:\n${seen}\n\nafter:\n${seenAfter}\n`);
});
