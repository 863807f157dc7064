/**
 * Network faults between the mount and the server: a loopback TCP proxy (test/helpers/fault-proxy.ts)
 * that passes, blackholes, delays, resets and truncates connections, switched at seeded points while
 * two mounts (one writing, one reading through its own fresh local store) work through it.
 *
 * What must hold, whatever the network does:
 * - no hang: every operation on the mounts returns (an errno at worst) within bounds; writes and reads
 *   of local data never wait on the network;
 * - never wrong bytes: a read returns a version of the file that was written, or fails;
 * - the mounts stay responsive and alive;
 * - after healing, the client retries on its own and everything converges: the writer's pending
 *   changes reach the server, the second mount and a fresh local store read every file byte-identical.
 *
 * make test: one seed, a few rounds. make soak (COFFER_SOAK=1): more seeds and rounds.
 * COFFER_FAULT_SEED=<n> replays one seed.
 */
import { writeFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { startFaultProxy, type FaultMode, type FaultOptions } from '../helpers/fault-proxy.js';
import { faultSeeds, reportSeedOnFailure, sha256, shq, SOAK, timed, treeHashes } from '../helpers/faults.js';
import { Rng } from '../helpers/prng.js';
import { environmentOn, mountWorkspace } from '../helpers/mount.js';
import { startTestServer } from '../helpers/server.js';

const ROUNDS = Number(process.env.COFFER_FAULT_ROUNDS ?? (SOAK ? 30 : 5));
/** Bound for operations that only touch local data (writes, reads of what this mount wrote, ls). */
const LOCAL_OP_S = 30;
/** Bound for operations that may need the server: the client's request timeout (30 s) + the FUSE op's own limit. */
const REMOTE_OP_S = 80;

function pickMode(r: Rng, round: number): { mode: FaultMode; opts: FaultOptions } {
  // The first rounds visit every mode once, the blackhole last (a connection that lost bytes to it
  // stays dead until the client's own request timeout); later rounds pick any mode, drop more rarely.
  const first: FaultMode[] = ['delay', 'reset', 'truncate', 'pass', 'drop'];
  const later: FaultMode[] = SOAK ? ['delay', 'reset', 'truncate', 'pass', 'delay', 'reset', 'truncate', 'drop'] : ['delay', 'reset', 'truncate'];
  const mode = round < first.length ? first[round]! : r.pick(later);
  switch (mode) {
    case 'delay':
      return { mode, opts: { delayMs: r.range(20, 300) } };
    case 'reset':
    case 'truncate':
      return { mode, opts: { afterBytes: r.pick([0, r.range(1, 200), r.range(200, 70_000)]) } };
    default:
      return { mode, opts: {} };
  }
}

async function runSeed(t: Test, seed: number): Promise<void> {
  reportSeedOnFailure(t, seed, 'faults-network');
  const r = new Rng(seed);
  const server = await startTestServer({ teardown: (fn) => t.teardown(fn) });
  const proxy = await startFaultProxy({ port: Number(new URL(server.url).port) });
  t.teardown(() => proxy.close());
  const envx = await environmentOn(t, server, { deviceUrl: proxy.url, cliTimeoutMs: 180_000 });
  const src = join(envx.root, 'src');
  await mkdir(src, { recursive: true });
  const writer = await mountWorkspace(t, envx, { dataDir: join(envx.root, 'writer') });
  const reader = await mountWorkspace(t, envx, { dataDir: join(envx.root, 'reader') });

  /** path -> current sha256; every sha256 ever written per path (a reader may see an older one). */
  const model = new Map<string, string>();
  const versions = new Map<string, Set<string>>();
  let n = 0;
  const dirs: string[] = [''];
  let remoteReads = 0;
  let remoteReadsOk = 0;
  let dropReads = 0;

  const writeFileOp = async (path: string, what: string) => {
    const size = r.pick([r.range(1, 64 * 1024), r.range(100_000, 700_000), r.range(1_000_000, SOAK ? 3_000_000 : 1_600_000)]);
    const data = r.bytes(size);
    const local = join(src, `c${n++}`);
    await writeFile(local, data);
    const res = await timed(`cp ${shq(local)} ${shq(join(writer.mnt, path))}`, LOCAL_OP_S);
    t.notOk(res.hung, `${what} ${path} returned (${res.ms} ms)`);
    t.equal(res.code, 0, `${what} ${path} (${size} bytes) succeeds without the server: ${res.stderr}`);
    if (res.code === 0) {
      const h = sha256(data);
      model.set(path, h);
      if (!versions.has(path)) versions.set(path, new Set());
      versions.get(path)!.add(h);
    }
  };

  // Baseline, network healthy: files on the server that the reader lists but has never read, so
  // that its reads under faults go to the server for blocks.
  const baseline: string[] = [];
  for (let i = 0; i < (SOAK ? 8 : 3); i++) {
    const path = `base${i}`;
    await writeFileOp(path, 'write');
    baseline.push(path);
  }
  const first = await envx.coffer(['sync', '--wait', '--timeout', '60'], { COFFER_DATA_DIR: join(envx.root, 'writer') });
  t.equal(first.code, 0, `baseline synced: ${first.stderr}`);
  let listed = '';
  for (let i = 0; i < 100 && listed !== baseline.join(' '); i++) {
    listed = (await timed(`ls ${shq(reader.mnt)}`, LOCAL_OP_S)).stdout.split('\n').filter((x) => x.startsWith('base')).sort().join(' ');
    if (listed !== baseline.join(' ')) await new Promise((res) => setTimeout(res, 100));
  }
  t.equal(listed, baseline.join(' '), 'the reader lists the baseline');
  const unread = new Set(baseline);

  for (let round = 0; round < ROUNDS; round++) {
    const { mode, opts } = pickMode(r, round);
    proxy.setMode(mode, opts);
    t.comment(`round ${round}: ${mode} ${JSON.stringify(opts)}`);
    const ops = r.range(1, 3);
    for (let k = 0; k < ops; k++) {
      const files = [...model.keys()];
      const op = files.length === 0 ? 'write' : r.pick(['write', 'write', 'overwrite', 'read', 'mkdir-move', 'rm', 'remote-read', 'remote-read'] as const);
      if (op === 'write') {
        const d = r.pick(dirs);
        await writeFileOp(d ? `${d}/f${n}` : `f${n}`, 'write');
      }
      else if (op === 'overwrite') await writeFileOp(r.pick(files), 'overwrite');
      else if (op === 'read') {
        const path = r.pick(files);
        const res = await timed(`sha256sum < ${shq(join(writer.mnt, path))}`, LOCAL_OP_S);
        t.notOk(res.hung, `local read of ${path} returned (${res.ms} ms)`);
        t.equal(res.code, 0, `local read of ${path}: ${res.stderr}`);
        t.equal(res.stdout.slice(0, 64), model.get(path), `local read of ${path}: the bytes last written`);
      } else if (op === 'mkdir-move') {
        const d = `d${n++}`;
        const path = r.pick(files);
        const to = `${d}/${path.split('/').pop()}`;
        const res = await timed(`mkdir ${shq(join(writer.mnt, d))} && mv ${shq(join(writer.mnt, path))} ${shq(join(writer.mnt, to))}`, LOCAL_OP_S);
        t.notOk(res.hung, `mkdir + mv returned (${res.ms} ms)`);
        t.equal(res.code, 0, `mkdir ${d} + mv ${path} -> ${to}: ${res.stderr}`);
        if (res.code === 0) {
          dirs.push(d);
          model.set(to, model.get(path)!);
          versions.set(to, new Set([...(versions.get(to) ?? []), ...versions.get(path)!]));
          model.delete(path);
        }
      } else if (op === 'rm') {
        const path = r.pick(files);
        const res = await timed(`rm ${shq(join(writer.mnt, path))}`, LOCAL_OP_S);
        t.equal(res.code, 0, `rm ${path}: ${res.stderr}`);
        if (res.code === 0) model.delete(path);
      } else {
        // The second mount reads a file it probably never cached: through the faulty network.
        // Each costs the client's request timeout (30 s, twice for some reads): soak only.
        if (mode === 'drop' && dropReads >= (SOAK ? 3 : 0)) continue;
        if (mode === 'drop') dropReads++;
        // Preferably a file the reader never read (its blocks come from the server).
        const fresh = files.filter((f) => unread.has(f));
        const path = fresh.length > 0 ? r.pick(fresh) : r.pick(files);
        remoteReads++;
        const res = await timed(`sha256sum < ${shq(join(reader.mnt, path))}`, REMOTE_OP_S);
        t.notOk(res.hung, `remote read of ${path} under ${mode} returned (${res.ms} ms)`);
        if (res.code === 0) {
          remoteReadsOk++;
          unread.delete(path);
          const h = res.stdout.slice(0, 64);
          // Renamed files are checked by content: any version this test wrote anywhere is fine.
          const known = [...versions.values()].some((s) => s.has(h));
          t.ok(known, `remote read of ${path} under ${mode}: bytes of a version that was written, never others`);
        } else {
          t.match(res.stderr, /No such file|No route to host|timed out|Input\/output error|Transport endpoint|Resource temporarily/, `remote read of ${path} under ${mode} fails with an errno: ${res.stderr.trim()}`);
          t.notMatch(res.stderr, /Input\/output error/, `a network fault is not reported as corruption (EIO) under ${mode}`);
        }
      }
      // Responsive: the writer's own tree is listed at once, whatever the network does.
      const ls = await timed(`ls -la ${shq(writer.mnt)} > /dev/null && stat ${shq(writer.mnt)} > /dev/null`, LOCAL_OP_S);
      t.ok(!ls.hung && ls.code === 0 && ls.ms < 10_000, `mount responsive under ${mode} (${ls.ms} ms)`);
    }
    // Stay in this mode a little while the sync engine works (uploads hit the fault).
    await new Promise((res) => setTimeout(res, r.range(200, SOAK ? 3000 : 1200)));
  }

  proxy.setMode('pass');
  t.comment(`healed; proxy stats ${JSON.stringify(proxy.stats)}; remote reads ${remoteReadsOk}/${remoteReads} succeeded`);
  t.ok(proxy.stats.delayedChunks > 0 && proxy.stats.resets > 0 && proxy.stats.truncations > 0 && proxy.stats.dropped > 0, 'every fault actually hit traffic');
  t.ok(remoteReads > 0, 'the reader read through the faulty network');
  t.equal(writer.proc.exitCode, null, 'the writer mount survived');
  t.equal(reader.proc.exitCode, null, 'the reader mount survived');
  // The client retries on its own: the pending changes reach the server without a remount.
  const sync = await envx.coffer(['sync', '--wait', '--timeout', '150'], { COFFER_DATA_DIR: join(envx.root, 'writer') });
  t.equal(sync.code, 0, `writer converges after healing: ${sync.stderr}\n${writer.output().slice(-2000)}`);
  t.match(writer.output(), /server unreachable|sync failed; will retry/, 'the writer logged its failed rounds (and retried)');

  const expected = [...model.entries()].sort();
  const same = (files: Map<string, string>) => JSON.stringify([...files.entries()].sort()) === JSON.stringify(expected);
  const w = await treeHashes(writer.mnt);
  t.ok(w.ok && same(w.files), 'the writer mount shows exactly the files written');
  // The second mount follows (events or polling) and reads every file byte-identical.
  let rd = await treeHashes(reader.mnt);
  for (let i = 0; i < 60 && !(rd.ok && same(rd.files)); i++) {
    await new Promise((res) => setTimeout(res, 1000));
    rd = await treeHashes(reader.mnt);
  }
  t.ok(rd.ok && same(rd.files), `the second mount converges to every file byte-identical (${rd.files.size}/${expected.length}) ${rd.stderr}`);
  await writer.stop();
  await reader.stop();
  const fresh = await mountWorkspace(t, envx, { dataDir: join(envx.root, 'fresh') });
  const f = await treeHashes(fresh.mnt);
  t.ok(f.ok && same(f.files), `a fresh local store reads every file byte-identical from the server (${f.files.size}/${expected.length})`);
  await fresh.stop();
}

for (const seed of faultSeeds(20261201)) {
  t.test(`network faults through a proxy (seed ${seed})`, (t) => runSeed(t, seed));
}

t.test('the answer to our own manifest upload is lost, then the file changes again: no conflicting copy, the last write wins', async (t) => {
  const server = await startTestServer({ teardown: (fn) => t.teardown(fn) });
  const proxy = await startFaultProxy({ port: Number(new URL(server.url).port) });
  t.teardown(() => proxy.close());
  const envx = await environmentOn(t, server, { deviceUrl: proxy.url, cliTimeoutMs: 180_000 });
  const dataDir = join(envx.root, 'writer');
  const m = await mountWorkspace(t, envx, { dataDir });
  const file = join(m.mnt, 'doc.txt');
  t.equal((await timed(`echo v1 > ${shq(file)}`, 30)).code, 0);
  t.equal((await envx.coffer(['sync', '--wait', '--timeout', '60'], { COFFER_DATA_DIR: dataDir })).code, 0, 'v1 synced');
  // The server stores each manifest update, but its answers never arrive (connection closed first).
  proxy.setMode('truncate', { afterBytes: 0, onlyRequests: /^POST \/v1\/orgs\/[^/]+\/realms\/[^/]+\/vlobs-write / });
  t.equal((await timed(`echo v2 > ${shq(file)}`, 30)).code, 0);
  for (let i = 0; i < 100 && proxy.stats.truncations === 0; i++) await new Promise((res) => setTimeout(res, 100));
  t.ok(proxy.stats.truncations > 0, 'the answer to the upload of v2 was lost');
  proxy.setMode('pass');
  // Changed again before the client learns that v2 landed.
  t.equal((await timed(`echo v3 > ${shq(file)}`, 30)).code, 0);
  const sync = await envx.coffer(['sync', '--wait', '--timeout', '60'], { COFFER_DATA_DIR: dataDir });
  t.equal(sync.code, 0, `converges: ${sync.stderr.slice(-300)}`);
  t.equal((await timed(`cat ${shq(file)}`, 30)).stdout, 'v3\n', 'the last write keeps the name');
  t.equal((await timed(`ls ${shq(m.mnt)}`, 30)).stdout, 'doc.txt\n', 'no conflicting copy of our own upload');
  await m.stop();
  const fresh = await mountWorkspace(t, envx, { dataDir: join(envx.root, 'fresh') });
  t.equal((await timed(`cat ${shq(join(fresh.mnt, 'doc.txt'))}`, 30)).stdout, 'v3\n', 'the server has the last write');
  t.equal((await timed(`ls ${shq(fresh.mnt)}`, 30)).stdout, 'doc.txt\n', 'and nothing else');
  await fresh.stop();
});
