import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { Command } from 'commander';
import type { Logger } from 'pino';
import type { DeviceKeys } from '../crypto/index.js';
import { WorkspaceSession } from '../client/session.js';
import { CofferError } from '../errors.js';
import { FuseMount } from '../mount/fuse-driver.js';
import { loadAddon } from '../mount/libfuse3-transport.js';
import { DEFAULT_MEMORY_GOVERNOR, MemoryGovernor } from '../mount/memory-governor.js';
import { parseMountpointsFile } from '../mount/mountpoints.js';
import { isTransportChoice, type TransportChoice } from '../mount/transport.js';
import { dataDir, loadDevice, makeLogger, type GlobalOptions } from './context.js';
import { liveMounts, processAlive, removeMountRecord, writeMountRecord } from './runtime.js';

/** The malloc trimmer looks once a second and trims once 16 MiB more sit freed in glibc's arenas. */
const MEMORY_TRIM_PERIOD_MS = 1000;
const MEMORY_TRIM_THRESHOLD_BYTES = 16 * 1024 * 1024;
/** Resident size above which V8 is told memory is tight (src/mount/memory-governor.ts). */
const DEFAULT_MEMORY_BUDGET_MIB = 256;
const MIN_MEMORY_BUDGET_MIB = 64;

/** `--memory-budget`: MiB, at least 64, or 0 to leave V8 to its own heuristics. */
export function parseMemoryBudget(text: string): number {
  const mib = /^\d{1,7}$/.test(text) ? Number(text) : NaN;
  if (Number.isNaN(mib) || (mib !== 0 && mib < MIN_MEMORY_BUDGET_MIB)) {
    throw new CofferError('bad_request', `--memory-budget must be an integer number of MiB, at least ${MIN_MEMORY_BUDGET_MIB}, or 0 for none (got "${text}")`);
  }
  return mib;
}

interface MountRequest {
  workspace: string;
  path: string;
  readOnly: boolean;
  cacheSizeMiB: number;
  /** A view of the past (ms since epoch). */
  at?: number;
  /** Keep the whole workspace downloaded (mountpoints file). */
  pin?: boolean;
  /** FUSE transport (default: COFFER_FUSE_TRANSPORT, else automatic). */
  transport?: TransportChoice;
  /** Kernel writeback cache (libfuse3). */
  writebackCache?: boolean;
}

/** `--at` dates: ISO-8601 (a date alone means 00:00 UTC); never in the future. */
export function parseAt(text: string): number {
  const ms = Date.parse(text);
  if (Number.isNaN(ms)) throw new CofferError('bad_request', `not a date: "${text}" (use ISO-8601, e.g. 2026-05-01 or 2026-05-01T12:00:00Z)`);
  if (ms > Date.now()) throw new CofferError('bad_request', `"${text}" is in the future`);
  return ms;
}

interface ActiveMount {
  session: WorkspaceSession;
  fuse: FuseMount;
}

async function mountOne(device: DeviceKeys, req: MountRequest, dataRoot: string, logger: Logger): Promise<ActiveMount> {
  const mountPoint = resolve(req.path);
  const session = await WorkspaceSession.open({
    device,
    workspace: req.workspace,
    dataRoot,
    cacheBytes: req.cacheSizeMiB * 1024 * 1024,
    readOnly: req.readOnly,
    logger,
    ...(req.at !== undefined && { at: req.at }),
  });
  const other = req.at === undefined ? (await liveMounts(dataRoot)).find((m) => m.realmId === session.info.realmId && m.pid !== process.pid) : undefined;
  if (other) {
    await session.close();
    throw new CofferError('busy', `workspace ${session.info.name} is already mounted at ${other.mountPoint} (pid ${other.pid})`);
  }
  const fuse = new FuseMount(session.engine, mountPoint, {
    logger,
    displayName: session.info.name,
    readOnly: req.readOnly || req.at !== undefined,
    ...(req.transport !== undefined && { transport: req.transport }),
    ...(req.writebackCache !== undefined && { writebackCache: req.writebackCache }),
  });
  try {
    await fuse.mount();
  } catch (err) {
    await session.close();
    throw err;
  }
  session.onRemoteChange((paths) => fuse.invalidate(paths));
  if (req.pin) session.store.setPin('/', true);
  if (req.at === undefined) await writeMountRecord(dataRoot, { pid: process.pid, mountPoint, realmId: session.info.realmId, name: session.info.name });
  session.start();
  const as = req.at !== undefined ? ` as of ${new Date(req.at).toISOString()}` : '';
  process.stdout.write(`mounted ${session.info.name}${as} at ${mountPoint}${session.engine.readOnly ? ' (read-only)' : ''}\n`);
  return { session, fuse };
}

export function registerMountCommands(program: Command, globals: () => GlobalOptions): void {
  program
    .command('mount [workspace] [dir]')
    .description('mount a workspace (or every entry of a mountpoints file) and keep it synced; runs until unmounted or signalled')
    .option('--read-only', 'mount read-only (writes get EROFS)', false)
    .option('--cache-size <MiB>', 'bound of the local cache of clean blocks', '1024')
    .option('--config <file>', 'mount every workspace listed in a mountpoints file (see mountpoints.example.json)')
    .option('--at <date>', 'mount the workspace as it was at that date (read-only), e.g. 2026-05-01T12:00:00Z')
    .option('--transport <name>', 'FUSE transport: libfuse3, fuse-native or auto (default: $COFFER_FUSE_TRANSPORT, else auto)')
    .option('--writeback-cache', 'let the kernel cache writes (libfuse3 only; default: $COFFER_FUSE_WRITEBACK=1)')
    .option('--memory-budget <MiB>', 'resident size above which the JavaScript heap is kept tight (0: none)', String(DEFAULT_MEMORY_BUDGET_MIB))
    .action(async (workspace: string | undefined, dir: string | undefined, opts: { readOnly: boolean; cacheSize: string; config?: string; at?: string; transport?: string; writebackCache?: boolean; memoryBudget: string }) => {
      const g = globals();
      const logger = makeLogger('coffer-mount');
      const budgetMiB = parseMemoryBudget(opts.memoryBudget);
      // The addon tunes glibc's malloc when it loads: load it before the mount starts its threads.
      // Its trimmer gives back what block buffers freed in glibc's arenas (native/memory.cc), and
      // the governor tells V8 when the process is over its budget.
      try {
        const addon = loadAddon();
        addon.startMemoryTrimmer(MEMORY_TRIM_PERIOD_MS, MEMORY_TRIM_THRESHOLD_BYTES);
        if (budgetMiB > 0) new MemoryGovernor(addon, { ...DEFAULT_MEMORY_GOVERNOR, budgetBytes: budgetMiB * 1024 * 1024 }).start();
      } catch {
        // not built: the fuse-native transport runs with glibc's and V8's defaults
      }
      if (opts.transport !== undefined && !isTransportChoice(opts.transport)) {
        throw new CofferError('bad_request', `--transport must be libfuse3, fuse-native or auto, not "${opts.transport}"`);
      }
      const cliTransport = opts.transport as TransportChoice | undefined;
      let requests: MountRequest[];
      if (opts.config) {
        const file = resolve(opts.config);
        const cfg = parseMountpointsFile(await readFile(file, 'utf8'), file);
        if (cfg.device && !g.deviceFile) g.deviceFile = cfg.device;
        requests = cfg.mounts.map((m) => ({
          workspace: m.workspace,
          path: m.path,
          readOnly: m.readOnly || m.at !== undefined,
          cacheSizeMiB: m.cacheSizeMiB,
          ...(m.at !== undefined && { at: m.at }),
          pin: m.pin,
          ...((cliTransport ?? m.transport) !== undefined && { transport: cliTransport ?? m.transport }),
          ...((opts.writebackCache ?? m.writebackCache) !== undefined && { writebackCache: opts.writebackCache ?? m.writebackCache }),
        }));
      } else {
        if (!workspace || !dir) throw new CofferError('bad_request', 'usage: coffer mount <workspace> <dir>  (or --config <file>)');
        const cache = Number(opts.cacheSize);
        if (!Number.isInteger(cache) || cache < 16) throw new CofferError('bad_request', '--cache-size must be an integer number of MiB, at least 16');
        requests = [
          {
            workspace,
            path: dir,
            readOnly: opts.readOnly,
            cacheSizeMiB: cache,
            ...(opts.at !== undefined && { at: parseAt(opts.at) }),
            ...(cliTransport !== undefined && { transport: cliTransport }),
            ...(opts.writebackCache !== undefined && { writebackCache: opts.writebackCache }),
          },
        ];
      }
      const device = await loadDevice(g);
      const dataRoot = dataDir(g);
      const active: ActiveMount[] = [];
      const seen = new Set<string>();
      for (const r of requests) {
        if (r.at === undefined && seen.has(r.workspace)) throw new CofferError('busy', `workspace ${r.workspace} is listed twice (only views of the past may repeat)`);
        if (r.at === undefined) seen.add(r.workspace);
      }
      const shutdown = async (code: number) => {
        for (const m of active.splice(0)) {
          await m.fuse.unmount().catch((err: unknown) => logger.error({ err: (err as Error).message }, 'unmount failed'));
          await m.session.close().catch((err: unknown) => logger.error({ err: (err as Error).message }, 'closing the workspace failed'));
          await removeMountRecord(dataRoot, m.fuse.mountPoint);
        }
        process.exit(code);
      };
      process.once('SIGINT', () => void shutdown(0));
      process.once('SIGTERM', () => void shutdown(0));
      try {
        for (const r of requests) active.push(await mountOne(device, r, dataRoot, logger));
      } catch (err) {
        process.stderr.write(`coffer: ${(err as Error).message}\n`);
        await shutdown(1);
      }
    });

  program
    .command('unmount <dir>')
    .description('unmount a mounted workspace (its pending changes are saved locally and synced next time)')
    .option('--force', 'clear a crashed or stuck mount (fusermount -uz)', false)
    .action(async (dir: string, opts: { force: boolean }) => {
      const g = globals();
      const mountPoint = resolve(dir);
      const rec = (await liveMounts(dataDir(g))).find((m) => m.mountPoint === mountPoint);
      if (rec && !opts.force) {
        process.kill(rec.pid, 'SIGTERM');
        for (let i = 0; i < 300 && processAlive(rec.pid); i++) await new Promise((r) => setTimeout(r, 100));
        if (processAlive(rec.pid)) throw new CofferError('busy', `mount process ${rec.pid} did not stop; try --force`);
      } else {
        if (rec) process.kill(rec.pid, 'SIGKILL');
        await FuseMount.forceUnmount(mountPoint);
        await removeMountRecord(dataDir(g), mountPoint);
      }
      process.stdout.write(`unmounted ${mountPoint}\n`);
    });
}
