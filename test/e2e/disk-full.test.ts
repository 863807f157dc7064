/**
 * Disk full, on both sides.
 *
 * Client: the local store (COFFER_DATA_DIR of the mount) on a 32 MiB tmpfs. Writing past it gives a
 * clear ENOSPC at the mount (not EIO, not a hang) and a log line; files written before still read;
 * after freeing space (deleting the big file) writes work again; everything syncs later.
 *
 * Server: the block store (the server's data/blocks) on a small tmpfs. Uploads get a clear,
 * retryable error (507 no_space), the client keeps its data locally and retries; once the block
 * store has room again (the tmpfs grows), sync completes and a fresh store reads everything back.
 */
import { mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { faultSeeds, mountTmpfs, reportSeedOnFailure, sha256, shq, startChildServer, timed, treeHashes } from '../helpers/faults.js';
import { Rng } from '../helpers/prng.js';
import { environmentOn, mountWorkspace, setupEnvironment, sh } from '../helpers/mount.js';

const [seed] = faultSeeds(4242);

t.test('client local store full: ENOSPC at the mount, no corruption, writes work again after freeing space', async (t) => {
  reportSeedOnFailure(t, seed!, 'disk-full (client)');
  const r = new Rng(seed!);
  const envx = await setupEnvironment(t);
  const store = join(envx.root, 'store');
  await mountTmpfs(t, store, '32m');
  const src = join(envx.root, 'src');
  await mkdir(src, { recursive: true });
  const files = new Map<string, Buffer>([
    ['small.txt', r.bytes(r.range(100, 5000))],
    ['medium.bin', r.bytes(r.range(600_000, 1_500_000))],
  ]);
  for (const [name, data] of files) await writeFile(join(src, name), data);
  const big = r.bytes(48 * 1024 * 1024);
  await writeFile(join(src, 'big.bin'), big);

  const m = await mountWorkspace(t, envx, { dataDir: store });
  for (const name of files.keys()) t.equal((await sh(`cp ${shq(join(src, name))} ${shq(join(m.mnt, name))}`)).code, 0, `write ${name}`);
  const first = await envx.coffer(['sync', '--wait', '--timeout', '60'], { COFFER_DATA_DIR: store });
  t.equal(first.code, 0, `synced before the disk fills: ${first.stderr.slice(-600)}`);
  // Offline: dirty blocks pile up in the local store until its disk is full.
  await envx.server.close();
  // Written offline before the disk fills: only in the local store, they must survive whatever follows.
  const unsynced = new Map<string, Buffer>([
    ['offline-small.txt', r.bytes(r.range(100, 5000))],
    ['offline-medium.bin', r.bytes(r.range(600_000, 1_500_000))],
  ]);
  for (const [name, data] of unsynced) {
    await writeFile(join(src, name), data);
    t.equal((await sh(`cp ${shq(join(src, name))} ${shq(join(m.mnt, name))}`)).code, 0, `write ${name} offline`);
    files.set(name, data);
  }
  // A file the user will delete to free space.
  await writeFile(join(src, 'filler.bin'), r.bytes(8 * 1024 * 1024));
  t.equal((await sh(`cp ${shq(join(src, 'filler.bin'))} ${shq(join(m.mnt, 'filler.bin'))}`)).code, 0, 'write filler.bin (8 MiB) offline');

  const fill = await timed(`dd if=${shq(join(src, 'big.bin'))} of=${shq(join(m.mnt, 'big.bin'))} bs=1M conv=fsync 2>&1`, 90);
  t.notOk(fill.hung, `writing past the full disk returned (${fill.ms} ms)`);
  t.not(fill.code, 0, 'writing 48 MiB into a 32 MiB local store fails');
  t.match(fill.stdout, /No space left on device/, `ENOSPC at the mount: ${fill.stdout.trim().split('\n').pop()}`);
  t.notMatch(fill.stdout, /Input\/output error/, 'not EIO');
  t.match(m.output(), /ENOSPC|no space|No space left/i, 'a log line says why');
  t.equal(m.proc.exitCode, null, `the mount survived ${m.proc.exitCode === null ? '' : m.output().slice(-3000)}`);

  // No corruption: what was there still reads, the tree still lists, small writes fail cleanly or work.
  for (const [name, data] of files) {
    const h = await timed(`sha256sum < ${shq(join(m.mnt, name))}`, 30);
    if (unsynced.has(name) || h.code === 0) t.equal(h.stdout.slice(0, 64), sha256(data), `${name} still reads byte-identical with the disk full ${h.stderr}`);
    // An uploaded file's cached blocks may have given their room to the write (the server has them):
    // offline, it then fails with EHOSTUNREACH, never EIO or wrong bytes.
    else t.match(h.stderr, /No route to host/, `${name}: its cache was given up for the write; offline it fails cleanly`);
  }
  t.equal((await timed(`ls ${shq(m.mnt)}`, 30)).code, 0, 'ls works with the disk full');
  const meanwhile = await timed(`head -c 3000000 /dev/zero | tr '\\0' x > ${shq(join(m.mnt, 'meanwhile.txt'))}`, 60);
  t.notOk(meanwhile.hung, 'a write with the disk still full returns');
  if (meanwhile.code !== 0) t.match(meanwhile.stderr, /No space left on device/, 'and fails with ENOSPC if it fails');
  await sh(`rm -f ${shq(join(m.mnt, 'meanwhile.txt'))}`);

  // Freeing space (another file goes, with its never-uploaded blocks): writes work again. The file
  // whose write failed stays, as the failed write left it.
  const rm = await timed(`rm ${shq(join(m.mnt, 'filler.bin'))}`, 30);
  t.equal(rm.code, 0, `rm filler.bin: ${rm.stderr}`);
  const after = r.bytes(4 * 1024 * 1024 + 123);
  files.set('after.bin', after);
  await writeFile(join(src, 'after.bin'), after);
  let again = await timed(`cp ${shq(join(src, 'after.bin'))} ${shq(join(m.mnt, 'after.bin'))}`, 60);
  // The deleted blocks are removed with the next persist of local changes (100 ms).
  for (let i = 0; i < 20 && again.code !== 0; i++) {
    await new Promise((res) => setTimeout(res, 250));
    again = await timed(`cp ${shq(join(src, 'after.bin'))} ${shq(join(m.mnt, 'after.bin'))}`, 60);
  }
  t.equal(again.code, 0, `a 4 MiB write works again after freeing space: ${again.stderr}`);
  t.equal((await timed(`sha256sum < ${shq(join(m.mnt, 'after.bin'))}`, 30)).stdout.slice(0, 64), sha256(after), 'and reads back');
  const partial = await timed(`cat ${shq(join(m.mnt, 'big.bin'))} | sha256sum`, 30);
  t.equal(partial.code, 0, 'the file whose write failed reads');

  // The server comes back: everything pending syncs, including the file whose write failed (its
  // unsealed bytes must not keep it from uploading forever).
  await envx.server.restart();
  const syncBack = await envx.coffer(['sync', '--wait', '--timeout', '60'], { COFFER_DATA_DIR: store });
  t.equal(syncBack.code, 0, `everything syncs once the server is back, the failed file too: ${syncBack.stderr.slice(-200)}\n${m.output().slice(-2500)}`);
  const writerTree = await treeHashes(m.mnt);
  t.equal(writerTree.files.get('big.bin'), partial.stdout.slice(0, 64), 'the failed file still shows what it showed');

  // The local store reopens cleanly on the same (once full) disk, and everything syncs.
  await m.stop();
  const m2 = await mountWorkspace(t, envx, { dataDir: store });
  for (const [name, data] of files) t.equal((await timed(`sha256sum < ${shq(join(m2.mnt, name))}`, 30)).stdout.slice(0, 64), sha256(data), `${name} intact after a remount`);
  const sync = await envx.coffer(['sync', '--wait', '--timeout', '120'], { COFFER_DATA_DIR: store });
  t.equal(sync.code, 0, `syncs once the server is back: ${sync.stderr.slice(-600)}`);
  await m2.stop();
  const fresh = await mountWorkspace(t, envx, { dataDir: join(envx.root, 'fresh') });
  for (const [name, data] of files) t.equal((await timed(`sha256sum < ${shq(join(fresh.mnt, name))}`, 60)).stdout.slice(0, 64), sha256(data), `${name} reached the server`);
  const freshTree = await treeHashes(fresh.mnt);
  t.same([...freshTree.files.entries()].sort(), [...writerTree.files.entries()].sort(), 'a fresh store shows exactly the writer\'s tree (the failed file as the writer shows it)');
  await fresh.stop();
});

t.test('client local store full of clean cached blocks: the cache gives way, writes succeed', async (t) => {
  reportSeedOnFailure(t, seed!, 'disk-full (clean cache)');
  const r = new Rng(seed! + 1);
  const envx = await setupEnvironment(t);
  const store = join(envx.root, 'store');
  await mountTmpfs(t, store, '32m');
  const src = join(envx.root, 'src');
  await mkdir(src, { recursive: true });
  const m = await mountWorkspace(t, envx, { dataDir: store });
  // Three 10 MiB files, each synced: 30 MiB of clean (uploaded) blocks under a 1 GiB cache limit.
  const written = new Map<string, string>();
  for (let i = 0; i < 4; i++) {
    const data = r.bytes(10 * 1024 * 1024);
    await writeFile(join(src, `f${i}`), data);
    const w = await timed(`cp ${shq(join(src, `f${i}`))} ${shq(join(m.mnt, `f${i}`))}`, 90);
    t.equal(w.code, 0, `write f${i} (10 MiB) with ${i * 10} MiB of uploaded blocks cached on a 32 MiB disk: ${w.stderr.trim()}${w.code === 0 ? '' : `\n${m.output().slice(-2500)}\n${(await sh(`df -k ${shq(store)}; ls -la ${shq(store)}/*/*/`)).stdout}`}`);
    if (w.code === 0) written.set(`f${i}`, sha256(data));
    const s = await envx.coffer(['sync', '--wait', '--timeout', '60'], { COFFER_DATA_DIR: store });
    t.equal(s.code, 0, `f${i} synced: ${s.stderr.slice(-600)}`);
  }
  for (const [name, h] of written) {
    const rd = await timed(`sha256sum < ${shq(join(m.mnt, name))}`, 60);
    t.equal(rd.stdout.slice(0, 64), h, `${name} reads back ${rd.stderr}${rd.code === 0 ? '' : m.output().slice(-1500)}`);
  }
  await m.stop();
});

t.test('server block store full: a clear retryable error, the client keeps its data and completes later', async (t) => {
  reportSeedOnFailure(t, seed!, 'disk-full (server)');
  const r = new Rng(seed! + 2);
  const data = await mkdtemp(join(tmpdir(), 'coffer-srvfull-'));
  t.teardown(() => sh(`rm -rf ${shq(data)}`).then(() => undefined));
  const blocks = join(data, 'blocks');
  await mountTmpfs(t, blocks, '8m');
  const server = await startChildServer(t, { dataDir: data });
  const envx = await environmentOn(t, server, { cliTimeoutMs: 180_000 });
  const src = join(envx.root, 'src');
  await mkdir(src, { recursive: true });
  const m = await mountWorkspace(t, envx, { dataDir: join(envx.root, 'store') });
  const files = new Map<string, Buffer>();
  for (let i = 0; i < 4; i++) files.set(`f${i}.bin`, r.bytes(r.range(3, 5) * 1024 * 1024 + r.range(0, 9999)));
  for (const [name, d] of files) {
    await writeFile(join(src, name), d);
    const w = await timed(`cp ${shq(join(src, name))} ${shq(join(m.mnt, name))}`, 60);
    t.equal(w.code, 0, `write ${name}: local, whatever the server's disk`);
  }
  const stuck = await envx.coffer(['sync', '--wait', '--timeout', '8'], { COFFER_DATA_DIR: join(envx.root, 'store') });
  t.not(stuck.code, 0, 'sync cannot complete while the block store is full');
  t.match(server.output(), /no_space|No space left|ENOSPC/i, 'the server logged the full block store');
  t.match(m.output(), /out of storage space|no_space/i, `the client logged a clear reason: ${m.output().slice(-400)}`);
  t.notMatch(m.output(), /HTTP 500|internal server error/i, 'not an internal error');
  for (const [name, d] of files) t.equal((await timed(`sha256sum < ${shq(join(m.mnt, name))}`, 30)).stdout.slice(0, 64), sha256(d), `${name} kept locally`);

  // Room again: the client's own retries finish the job.
  t.equal((await sh(`mount -o remount,size=128m ${shq(blocks)}`)).code, 0, 'block store grown');
  const sync = await envx.coffer(['sync', '--wait', '--timeout', '90'], { COFFER_DATA_DIR: join(envx.root, 'store') });
  t.equal(sync.code, 0, `sync completes after space is freed: ${sync.stderr.slice(-600)}`);
  await m.stop();
  const fresh = await mountWorkspace(t, envx, { dataDir: join(envx.root, 'fresh') });
  for (const [name, d] of files) {
    const h = await timed(`sha256sum < ${shq(join(fresh.mnt, name))}`, 60);
    t.equal(h.stdout.slice(0, 64), sha256(d), `${name} on the server, byte-identical ${h.stderr}`);
  }
  t.equal(fresh.proc.exitCode, null, `fresh mount alive ${fresh.output().slice(-2000)}`);
  await fresh.stop();
});
