/**
 * The pipeline behind the FUSE driver, without FUSE: the workspace engine, local store, sync engine
 * and block reader driven directly, against a real server in its own process on loopback. Isolates
 * what the pipeline costs from what the kernel round trips cost (bench/fs.sh measures through a mount).
 *
 *   node --import tsx bench/engine.ts            (ENGINE_MIB=256 ENGINE_FILES=5000 by default)
 *
 * Prints: sequential write (until close), close -> fully synced, warm read (local cache, fresh
 * session), cold read (empty local store: every block from the server), and the time to create
 * files one close at a time (must grow linearly with the folder size, not quadratically).
 */
import { spawn } from 'node:child_process';
import { Session as InspectorSession } from 'node:inspector/promises';
import { writeFileSync } from 'node:fs';
import { PerformanceObserver } from 'node:perf_hooks';
import { randomBytes } from 'node:crypto';
import { constants as fsc } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { ServerConnection } from '../src/client/connection.js';
import { bootstrapOrganization } from '../src/client/organization.js';
import { WorkspaceSession } from '../src/client/session.js';
import { createWorkspace } from '../src/client/workspaces.js';
import type { DeviceKeys } from '../src/crypto/index.js';

const MIB = 1024 * 1024;
const SIZE_MIB = Number(process.env.ENGINE_MIB ?? 256);
const FILES = Number(process.env.ENGINE_FILES ?? 5000);
const CHUNK = Number(process.env.ENGINE_CHUNK_KIB ?? 128) * 1024;

const root = await mkdtemp(join(process.env.BENCH_DIR ?? tmpdir(), 'coffer-engine-bench-'));
const port = 20000 + Math.floor(Math.random() * 20000);
const server = spawn(process.execPath, ['dist/cli/main.js', 'server', '--data', join(root, 'server'), '--port', String(port)], {
  stdio: 'ignore',
  env: { ...process.env, COFFER_LOG_LEVEL: 'warn' },
});
const url = `http://127.0.0.1:${port}`;
let device: DeviceKeys;
try {
  for (let i = 0; ; i++) {
    if (await new ServerConnection(url, null).health()) break;
    if (i > 100) throw new Error('server did not start');
    await new Promise((r) => setTimeout(r, 100));
  }
  const adminToken = (await readFile(join(root, 'server', 'admin-token'), 'utf8')).trim();
  const conn = new ServerConnection(url, null);
  const { bootstrapToken } = await conn.createOrganization('bench', adminToken);
  conn.close();
  device = await bootstrapOrganization({ serverUrl: url, orgId: 'bench', bootstrapToken, handle: 'bench@local', deviceLabel: 'bench', password: 'bench-password', deviceFile: join(root, 'bench.device') });
  const c2 = new ServerConnection(url, device);
  await createWorkspace(device, c2, 'Bench');
  c2.close();

  const open = (dataRoot: string) =>
    WorkspaceSession.open({ device, workspace: 'Bench', dataRoot, cacheBytes: 8192 * MIB, readOnly: false, logger: pino({ level: process.env.COFFER_LOG_LEVEL ?? 'warn' }) });
  const rate = (bytes: number, ms: number) => `${((bytes / MIB) / (ms / 1000)).toFixed(1).padStart(8)} MiB/s  ${(ms / 1000).toFixed(2).padStart(6)} s`;
  // ENGINE_PROFILE=<dir>: a main-thread CPU profile of each phase (<dir>/<phase>.cpuprofile).
  const profDir = process.env.ENGINE_PROFILE;
  const inspector = profDir ? new InspectorSession() : null;
  if (inspector) {
    inspector.connect();
    await inspector.post('Profiler.enable');
  }
  const profile = async <T>(name: string, fn: () => Promise<T>): Promise<T> => {
    if (!inspector) return fn();
    await inspector.post('Profiler.start');
    try {
      return await fn();
    } finally {
      const { profile: p } = await inspector.post('Profiler.stop');
      writeFileSync(join(profDir!, `${name}.cpuprofile`), JSON.stringify(p));
    }
  };
  let gcMs = 0;
  let gcN = 0;
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      gcMs += e.duration;
      gcN++;
    }
  }).observe({ entryTypes: ['gc'] });
  let cpu0 = process.cpuUsage();
  const rss = () => {
    const c = process.cpuUsage(cpu0);
    cpu0 = process.cpuUsage();
    const gc = `gc ${gcMs.toFixed(0)} ms/${gcN}  heap ${Math.round(process.memoryUsage().heapUsed / MIB)} MiB`;
    gcMs = 0;
    gcN = 0;
    return `${gc}  cpu ${(c.user / 1e6).toFixed(2).padStart(5)} user ${(c.system / 1e6).toFixed(2).padStart(5)} sys  rss ${Math.round(process.memoryUsage().rss / MIB)} MiB`;
  };

  const data = randomBytes(SIZE_MIB * MIB);
  const s1 = await open(join(root, 'c1'));
  s1.start();
  const e = s1.engine;
  rss();
  let t0 = performance.now();
  await profile('write', async () => {
    const fh = await e.create('/big.bin', 0o644, { flags: fsc.O_RDWR });
    for (let off = 0; off < data.length; off += CHUNK) {
      const piece = Buffer.from(data.subarray(off, off + CHUNK)); // a fresh buffer, like a FUSE request
      await e.write(fh, piece, piece.length, off);
    }
    await e.flush(fh);
    await e.release(fh);
  });
  const tw = performance.now() - t0;
  console.log(`write ${SIZE_MIB} MiB (${CHUNK / 1024} KiB writes) until close  ${rate(data.length, tw)}  ${rss()}  (${(s1.store.pendingStats().bytes / MIB).toFixed(0)} MiB left to upload)`);
  t0 = performance.now();
  await profile('sync', () => s1.sync.drain(600_000));
  const ts = performance.now() - t0;
  console.log(`close -> fully synced                      ${rate(data.length, ts)}  ${rss()}`);
  await s1.close();

  const readAll = async (s: WorkspaceSession) => {
    const out = Buffer.allocUnsafe(CHUNK);
    const h = await s.engine.open('/big.bin', { flags: fsc.O_RDONLY });
    let off = 0;
    let mismatch = false;
    for (;;) {
      const n = await s.engine.read(h, out, CHUNK, off);
      if (n === 0) break;
      if (off % (64 * MIB) === 0 && !out.subarray(0, n).equals(data.subarray(off, off + n))) mismatch = true;
      off += n;
    }
    await s.engine.release(h);
    if (off !== data.length || mismatch) throw new Error('read back wrong bytes');
  };
  const s2 = await open(join(root, 'c1'));
  rss();
  t0 = performance.now();
  await profile('read', () => readAll(s2));
  console.log(`read (local cache, fresh session)          ${rate(data.length, performance.now() - t0)}  ${rss()}`);
  await s2.close();
  const s3 = await open(join(root, 'c2'));
  rss();
  t0 = performance.now();
  await profile('coldread', () => readAll(s3));
  console.log(`cold read (from the server)                ${rate(data.length, performance.now() - t0)}  ${rss()}`);
  await s3.close();

  if (FILES > 0) {
    const s4 = await open(join(root, 'c3'));
    await s4.engine.mkdir('/many', 0o755);
    t0 = performance.now();
    let last = t0;
    const small = Buffer.from('hello\n');
    for (let i = 1; i <= FILES; i++) {
      const h = await s4.engine.create(`/many/f${i}.txt`, 0o644, { flags: fsc.O_RDWR });
      await s4.engine.write(h, Buffer.from(small), small.length, 0);
      await s4.engine.flush(h);
      await s4.engine.release(h);
      if (i % (FILES / 5) === 0) {
        const now = performance.now();
        console.log(`create+write+close files ${String(i - FILES / 5 + 1).padStart(6)}..${String(i).padEnd(6)} ${(((FILES / 5) / (now - last)) * 1000).toFixed(0).padStart(7)} files/s`);
        last = now;
      }
    }
    console.log(`${FILES} files one close at a time          ${((performance.now() - t0) / 1000).toFixed(2)} s`);
    t0 = performance.now();
    await s4.sync.drain(600_000);
    console.log(`... then fully synced                      ${((performance.now() - t0) / 1000).toFixed(2)} s`);
    await s4.close();
  }
} finally {
  server.kill();
  await rm(root, { recursive: true, force: true });
}
