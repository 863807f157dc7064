/**
 * Crash consistency: the mount process killed -9 at seeded points while files are being written and
 * while a batch is uploading, several rounds on one local store; then the server killed -9 and
 * restarted while uploads are in flight.
 *
 * After each client crash (and restart on the same local store):
 * - the local store opens cleanly (SQLite integrity_check, every dirty block row has its file, the
 *   mount comes up), whatever the kill interrupted;
 * - every file closed (or fsynced) before the kill reads byte-identical;
 * - a file being written when the kill came is never shown with bytes that were not written: each
 *   byte is the one written at that offset or zero (unsealed data lost, as on any file system
 *   after a crash), or the file keeps its previous version; chunks of a file closed one by one
 *   survive up to the last close;
 * - sync resumes and the server converges: a fresh local store shows exactly the same tree.
 * After a server crash: the mount stays usable, the client retries, everything reaches the server.
 *
 * make test: one seed, 3 client rounds and 1 server round. make soak (COFFER_SOAK=1): more.
 * COFFER_FAULT_SEED=<n> replays one seed.
 */
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import t, { type Test } from 'tap';
import { faultSeeds, reportSeedOnFailure, sha256, shq, SOAK, startChildServer, timed, treeHashes } from '../helpers/faults.js';
import { Rng } from '../helpers/prng.js';
import { environmentOn, localStoreFiles, mountWorkspace, setupEnvironment, type Environment, type MountedWorkspace } from '../helpers/mount.js';

const CLIENT_ROUNDS = Number(process.env.COFFER_CRASH_ROUNDS ?? (SOAK ? 12 : 3));
const SERVER_ROUNDS = Number(process.env.COFFER_CRASH_SERVER_ROUNDS ?? (SOAK ? 6 : 1));
const CHUNK = 256 * 1024;

/** The store as the crash left it: SQLite consistent, no dirty block row without its bytes (a file, or inline). */
async function checkStore(t: Test, dataDir: string, when: string): Promise<void> {
  const files = await localStoreFiles(dataDir);
  t.ok(files.length >= 1, `${when}: a local store exists`);
  for (const f of files) {
    const db = new Database(f, { readonly: true, fileMustExist: true });
    try {
      if (!db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'blocks'").get()) continue; // not a workspace store
      const ic = db.pragma('integrity_check', { simple: true });
      t.equal(ic, 'ok', `${when}: SQLite integrity_check of the local store`);
      const dirty = db.prepare('SELECT id, inline, (SELECT 1 FROM block_data d WHERE d.id = b.id) AS stored FROM blocks b WHERE dirty = 1').all() as Array<{ id: string; inline: number; stored: number | null }>;
      const missing = dirty.filter((r) => (r.inline === 1 ? r.stored !== 1 : !existsSync(join(`${f}.blocks`, r.id)))).map((r) => r.id);
      t.same(missing, [], `${when}: every dirty block row has its bytes (${dirty.length} dirty, ${dirty.filter((r) => r.inline === 1).length} inline)`);
    } finally {
      db.close();
    }
  }
}

interface InFlight {
  path: string;
  /** Full intended content. */
  data: Buffer;
  /** Previous content (an overwrite), if any. */
  old?: Buffer;
  /** Bytes known committed (closed) before the kill, from the start of the file. */
  committedPrefix: number;
  done: boolean;
}

/** Each byte is the intended one or zero; size within the intended one. */
function explainable(shown: Buffer, intended: Buffer, prefix: number): string | null {
  if (shown.length > intended.length) return `size ${shown.length} > ${intended.length} written`;
  if (shown.length < prefix) return `size ${shown.length} < ${prefix} bytes closed before the kill`;
  if (!shown.subarray(0, prefix).equals(intended.subarray(0, prefix))) return 'the bytes closed before the kill differ';
  for (let i = prefix; i < shown.length; i++) {
    if (shown[i] !== 0 && shown[i] !== intended[i]) return `byte ${i} is ${shown[i]}, neither written (${intended[i]}) nor zero`;
  }
  return null;
}

async function readThrough(m: MountedWorkspace, path: string, scratch: string): Promise<{ ok: boolean; data: Buffer; err: string }> {
  const out = join(scratch, `read-${Math.random().toString(36).slice(2)}`);
  const r = await timed(`cat ${shq(join(m.mnt, path))} > ${shq(out)}`, 60);
  if (r.code !== 0) return { ok: false, data: Buffer.alloc(0), err: r.stderr };
  return { ok: true, data: await readFile(out), err: '' };
}

async function clientCrashes(t: Test, seed: number): Promise<void> {
  reportSeedOnFailure(t, seed, 'crash-consistency (client)');
  const r = new Rng(seed);
  const envx: Environment = await setupEnvironment(t);
  const dataDir = join(envx.root, 'store');
  const src = join(envx.root, 'src');
  const scratch = join(envx.root, 'scratch');
  await mkdir(src, { recursive: true });
  await mkdir(scratch, { recursive: true });
  const committed = new Map<string, string>(); // path -> sha256
  const contents = new Map<string, Buffer>(); // path -> bytes (for overwrite checks)
  let inflight: InFlight[] = [];
  let n = 0;
  const put = async (data: Buffer) => {
    const f = join(src, `s${n++}`);
    await writeFile(f, data);
    return f;
  };

  for (let round = 0; round <= CLIENT_ROUNDS; round++) {
    const m = await mountWorkspace(t, envx, { dataDir });
    const when = `after crash ${round}`;
    if (round > 0) {
      // The mount point shows up just before the process prints its line.
      for (let i = 0; i < 50 && !/mounted Docs/.test(m.output()); i++) await new Promise((res) => setTimeout(res, 100));
      t.match(m.output(), /mounted Docs/, `${when}: the mount comes back on the same local store`);
    }
    // Files closed before the kill: intact.
    for (const [path, h] of committed) {
      const got = await readThrough(m, path, scratch);
      t.ok(got.ok, `${when}: ${path} reads ${got.err}`);
      if (got.ok) t.equal(sha256(got.data), h, `${when}: ${path} (closed before the kill) byte-identical`);
    }
    // Files in flight at the kill: explainable, never foreign bytes.
    for (const f of inflight) {
      const got = await readThrough(m, f.path, scratch);
      if (!got.ok) {
        t.ok(!f.done && f.committedPrefix === 0 && f.old === undefined && /No such file/.test(got.err), `${when}: ${f.path} (in flight) absent is fine only if never closed: ${got.err}`);
        continue;
      }
      if (f.done) t.equal(sha256(got.data), sha256(f.data), `${when}: ${f.path} finished before the kill: byte-identical`);
      else if (f.old && got.data.equals(f.old)) t.pass(`${when}: ${f.path} (overwrite in flight) kept its previous version`);
      else {
        const why = explainable(got.data, f.data, f.committedPrefix);
        t.equal(why, null, `${when}: ${f.path} (in flight, ${got.data.length}/${f.data.length} bytes shown, ${f.committedPrefix} closed): only written bytes or zeros`);
      }
      // What the store shows now is its state from here on.
      committed.set(f.path, sha256(got.data));
      contents.set(f.path, got.data);
    }
    inflight = [];
    if (round === CLIENT_ROUNDS) {
      // Last restart: sync resumes, the server converges.
      const sync = await envx.coffer(['sync', '--wait', '--timeout', '120'], { COFFER_DATA_DIR: dataDir });
      t.equal(sync.code, 0, `sync resumes after the crashes and completes: ${sync.stderr.slice(-500)}`);
      t.notMatch(m.output(), /"level":(50|60)/, `no error logged by the restarted mount: ${m.output().slice(-1500)}`);
      const mine = await treeHashes(m.mnt);
      await m.stop();
      const fresh = await mountWorkspace(t, envx, { dataDir: join(envx.root, 'fresh') });
      const theirs = await treeHashes(fresh.mnt);
      t.ok(mine.ok && theirs.ok, 'both trees read');
      t.same([...theirs.files.entries()].sort(), [...mine.files.entries()].sort(), `a fresh local store shows exactly the crashed device's tree (${mine.files.size} files)`);
      for (const [path, h] of committed) t.equal(theirs.files.get(path), h, `on the server: ${path}`);
      // Nothing else: a crash must not leave extra entries (e.g. a conflicting copy of our own upload).
      t.same([...mine.files.keys()].sort(), [...committed.keys()].sort(), 'the tree holds exactly the files written, nothing more');
      await fresh.stop();
      break;
    }

    // Closed (and some fsynced) files: the batch the sync engine starts uploading.
    const batch = r.range(2, SOAK ? 8 : 5);
    for (let i = 0; i < batch; i++) {
      const overwrite = committed.size > 0 && r.float() < 0.3;
      const path = overwrite ? r.pick([...committed.keys()]) : `r${round}-f${i}`;
      const data = r.bytes(r.pick([r.range(1, 50_000), r.range(300_000, 1_200_000), r.range(1_500_000, 3_000_000)]));
      const from = await put(data);
      const fsync = r.float() < 0.5;
      const w = await timed(fsync ? `dd if=${shq(from)} of=${shq(join(m.mnt, path))} bs=128k conv=fsync status=none` : `cp ${shq(from)} ${shq(join(m.mnt, path))}`, 60);
      t.equal(w.code, 0, `round ${round}: write ${path}${fsync ? ' + fsync' : ''}: ${w.stderr}`);
      committed.set(path, sha256(data));
      contents.set(path, data);
    }
    // In flight at the kill: (a) a file closed chunk by chunk (each close commits a prefix),
    // (b) a file written through one descriptor, (c) an overwrite of a committed file.
    const progress = join(scratch, `progress-${round}`);
    const aData = r.bytes(r.range(8, 40) * CHUNK + r.range(0, CHUNK - 1));
    const aSrc = await put(aData);
    const aPath = `r${round}-chunks`;
    const chunks = Math.ceil(aData.length / CHUNK);
    const bData = r.bytes(r.range(1, 12) * 1024 * 1024 + r.range(0, 99999));
    const bSrc = await put(bData);
    const bPath = `r${round}-stream`;
    const cPath = committed.size > 0 ? r.pick([...committed.keys()].filter((p) => contents.has(p))) : undefined;
    const cData = r.bytes(r.range(100_000, 2_000_000));
    const cSrc = await put(cData);
    const markers = { b: join(scratch, `b-done-${round}`), c: join(scratch, `c-done-${round}`) };
    const bg = [
      timed(
        `for ((i=0;i<${chunks};i++)); do dd if=${shq(aSrc)} of=${shq(join(m.mnt, aPath))} bs=${CHUNK} skip=$i seek=$i count=1 conv=notrunc status=none || exit 1; echo $i >> ${shq(progress)}; done`,
        120,
      ),
      timed(`{ for ((i=0;i<${Math.ceil(bData.length / 65536)};i++)); do dd if=${shq(bSrc)} bs=65536 skip=$i count=1 status=none; sleep 0.005; done; } > ${shq(join(m.mnt, bPath))} && touch ${shq(markers.b)}`, 120),
      cPath ? timed(`sleep 0.${r.range(0, 5)}; cp ${shq(cSrc)} ${shq(join(m.mnt, cPath))} && touch ${shq(markers.c)}`, 120) : Promise.resolve(null),
    ];
    const delay = r.range(50, SOAK ? 2500 : 1500);
    await new Promise((res) => setTimeout(res, delay));
    // The lower bounds of what is committed, read just before the kill.
    const closedChunks = existsSync(progress) ? readFileSync(progress, 'utf8').split('\n').filter(Boolean).length : 0;
    const bDone = existsSync(markers.b);
    const cDone = existsSync(markers.c);
    await m.kill9();
    await Promise.all(bg);
    t.comment(`round ${round}: killed after ${delay} ms (${closedChunks}/${chunks} chunks closed, stream ${bDone ? 'done' : 'in flight'}, overwrite ${cPath ? (cDone ? 'done' : 'in flight') : 'none'})`);
    await checkStore(t, dataDir, `crash ${round + 1}`);
    inflight.push({ path: aPath, data: aData, committedPrefix: Math.min(aData.length, closedChunks * CHUNK), done: closedChunks === chunks });
    inflight.push({ path: bPath, data: bData, committedPrefix: bDone ? bData.length : 0, done: bDone });
    if (cPath) {
      committed.delete(cPath);
      inflight.push({ path: cPath, data: cData, old: contents.get(cPath)!, committedPrefix: cDone ? cData.length : 0, done: cDone });
    }
  }
}

async function serverCrashes(t: Test, seed: number): Promise<void> {
  reportSeedOnFailure(t, seed, 'crash-consistency (server)');
  const r = new Rng(seed ^ 0x5eed);
  const server = await startChildServer(t);
  const envx = await environmentOn(t, server, { cliTimeoutMs: 180_000 });
  const src = join(envx.root, 'src');
  await mkdir(src, { recursive: true });
  const dataDir = join(envx.root, 'store');
  const m = await mountWorkspace(t, envx, { dataDir });
  const files = new Map<string, string>();
  for (let round = 0; round < SERVER_ROUNDS; round++) {
    // A batch big enough to be uploading when the server dies.
    const count = r.range(4, 8);
    for (let i = 0; i < count; i++) {
      const data = r.bytes(r.range(500_000, 3_000_000));
      const from = join(src, `s${round}-${i}`);
      await writeFile(from, data);
      const path = `srv${round}-${i}`;
      const w = await timed(`cp ${shq(from)} ${shq(join(m.mnt, path))}`, 60);
      t.equal(w.code, 0, `write ${path}`);
      files.set(path, sha256(data));
    }
    const delay = r.range(300, 1500);
    await new Promise((res) => setTimeout(res, delay));
    await server.kill9();
    t.comment(`server round ${round}: server killed -9 ${delay} ms after the batch`);
    // The mount keeps working from its local store.
    const during = await timed(`echo during > ${shq(join(m.mnt, `during${round}.txt`))} && cat ${shq(join(m.mnt, `srv${round}-0`))} | sha256sum`, 30);
    t.equal(during.code, 0, `the mount works while the server is dead: ${during.stderr}`);
    t.equal(during.stdout.slice(0, 64), files.get(`srv${round}-0`), 'and reads what it wrote');
    files.set(`during${round}.txt`, sha256('during\n'));
    await new Promise((res) => setTimeout(res, r.range(200, 1500)));
    await server.restart();
  }
  const sync = await envx.coffer(['sync', '--wait', '--timeout', '120'], { COFFER_DATA_DIR: dataDir });
  t.equal(sync.code, 0, `the client retried and completed after the server restarts: ${sync.stderr.slice(-500)}`);
  await m.stop();
  const fresh = await mountWorkspace(t, envx, { dataDir: join(envx.root, 'fresh') });
  const theirs = await treeHashes(fresh.mnt);
  t.same([...theirs.files.entries()].sort(), [...files.entries()].sort(), `a fresh local store reads every file byte-identical from the restarted server (${files.size} files)`);
  await fresh.stop();
}

for (const seed of faultSeeds(777)) {
  t.test(`client killed -9 during writes and sync (seed ${seed})`, (t) => clientCrashes(t, seed));
  t.test(`server killed -9 mid-upload (seed ${seed})`, (t) => serverCrashes(t, seed));
}
