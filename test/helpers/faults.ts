/**
 * Shared pieces of the fault-injection tests (test/e2e/faults-*.test.ts, crash-consistency,
 * disk-full): seeds, seeded content, a `coffer server` child process that can be killed -9, an
 * environment whose device knows the server by any URL (a fault proxy), tmpfs mounts, tree hashes.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Test } from 'tap';
import { CLI, sh } from './mount.js';
import type { TestServer } from './server.js';


/** `make soak` sets COFFER_SOAK=1: more rounds and seeds. */
export const SOAK = process.env.COFFER_SOAK === '1' || process.env.COFFER_SOAK === 'true';

/**
 * The seeds a test runs: COFFER_FAULT_SEED replays one; otherwise `defaultSeed` (make test), or
 * COFFER_FAULT_SEEDS (default 5) consecutive seeds from it under soak.
 */
export function faultSeeds(defaultSeed: number): number[] {
  const fixed = process.env.COFFER_FAULT_SEED;
  if (fixed !== undefined && fixed !== '') return [Number(fixed) >>> 0];
  if (!SOAK) return [defaultSeed];
  const n = Number(process.env.COFFER_FAULT_SEEDS ?? 5);
  return Array.from({ length: n }, (_, i) => (defaultSeed + i * 7919) >>> 0);
}

/** Prints how to replay the seed when the test fails. */
export function reportSeedOnFailure(t: Test, seed: number, what: string): void {
  t.comment(`${what}: seed ${seed} (replay: COFFER_FAULT_SEED=${seed})`);
  t.teardown(() => {
    if (!t.passing()) console.error(`# FAILED ${what} with seed ${seed}: replay with COFFER_FAULT_SEED=${seed}`);
  });
}

export function sha256(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

/** A free loopback TCP port. */
export async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => res(port));
    });
  });
}

/** A `coffer server` child process (the built CLI): killable with -9, restartable on the same port and data. */
export interface ChildServer extends TestServer {
  proc(): ChildProcess | null;
  kill9(): Promise<void>;
  output(): string;
}

export async function startChildServer(t: Test, opts: { dataDir?: string; port?: number; env?: NodeJS.ProcessEnv } = {}): Promise<ChildServer> {
  const dataDir = opts.dataDir ?? (await mkdtemp(join(tmpdir(), 'coffer-srv-')));
  await mkdir(dataDir, { recursive: true });
  const port = opts.port ?? (await freePort());
  const adminToken = randomBytes(24).toString('hex');
  const url = `http://127.0.0.1:${port}`;
  let child: ChildProcess | null = null;
  let out = '';
  const launch = async () => {
    const p = spawn(process.execPath, [CLI, 'server', '--data', dataDir, '--port', String(port), '--admin-token', adminToken], {
      env: { ...process.env, COFFER_LOG_LEVEL: process.env.COFFER_TEST_LOG ?? 'warn', ...opts.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    p.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr!.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-200_000)));
    child = p;
    for (let i = 0; i < 600; i++) {
      if (p.exitCode !== null) throw new Error(`coffer server exited ${p.exitCode}: ${out.slice(-3000)}`);
      try {
        const r = await fetch(`${url}/v1/health`);
        if (r.ok) return;
      } catch {
        // not up yet
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`coffer server did not come up: ${out.slice(-3000)}`);
  };
  const stopChild = async (signal: NodeJS.Signals) => {
    const p = child;
    child = null;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const exited = new Promise<void>((r) => p.once('exit', () => r()));
    p.kill(signal);
    await exited;
  };
  await launch();
  const server: ChildServer = {
    url,
    dataDir,
    adminToken,
    proc: () => child,
    output: () => out,
    close: () => stopChild('SIGTERM'),
    kill9: () => stopChild('SIGKILL'),
    async restart() {
      await stopChild('SIGTERM');
      await launch();
    },
    async destroy() {
      await stopChild('SIGKILL');
      if (!opts.dataDir) await rm(dataDir, { recursive: true, force: true });
    },
    request: () => {
      throw new Error('not available on a child server');
    },
  };
  // `restart` after kill9 must launch again: expose launch through restart when no child runs.
  server.restart = async () => {
    await stopChild('SIGTERM');
    await launch();
  };
  t.teardown(() => server.destroy());
  return server;
}

/** A tmpfs of `size` (e.g. '32m') at `dir`, unmounted at teardown (lazily if busy). */
export async function mountTmpfs(t: Test, dir: string, size: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  const r = await sh(`mount -t tmpfs -o size=${size},mode=0700 coffer-test-tmpfs ${shq(dir)}`);
  if (r.code !== 0) throw new Error(`mount tmpfs: ${r.stderr}`);
  t.teardown(async () => {
    if ((await sh(`mountpoint -q ${shq(dir)}`)).code === 0) {
      const u = await sh(`umount ${shq(dir)}`);
      if (u.code !== 0) await sh(`umount -l ${shq(dir)}`);
    }
  });
}

/**
 * sha256 and size of every regular file under `dir` (relative paths), read by a child process
 * with a time limit: a hung mount shows up as a failed listing, never as a hung test.
 */
export async function treeHashes(dir: string, timeoutS = 120): Promise<{ ok: boolean; files: Map<string, string>; stderr: string }> {
  const r = await sh(`cd ${shq(dir)} && timeout -s KILL ${timeoutS} find . -type f -print0 | sort -z | timeout -s KILL ${timeoutS} xargs -0 -r sha256sum --`, { timeoutMs: (timeoutS + 10) * 1000 });
  const files = new Map<string, string>();
  for (const line of r.stdout.split('\n')) {
    const m = /^([0-9a-f]{64}) {2}\.\/(.*)$/.exec(line);
    if (m) files.set(m[2]!, m[1]!);
  }
  return { ok: r.code === 0, files, stderr: r.stderr };
}

/** Single-quotes a string for bash. */
export function shq(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** Runs a shell command under `timeout -s KILL`; `hung` when it had to be killed (exit 137). */
export async function timed(cmd: string, timeoutS: number): Promise<{ code: number; stdout: string; stderr: string; ms: number; hung: boolean }> {
  const start = Date.now();
  const r = await sh(`timeout -s KILL ${timeoutS} bash -c ${shq(cmd)}`, { timeoutMs: (timeoutS + 15) * 1000 });
  return { ...r, ms: Date.now() - start, hung: r.code === 137 };
}
