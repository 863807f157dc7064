/**
 * A real `coffer mount` process (the built CLI) on a real FUSE mount, against a real test server,
 * for end-to-end tests with ordinary shell tools.
 *
 * The FUSE transport is the CLI's choice (libfuse3 when its addon is built, else fuse-native);
 * COFFER_FUSE_TRANSPORT=libfuse3|fuse-native in the test's environment forces one for every mount
 * (the suites run once per transport that way), `transport` forces it for one mount.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import type { Test } from 'tap';
import { bootstrapClientOrg, newWorkspace, type TestOrg } from './client.js';
import { startTestServer, type TestServer } from './server.js';

export const CLI = resolve(import.meta.dirname, '../../dist/cli/main.js');
const run = promisify(execFile);

export interface ShellResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a bash command (never throws: the exit code is in the result). */
export async function sh(cmd: string, opts: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<ShellResult> {
  try {
    const r = await run('bash', ['-c', cmd], { cwd: opts.cwd, env: opts.env ?? process.env, timeout: opts.timeoutMs ?? 120_000, maxBuffer: 64 * 1024 * 1024 });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (err) {
    const e = err as { code?: number | string; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : 1, stdout: e.stdout ?? '', stderr: e.stderr ?? String(err) };
  }
}

export interface Environment {
  server: TestServer;
  org: TestOrg;
  root: string;
  env: NodeJS.ProcessEnv;
  /** Runs the CLI with this environment. */
  coffer(args: string[], extraEnv?: NodeJS.ProcessEnv): Promise<ShellResult>;
}

export interface EnvironmentOptions {
  workspace?: string;
  /** The server URL the device is enrolled with (a proxy in front of `server`); default: server.url. */
  deviceUrl?: string;
  /** Where config, data and device files go; default: a new temporary directory. */
  root?: string;
  cliTimeoutMs?: number;
}

/** A test server of its own, an organization with one device and a workspace; all removed at teardown. */
export async function setupEnvironment(t: Test, workspace = 'Docs'): Promise<Environment> {
  const server = await startTestServer();
  t.teardown(() => server.destroy());
  return environmentOn(t, server, { workspace });
}

/**
 * An organization with one device and a workspace on an existing server (which the caller stops),
 * possibly reached through a proxy (`deviceUrl`). The root directory is removed at teardown.
 */
export async function environmentOn(t: Test, server: TestServer, opts: EnvironmentOptions = {}): Promise<Environment & { realmId: string }> {
  const root = opts.root ?? (await mkdtemp(join(tmpdir(), 'coffer-e2e-')));
  await mkdir(root, { recursive: true });
  const org = await bootstrapClientOrg({ ...server, url: opts.deviceUrl ?? server.url }, `org${Date.now().toString(36)}${randomBytes(2).toString('hex')}`, root);
  const realmId = await newWorkspace(org.device, opts.workspace ?? 'Docs');
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    COFFER_CONFIG_DIR: join(root, 'config'),
    COFFER_DATA_DIR: join(root, 'data'),
    COFFER_DEVICE_FILE: org.deviceFile,
    COFFER_PASSWORD: org.password,
    COFFER_LOG_LEVEL: process.env.COFFER_TEST_LOG ?? 'warn',
  };
  t.teardown(() => rm(root, { recursive: true, force: true }));
  return {
    server,
    org,
    root,
    env,
    realmId,
    coffer: async (args, extraEnv = {}) => {
      try {
        const r = await run(process.execPath, [CLI, ...args], { env: { ...env, ...extraEnv }, timeout: opts.cliTimeoutMs ?? 120_000, maxBuffer: 16 * 1024 * 1024 });
        return { code: 0, stdout: r.stdout, stderr: r.stderr };
      } catch (err) {
        const e = err as { code?: number; stdout?: string; stderr?: string };
        return { code: typeof e.code === 'number' ? e.code : 1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
      }
    },
  };
}

export interface MountedWorkspace {
  mnt: string;
  proc: ChildProcess;
  output: () => string;
  /** SIGTERM and wait for a clean exit. */
  stop(): Promise<void>;
  /** SIGKILL (a crash), then clear the dead FUSE mount. */
  kill9(): Promise<void>;
}

async function isMounted(path: string): Promise<boolean> {
  return (await sh(`mountpoint -q ${JSON.stringify(path)}`)).code === 0;
}

export async function mountWorkspace(
  t: Test,
  envx: Environment,
  opts: { workspace?: string; mnt?: string; dataDir?: string; args?: string[]; transport?: 'libfuse3' | 'fuse-native' } = {},
): Promise<MountedWorkspace> {
  const mnt = opts.mnt ?? join(envx.root, `mnt-${Math.random().toString(36).slice(2, 8)}`);
  await mkdir(mnt, { recursive: true });
  const env = {
    ...envx.env,
    ...(opts.dataDir ? { COFFER_DATA_DIR: opts.dataDir } : {}),
    ...(opts.transport ? { COFFER_FUSE_TRANSPORT: opts.transport } : {}),
  };
  const proc = spawn(process.execPath, [CLI, 'mount', opts.workspace ?? 'Docs', mnt, ...(opts.args ?? [])], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<void>((res) => proc.once('exit', () => res()));
  for (let i = 0; i < 200 && !(await isMounted(mnt)); i++) {
    if (proc.exitCode !== null) throw new Error(`coffer mount exited ${proc.exitCode}: ${out}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  if (!(await isMounted(mnt))) throw new Error(`mount did not appear: ${out}`);
  const m: MountedWorkspace = {
    mnt,
    proc,
    output: () => out,
    async stop() {
      if (proc.exitCode === null) {
        proc.kill('SIGTERM');
        await exited;
      }
    },
    async kill9() {
      if (proc.exitCode === null) {
        proc.kill('SIGKILL');
        await exited;
      }
      await sh(`fusermount -uz ${JSON.stringify(mnt)} 2>/dev/null || umount -l ${JSON.stringify(mnt)} 2>/dev/null; true`);
    },
  };
  t.teardown(async () => {
    await m.stop();
    // A mount whose process died is still in the mount table but `mountpoint` fails on it
    // (ENOTCONN): look at /proc/mounts, so that a crashed mount is cleared too.
    if ((await isMounted(mnt)) || (await sh(`grep -qF ' ${mnt} ' /proc/mounts`)).code === 0) await sh(`fusermount -uz ${JSON.stringify(mnt)}`);
  });
  return m;
}

/** The SQLite files (local stores, trust state) under a client data directory. */
export async function localStoreFiles(dataDir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (dir: string) => {
    for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
      const full = join(dir, e.name);
      if (e.isDirectory() && !e.name.endsWith('.blocks')) await walk(full);
      else if (e.isFile() && e.name.endsWith('.sqlite')) out.push(full);
    }
  };
  await walk(dataDir);
  return out;
}
