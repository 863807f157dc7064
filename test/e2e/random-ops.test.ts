/**
 * Random-operation verifier on a real `coffer mount` (see test/helpers/random-ops.ts): seeded POSIX
 * operations against the mount and an in-memory model, every read, listing, size and errno compared,
 * restarts of the mount in between, and at the end the whole tree read back through a fresh local
 * store (everything from the server).
 *
 * Default (`make test`): a fixed seed with 3,000 operations (restarting the mount twice on the way),
 * then a random seed with 1,500.
 * COFFER_RANDOM_OPS=<n> and/or COFFER_RANDOM_SEED=<seed> (decimal or 0x…): one run with that count
 * (default 3,000) and seed (default random) — `make soak` runs 100,000; COFFER_RANDOM_REMOUNTS=0 leaves
 * out the restarts during the run (as the random-seed run of the default does);
 * COFFER_RANDOM_REMOUNT_EVERY=<n> restarts every n operations instead (alternating same / fresh store).
 * COFFER_RANDOM_REPLAY=<file.jsonl>: replays a logged operation list (printed on a failure).
 * COFFER_RANDOM_SHRINK_SECONDS: time for shrinking a failure (default 120; 0 disables).
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { newWorkspace } from '../helpers/client.js';
import { setupEnvironment } from '../helpers/mount.js';
import { formatLog, parseLog, runOnPlainDirectory, runRandomOps, summarize, type Op } from '../helpers/random-ops.js';

const FIXED_SEED = 0xc0ffee;

function parseSeed(text: string): number {
  const n = text.startsWith('0x') ? parseInt(text.slice(2), 16) : Number(text);
  if (!Number.isFinite(n)) throw new Error(`COFFER_RANDOM_SEED: not a number: ${text}`);
  return n >>> 0;
}

function randomSeed(): number {
  return (Math.random() * 2 ** 32) >>> 0;
}

interface Plan {
  name: string;
  seed: number;
  count: number;
  /** Restart the mount during the run (same store at 1/3, fresh store at 2/3; every 10,000 in long runs). */
  midRunRemounts: boolean;
  replayOps?: Op[];
}

const envOps = process.env.COFFER_RANDOM_OPS;
const envSeed = process.env.COFFER_RANDOM_SEED;
const envReplay = process.env.COFFER_RANDOM_REPLAY;
const shrinkSeconds = Number(process.env.COFFER_RANDOM_SHRINK_SECONDS ?? '120');

async function plans(): Promise<Plan[]> {
  if (envReplay) {
    const ops = parseLog(await readFile(envReplay, 'utf8'));
    return [{ name: `replay of ${envReplay}`, seed: 0, count: ops.length, midRunRemounts: false, replayOps: ops }];
  }
  if (envOps || envSeed) {
    const count = envOps ? Number(envOps) : 3000;
    if (!Number.isSafeInteger(count) || count < 1) throw new Error(`COFFER_RANDOM_OPS: not a positive integer: ${envOps}`);
    const seed = envSeed ? parseSeed(envSeed) : randomSeed();
    return [{ name: `${count} random operations, seed ${seed}`, seed, count, midRunRemounts: process.env.COFFER_RANDOM_REMOUNTS !== '0' }];
  }
  const seed = randomSeed();
  return [
    { name: `3000 random operations, fixed seed ${FIXED_SEED}`, seed: FIXED_SEED, count: 3000, midRunRemounts: true },
    { name: `1500 random operations, random seed ${seed}`, seed, count: 1500, midRunRemounts: false },
  ];
}

function remounts(count: number): Array<{ at: number; fresh: boolean }> {
  const every = Number(process.env.COFFER_RANDOM_REMOUNT_EVERY ?? '0');
  if (every > 0) return Array.from({ length: Math.floor((count - 1) / every) }, (_, k) => ({ at: (k + 1) * every, fresh: k % 2 === 1 }));
  if (count < 300) return [];
  if (count <= 20_000) return [
    { at: Math.floor(count / 3), fresh: false },
    { at: Math.floor((2 * count) / 3), fresh: true },
  ];
  const out: Array<{ at: number; fresh: boolean }> = [];
  for (let at = 10_000, k = 0; at < count; at += 10_000, k++) out.push({ at, fresh: k % 2 === 1 });
  return out;
}

// The reference model agrees with the kernel on a plain local directory (so that a mismatch on the
// mount below is the mount's).
t.test('the model agrees with a plain local directory', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'coffer-model-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const seed = envSeed ? parseSeed(envSeed) : FIXED_SEED;
  const r = await runOnPlainDirectory(dir, seed, 2000);
  t.equal(r.mismatch?.message ?? null, null, `seed ${seed}: 2000 operations on ${dir}: ${summarize(r.stats)}`);
  if (r.mismatch) t.comment(formatLog(r.log.slice(-30)));
});

// One server and organization for every run; each run mounts a workspace of its own (empty at its start).
t.test('random operations against a mounted workspace and a model', async (t) => {
  const envx = await setupEnvironment(t, 'Run0');
  for (const [i, plan] of (await plans()).entries()) {
    const workspace = `Run${i}`;
    if (i > 0) await newWorkspace(envx.org.device, workspace);
    await t.test(plan.name, async (t) => {
      const { stats, failed } = await runRandomOps(t, envx, {
        workspace,
        seed: plan.seed,
        count: plan.count,
        checkpointEvery: plan.count > 20_000 ? 2000 : 500,
        remounts: plan.midRunRemounts ? remounts(plan.count) : [],
        replayOps: plan.replayOps,
        shrinkSeconds,
      });
      if (!failed && !plan.replayOps && plan.count >= 1000) {
        // The generator really exercised what it is meant to (not a vacuous run).
        t.ok(stats.boundaryWrites > 0 && stats.holeWrites > 0, `writes across block boundaries (${stats.boundaryWrites}) and past EOF (${stats.holeWrites})`);
        t.ok(stats.errnos > 0, `expected errors compared (${stats.errnos})`);
        t.ok((stats.byKind.rename ?? 0) > 0 && (stats.byKind.unlink ?? 0) > 0 && (stats.byKind.rmdir ?? 0) > 0, 'namespace operations ran');
      }
    });
  }
});
