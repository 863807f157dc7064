/**
 * Randomized convergence (issue 5 acceptance): one user, three devices (the bootstrap device and two
 * enrolled through the real invitation flow), each with its own COFFER_DATA_DIR and a real
 * `coffer mount`. The three devices run seeded random operations at the same time (interleaved async
 * loops, each on its own mount) on a small namespace, with the server stopped from a third to two
 * thirds of the operations (≈3 s) so that edits pile up offline. Then they quiesce (`coffer sync --wait` per device, then
 * polling until the three trees are identical and stay so), and the converged tree is checked.
 *
 * COFFER_CONVERGENCE_SEED=<n|0x…> (default: random, printed in every assertion message);
 * COFFER_CONVERGENCE_OPS=<operations per device> (default 200);
 * COFFER_CONVERGENCE_OFFLINE=0 keeps the server up the whole time.
 * Operation sequences are a function of the seed (per device); how they interleave with each other
 * and with sync is not (real processes, real time), so a seed does not replay a failure exactly.
 * On a failure, test-artifacts/convergence-<seed>-<time>.txt holds the operation log, the server's
 * version history of the paths involved and the mount logs (COFFER_TEST_LOG=info adds the merges).
 *
 * Namespace: top folders alpha, beta, gamma (created and synced before the run), each with a
 * sub-folder `sub` that any device may mkdir at any time (concurrent mkdirs give conflicting folders).
 * - Shared names s0.txt … s5 in the top folders and in `sub`: every device creates/overwrites
 *   (O_TRUNC) and appends (O_APPEND, never creating) them. They are never deleted or renamed: these
 *   are where concurrent edits conflict.
 * - Private names d<k>-p0.txt, d<k>-p1.txt, d<k>-p2 in the top folders: only device k writes,
 *   appends, renames (across folders, also over one of its own files) and deletes them.
 * Every write is one record `<W|A>|dev<k>-op<i>-<random>|<padding>\n` (padding derived from the
 * token; 0 B … 1.2 MiB, so some files span several 512 KiB blocks): every byte traces back to one
 * operation.
 *
 * The invariant asserted (after quiescence):
 * 1. The three trees are identical: same folders, same files, same bytes.
 * 2. No mixed content: every file is a sequence of complete records, each exactly as some operation
 *    wrote it; a whole-file write (W) only as the first record (appends only after it; an empty
 *    file or one starting with an append is possible, because O_TRUNC and the write after it are
 *    two steps and sync may take the state between them); no record twice; the records of one
 *    device in their operation order.
 * 3. Shared names: a successful write or append T on path p must be in some file of the tree (its
 *    own file or a conflict copy, anywhere: copies of a conflicting `sub` folder included), UNLESS
 *    an overwrite of p (by any device, successful or not) started after T started — that overwrite
 *    may have seen T and legitimately replaced it. Concurrent writes that no later overwrite
 *    covers must all survive: that is "an edit is never lost".
 * 4. Private names: only their device touches them, so its own bookkeeping is exact: for each
 *    device, the files of the tree named d<k>-p* (conflict copies included) are exactly the paths
 *    and contents its operations left (renames followed, deletes gone, nothing resurrected).
 */
import { constants as fsc } from 'node:fs';
import * as fsp from 'node:fs/promises';
import { join, resolve } from 'node:path';
import t from 'tap';
import { entryHistory, openRemoteView } from '../../src/client/history.js';
import { enrollDevice } from '../helpers/enroll.js';
import { mountWorkspace, setupEnvironment, sh, type Environment, type MountedWorkspace } from '../helpers/mount.js';
import { mulberry32 } from '../helpers/prng.js';


function parseSeed(text: string): number {
  const n = text.startsWith('0x') ? parseInt(text.slice(2), 16) : Number(text);
  if (!Number.isFinite(n)) throw new Error(`COFFER_CONVERGENCE_SEED: not a number: ${text}`);
  return n >>> 0;
}

const SEED = process.env.COFFER_CONVERGENCE_SEED ? parseSeed(process.env.COFFER_CONVERGENCE_SEED) : (Math.random() * 2 ** 32) >>> 0;
const OPS = Number(process.env.COFFER_CONVERGENCE_OPS ?? '200');
if (!Number.isSafeInteger(OPS) || OPS < 1) throw new Error(`COFFER_CONVERGENCE_OPS: not a positive integer: ${process.env.COFFER_CONVERGENCE_OPS}`);
const OFFLINE = process.env.COFFER_CONVERGENCE_OFFLINE !== '0';
const DEVICES = 3;
const TAG = `seed ${SEED} (COFFER_CONVERGENCE_SEED=${SEED} COFFER_CONVERGENCE_OPS=${OPS})`;

const TOPS = ['alpha', 'beta', 'gamma'];
const SHARED_FOLDERS = [...TOPS, ...TOPS.map((f) => `${f}/sub`)];
const SHARED_NAMES = ['s0.txt', 's1.txt', 's2.txt', 's3.txt', 's4.md', 's5'];
const privateNames = (k: number) => [`d${k}-p0.txt`, `d${k}-p1.txt`, `d${k}-p2`];
const CONFLICT = / \(conflict [0-9a-f]{8} \d{4}-\d\d-\d\d \d\d-\d\d(?: \d+)?\)/;

type Kind = 'write' | 'append' | 'mkdir' | 'pwrite' | 'pappend' | 'prename' | 'punlink';

interface OpRecord {
  dev: number;
  i: number;
  kind: Kind;
  path: string;
  to?: string;
  token?: string;
  start: number;
  end: number;
  ok: boolean;
  err?: string;
}

interface Written {
  text: string;
  dev: number;
  i: number;
  kind: 'W' | 'A';
}

/** Epoch milliseconds with sub-millisecond precision (comparable with the mounts' log times). */
const now = () => performance.timeOrigin + performance.now();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/** Every record any device wrote, by token. */
const written = new Map<string, Written>();
const log: OpRecord[] = [];

function makeRecord(r: () => number, dev: number, i: number, kind: 'W' | 'A'): { token: string; text: string } {
  const token = `dev${dev}-op${i}-${r().toString(16).padStart(8, '0')}`;
  const roll = r() % 100;
  const pad = roll < 85 ? r() % 300 : roll < 95 ? 1000 + (r() % 19_000) : 520_000 + (r() % 680_000);
  const unit = `${token}.`;
  const text = `${kind}|${token}|${unit.repeat(Math.ceil(pad / unit.length)).slice(0, pad)}\n`;
  written.set(token, { text, dev, i, kind });
  return { token, text };
}

async function appendNoCreate(path: string, text: string): Promise<void> {
  const fh = await fsp.open(path, fsc.O_WRONLY | fsc.O_APPEND);
  try {
    await fh.writeFile(text);
  } finally {
    await fh.close();
  }
}

interface Device {
  k: number;
  env: Environment;
  mount: MountedWorkspace;
  deviceId: string;
  /** Private files of this device: path -> exact content. */
  model: Map<string, string>;
  done: number;
}

/** One device's operation loop: `OPS` operations, one at a time, with short random pauses. */
async function runDevice(d: Device, progress: () => void): Promise<void> {
  const r = mulberry32((SEED ^ Math.imul(d.k + 1, 0x9e3779b9)) >>> 0);
  const pick = <T>(xs: readonly T[]): T => xs[r() % xs.length]!;
  const abs = (p: string) => join(d.mount.mnt, p);
  for (let i = 0; i < OPS; i++) {
    const roll = r() % 100;
    let kind: Kind = roll < 30 ? 'write' : roll < 50 ? 'append' : roll < 55 ? 'mkdir' : roll < 70 ? 'pwrite' : roll < 80 ? 'pappend' : roll < 91 ? 'prename' : 'punlink';
    const own = [...d.model.keys()].sort();
    if ((kind === 'pappend' || kind === 'prename' || kind === 'punlink') && own.length === 0) kind = 'pwrite';
    const rec: OpRecord = { dev: d.k, i, kind, path: '', start: 0, end: 0, ok: false };
    let action: () => Promise<void>;
    let onSuccess = () => {};
    switch (kind) {
      case 'write':
      case 'append': {
        rec.path = `${r() % 10 < 7 ? pick(TOPS) : `${pick(TOPS)}/sub`}/${pick(SHARED_NAMES)}`;
        const { token, text } = makeRecord(r, d.k, i, kind === 'write' ? 'W' : 'A');
        rec.token = token;
        action = kind === 'write' ? () => fsp.writeFile(abs(rec.path), text) : () => appendNoCreate(abs(rec.path), text);
        break;
      }
      case 'mkdir':
        rec.path = `${pick(TOPS)}/sub`;
        action = () => fsp.mkdir(abs(rec.path));
        break;
      case 'pwrite': {
        rec.path = `${pick(TOPS)}/${pick(privateNames(d.k))}`;
        const { token, text } = makeRecord(r, d.k, i, 'W');
        rec.token = token;
        action = () => fsp.writeFile(abs(rec.path), text);
        onSuccess = () => d.model.set(rec.path, text);
        break;
      }
      case 'pappend': {
        rec.path = pick(own);
        const { token, text } = makeRecord(r, d.k, i, 'A');
        rec.token = token;
        action = () => appendNoCreate(abs(rec.path), text);
        onSuccess = () => d.model.set(rec.path, d.model.get(rec.path)! + text);
        break;
      }
      case 'prename': {
        rec.path = pick(own);
        const to = `${pick(TOPS)}/${pick(privateNames(d.k))}`;
        rec.to = to;
        action = () => fsp.rename(abs(rec.path), abs(to));
        onSuccess = () => {
          const content = d.model.get(rec.path)!;
          d.model.delete(rec.path);
          d.model.set(to, content);
        };
        break;
      }
      case 'punlink':
        rec.path = pick(own);
        action = () => fsp.unlink(abs(rec.path));
        onSuccess = () => d.model.delete(rec.path);
        break;
    }
    rec.start = now();
    try {
      await action();
      rec.ok = true;
      onSuccess();
    } catch (err) {
      rec.err = (err as NodeJS.ErrnoException).code ?? String(err);
    }
    rec.end = now();
    log.push(rec);
    d.done++;
    progress();
    await sleep(r() % 60);
  }
}

/** Folders and files (with SHA-256) of a mount, as text; equal texts mean identical trees. */
async function snapshot(mnt: string): Promise<string> {
  const r = await sh(`cd ${q(mnt)} && { find . -mindepth 1 -type d -printf 'dir %P\\n' | LC_ALL=C sort; find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum; }`);
  return r.code === 0 ? r.stdout : `(snapshot failed, exit ${r.code}: ${r.stderr})`;
}

async function readTree(root: string, rel = ''): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const e of await fsp.readdir(join(root, rel), { withFileTypes: true })) {
    const p = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory()) for (const [k, v] of await readTree(root, p)) out.set(k, v);
    else out.set(p, await fsp.readFile(join(root, p), 'utf8'));
  }
  return out;
}

/** The problems of one file's content (invariant 2), and the tokens it holds. */
function checkContent(content: string): { tokens: string[]; problems: string[] } {
  const tokens: string[] = [];
  const problems: string[] = [];
  if (content === '') return { tokens, problems };
  if (!content.endsWith('\n')) problems.push(`does not end with a complete record (…${JSON.stringify(content.slice(-60))})`);
  const lines = content.split('\n');
  lines.pop();
  const lastOfDevice = new Map<number, number>();
  let offset = 0;
  for (const [n, line] of lines.entries()) {
    const token = line.split('|')[1] ?? '';
    const w = written.get(token);
    if (!w || w.text !== `${line}\n`) {
      problems.push(`record ${n} at byte ${offset} is not one write's bytes (${line.length} B: ${JSON.stringify(line.slice(0, 60))}…)`);
    } else {
      if (w.kind === 'W' && n > 0) problems.push(`whole-file write ${token} is record ${n}, after other records`);
      if (tokens.includes(token)) problems.push(`record ${token} appears twice`);
      const last = lastOfDevice.get(w.dev);
      if (last !== undefined && last >= w.i) problems.push(`records of dev${w.dev} out of order (op ${w.i} after op ${last})`);
      lastOfDevice.set(w.dev, w.i);
      tokens.push(token);
    }
    offset += line.length + 1;
  }
  return { tokens, problems };
}

function describeOps(path: string): string {
  return log
    .filter((o) => o.path === path || o.to === path)
    .sort((a, b) => a.start - b.start)
    .map((o) => `  ${o.start.toFixed(1)}-${o.end.toFixed(1)} dev${o.dev} op${o.i} ${o.kind} ${o.path}${o.to ? ` -> ${o.to}` : ''} ${o.ok ? 'ok' : o.err}${o.token ? ` ${o.token}` : ''}`)
    .join('\n');
}

t.test(`three devices, random concurrent operations, then quiesce: identical trees, no write lost (${TAG})`, async (t) => {
  t.comment(`convergence: ${TAG}, server outage ${OFFLINE ? 'from 1/3 to 2/3 of the operations' : 'off'}`);
  const t0 = Date.now();
  const envx = await setupEnvironment(t);
  const envs: (Environment & { deviceId: string })[] = [{ ...envx, deviceId: envx.org.device.deviceId }];
  for (const name of ['second', 'third']) envs.push(await enrollDevice(envx, name));
  const devices: Device[] = [];
  for (const [k, env] of envs.entries()) devices.push({ k: k + 1, env, mount: await mountWorkspace(t, env), deviceId: env.deviceId, model: new Map(), done: 0 });
  t.comment(`devices: ${devices.map((d) => `dev${d.k}=${d.deviceId.slice(0, 8)}`).join(' ')}`);

  // The top folders exist everywhere before the run (private files live in them).
  const first = devices[0]!;
  for (const f of TOPS) await fsp.mkdir(join(first.mount.mnt, f));
  const deadline0 = Date.now() + 30_000;
  while (Date.now() < deadline0) {
    const seen = await Promise.all(devices.map((d) => sh(`cd ${q(d.mount.mnt)} && ls -d ${TOPS.join(' ')} 2>/dev/null | wc -l`)));
    if (seen.every((s) => s.stdout.trim() === String(TOPS.length))) break;
    await sleep(200);
  }
  for (const d of devices) for (const f of TOPS) t.ok((await fsp.stat(join(d.mount.mnt, f))).isDirectory(), `dev${d.k} has ${f} before the run (${TAG})`);

  // The run: three loops at once; the server is down from a third to two thirds of the work.
  const total = DEVICES * OPS;
  let completed = 0;
  const waiters: { at: number; res: () => void }[] = [];
  const reach = (at: number) => new Promise<void>((res) => (completed >= at ? res() : waiters.push({ at, res })));
  const progress = () => {
    completed++;
    for (const w of waiters) if (completed >= w.at) w.res();
  };
  const tRun = Date.now();
  const loops = Promise.all(devices.map((d) => runDevice(d, progress)));
  let offlineNote = 'server up throughout';
  const outage = (async () => {
    if (!OFFLINE) return;
    await Promise.race([reach(Math.ceil(total / 3)), loops]);
    if (completed >= total) return;
    const down = { op: completed, ms: Date.now() };
    await envx.server.close();
    await Promise.race([reach(Math.ceil((2 * total) / 3)), loops]);
    const up = completed;
    await envx.server.restart();
    offlineNote = `server down from op ${down.op} to op ${up} of ${total} (${Date.now() - down.ms} ms)`;
  })();
  await Promise.all([loops, outage]);
  const runMs = Date.now() - tRun;

  const outcomes = new Map<string, number>();
  for (const o of log) outcomes.set(`${o.kind}:${o.ok ? 'ok' : o.err}`, (outcomes.get(`${o.kind}:${o.ok ? 'ok' : o.err}`) ?? 0) + 1);
  t.comment(`run: ${runMs} ms, ${offlineNote}; outcomes ${[...outcomes].sort().map(([k, v]) => `${k}=${v}`).join(' ')}`);
  // Shared names may fail for ordinary reasons (append to a missing file, `sub` not there yet or there
  // already; while offline, an entry another device created and this one never fetched, or a block
  // never fetched: EHOSTUNREACH); private names are this device's alone, always cached: never fail.
  // A create (O_CREAT without O_EXCL) that races another device's file of that name arriving between
  // the kernel's lookup and FUSE create opens that file (libfuse3 passes the open flags); only the
  // fuse-native fallback, which does not, answers EEXIST: an error, never a lost write.
  const allowed: Record<string, string[]> = { write: ['ENOENT', 'EHOSTUNREACH', ...(process.env.COFFER_FUSE_TRANSPORT === 'fuse-native' ? ['EEXIST'] : [])], append: ['ENOENT', 'EHOSTUNREACH'], mkdir: ['EEXIST', 'EHOSTUNREACH'] };
  const unexpected = log.filter((o) => !o.ok && !(allowed[o.kind] ?? []).includes(o.err ?? ''));
  t.same(unexpected.map((o) => `dev${o.dev} op${o.i} ${o.kind} ${o.path}${o.to ? ` -> ${o.to}` : ''}: ${o.err}`), [], `no operation failed unexpectedly (${TAG})`);

  // Quiesce: everything uploaded from each device, then the three trees identical and stable.
  const tQuiet = Date.now();
  for (const d of devices) {
    const r = await d.env.coffer(['sync', 'Docs', '--wait', '--timeout', '60']);
    t.equal(r.code, 0, `dev${d.k}: coffer sync --wait (${TAG})${r.code === 0 ? '' : `: ${r.stderr}`}`);
  }
  let snaps: string[] = [];
  let converged = false;
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline && !converged) {
    snaps = await Promise.all(devices.map((d) => snapshot(d.mount.mnt)));
    if (snaps.every((s) => s === snaps[0]) && !snaps[0]!.includes('.fuse_hidden') && !snaps[0]!.startsWith('(snapshot failed')) {
      await sleep(2500); // longer than a poll period: nothing is still on its way
      const again = await Promise.all(devices.map((d) => snapshot(d.mount.mnt)));
      converged = again.every((s) => s === snaps[0]);
      snaps = again;
    } else await sleep(500);
  }
  const quietMs = Date.now() - tQuiet;
  if (!converged) {
    const lines = snaps.map((s) => new Set(s.split('\n')));
    const diffs = devices.map((d, n) => `dev${d.k} only: ${[...lines[n]!].filter((l) => devices.some((_, m) => m !== n && !lines[m]!.has(l))).join(' | ')}`);
    t.fail(`the three trees are identical after quiescence (${TAG}):\n${diffs.join('\n')}`);
  } else t.pass(`the three trees are identical after quiescence (${TAG})`);

  // The converged tree, read on device 1.
  const tree = await readTree(first.mount.mnt);
  const inTree = new Set<string>();
  /** Paths whose server history goes into the forensics file on a failure. */
  const suspects = new Set<string>();
  const mixed: string[] = [];
  const badNames: string[] = [];
  let copies = 0;
  for (const [path, content] of tree) {
    const { tokens, problems } = checkContent(content);
    for (const tok of tokens) inTree.add(tok);
    for (const p of problems) mixed.push(`${path}: ${p}`);
    if (problems.length) suspects.add(path);
    const parts = path.split('/');
    const base = parts.at(-1)!;
    if (CONFLICT.test(base)) copies++;
    const folderOk = TOPS.includes(parts[0]!) && (parts.length === 2 || (parts.length === 3 && (parts[1] === 'sub' || /^sub \(conflict /.test(parts[1]!))));
    const nameOk = SHARED_NAMES.includes(base) || /^d\d-p\d(\.txt)?$/.test(base) || CONFLICT.test(base);
    if (!folderOk || !nameOk) badNames.push(path);
  }
  t.same(badNames, [], `every file of the tree is a namespace name or a conflict copy (${TAG})`);
  t.same(mixed, [], `no file mixes writes: complete records, whole-file writes first, each device's in order (${TAG})`);

  // Invariant 3: shared names.
  const lost: string[] = [];
  let required = 0;
  for (const o of log) {
    if (!o.ok || !o.token || (o.kind !== 'write' && o.kind !== 'append')) continue;
    const replaced = log.some((x) => x.kind === 'write' && x.path === o.path && x.start > o.start);
    if (replaced) continue;
    required++;
    if (!inTree.has(o.token)) suspects.add(o.path);
    if (!inTree.has(o.token)) lost.push(`${o.token} (${o.kind} of ${o.path}); operations on that path:\n${describeOps(o.path)}`);
  }
  t.same(lost, [], `every shared write not overwritten later is in its file or a conflict copy: ${required} checked (${TAG})`);

  // Invariant 4: private names, exactly as each device left them.
  for (const d of devices) {
    const actual = new Map([...tree].filter(([p]) => p.split('/').at(-1)!.startsWith(`d${d.k}-p`)));
    const differ = [...new Set([...actual.keys(), ...d.model.keys()])].filter((p) => actual.get(p) !== d.model.get(p)).sort();
    const describe = (c: string | undefined) => (c === undefined ? 'absent' : `${c.length} B [${checkContent(c).tokens.join(', ')}]`);
    for (const p of differ) suspects.add(p);
    t.same(
      differ.map((p) => `${p}: ${describe(actual.get(p))}`),
      differ.map((p) => `${p}: ${describe(d.model.get(p))}`),
      `dev${d.k}'s private files are exactly what its operations left (${d.model.size} files) (${TAG})${differ.map((p) => `\n${p}:\n${describeOps(p)}`).join('')}`,
    );
  }
  if (OFFLINE && OPS >= 100) t.ok(copies > 0, `the run produced conflicts (${copies} conflict copies) (${TAG})`);
  t.comment(`converged tree: ${tree.size} files, ${copies} conflict copies, ${inTree.size} distinct records; quiescence ${quietMs} ms; total ${Date.now() - t0} ms`);
  if (!t.passing()) t.comment(`forensics (operation log, server history of the paths involved, mount logs): ${await forensics(envx, devices, [...suspects])}`);
});

/** On a failure: everything needed to understand it, in test-artifacts/. */
async function forensics(envx: Environment, devices: Device[], paths: string[]): Promise<string> {
  const out: string[] = [`convergence failure, ${TAG}`, devices.map((d) => `dev${d.k}=${d.deviceId}`).join(' '), ''];
  const view = await openRemoteView(envx.org.device, join(envx.root, 'forensics'), 'Docs');
  try {
    for (const p of paths) {
      const parts = p.split('/');
      const name = parts.pop()!;
      out.push(`== ${p}: operations\n${describeOps(p)}`);
      try {
        for (const v of await entryHistory(view, `/${parts.join('/')}`)) {
          const m = v.manifest;
          const bound = m.type === 'folder' || m.type === 'workspace' ? (m.children[name] ?? '-') : '?';
          out.push(`  folder /${parts.join('/')} v${v.version} by ${v.author.slice(0, 8)} at ${v.createdAt}: ${name} -> ${bound}`);
        }
        const entry = await entryHistory(view, `/${p}`).catch(() => []);
        for (const v of entry) {
          const m = v.manifest;
          out.push(`  entry ${m.id} v${v.version} by ${v.author.slice(0, 8)} at ${v.createdAt}: parent ${'parent' in m ? m.parent : '-'} size ${'size' in m ? m.size : '-'}`);
        }
      } catch (err) {
        out.push(`  (history: ${(err as Error).message})`);
      }
    }
  } finally {
    await view.close();
  }
  out.push('', '== operations', ...[...log].sort((a, b) => a.start - b.start).map((o) => `${o.start.toFixed(1)}-${o.end.toFixed(1)} dev${o.dev} op${o.i} ${o.kind} ${o.path}${o.to ? ` -> ${o.to}` : ''} ${o.ok ? 'ok' : o.err} ${o.token ?? ''}`));
  for (const d of devices) out.push('', `== dev${d.k} mount output`, d.mount.output());
  const dir = resolve(import.meta.dirname, '../../test-artifacts');
  await fsp.mkdir(dir, { recursive: true });
  const file = join(dir, `convergence-${SEED}-${Date.now()}.txt`);
  await fsp.writeFile(file, out.join('\n'));
  return file;
}
