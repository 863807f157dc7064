/**
 * `coffer server` as a child process on an ephemeral loopback port (scale-out tests, server bench):
 * resolves once it printed the address it listens on.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { CLI } from './mount.js';

export interface ServerProcess {
  url: string;
  proc: ChildProcess;
  /** The tail of its stderr. */
  output(): string;
  /** Sends `signal` (when still running) and waits for the exit. */
  stop(signal?: NodeJS.Signals): Promise<void>;
}

/**
 * Servers still running. A test process that dies (an unhandled rejection at a top-level await
 * skips tap's teardowns) kills them as it exits: scaleout's two servers once outlived it.
 */
const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const proc of running) proc.kill('SIGKILL');
});

export async function startServerProcess(name: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<ServerProcess> {
  const proc = spawn(process.execPath, [CLI, 'server', '--host', '127.0.0.1', '--port', '0', ...args], {
    env: { ...process.env, COFFER_LOG_LEVEL: process.env.COFFER_TEST_LOG ?? 'warn', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.add(proc);
  proc.once('exit', () => running.delete(proc));
  let err = '';
  proc.stderr!.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-20_000)));
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  const url = await new Promise<string>((resolveUrl, reject) => {
    let stdout = '';
    proc.stdout!.on('data', (d: Buffer) => {
      stdout += d.toString();
      const m = /listening on (http:\/\/\S+)/.exec(stdout);
      if (m) resolveUrl(m[1]!);
    });
    proc.once('exit', (code) => reject(new Error(`coffer server ${name} exited ${code}: ${stdout}${err}`)));
  });
  return {
    url,
    proc,
    output: () => err,
    stop: async (signal = 'SIGTERM') => {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill(signal);
      await exited;
    },
  };
}
