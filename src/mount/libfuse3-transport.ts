/**
 * The default transport: Coffer's own libfuse 3 binding (native/coffer_fuse.cc, built by
 * `make build`). The addon reads /dev/fuse on the JS thread, hands each kernel request to
 * `dispatch` and sends `session.reply(id, result, value)` to the kernel; this file only
 * translates arguments and replies.
 *
 * - Buffers of read/write are the addon's request memory (zero copy), valid until the reply: the
 *   addon detaches them afterwards, so a late use throws instead of touching reused memory.
 * - A request JS does not answer within its deadline gets ETIMEDOUT; unmount answers every pending
 *   request with EIO, detaches the mount lazily, and if files are still held open after a grace
 *   period aborts the connection (fusectl), so no unmount ever leaves a dead or hung mount.
 * - `auto_unmount`: libfuse's fusermount3 watchdog unmounts if this process dies (kill -9).
 * - Kernel tuning: max_write 1 MiB, readdirplus, parallel dirops; writeback cache when asked.
 */
import { existsSync } from 'node:fs';
import { readdir, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import { CofferError, describeError } from '../errors.js';
import { forceUnmount, mountInfo, run } from './mount-point.js';
import { SAFE_MOUNT_FLAGS, type FuseHandlers, type FuseStat, type FuseStatfs, type FuseTime, type FuseTransport, type MountedTransport, type NegotiatedFeatures, type TransportMountOptions } from './transport.js';

/** Keep in sync with `enum Op` in native/coffer_fuse.cc. */
export const NativeOp = {
  INIT: 0,
  GETATTR: 1,
  ACCESS: 2,
  READDIR: 3,
  MKDIR: 4,
  UNLINK: 5,
  RMDIR: 6,
  RENAME: 7,
  CHMOD: 8,
  CHOWN: 9,
  TRUNCATE: 10,
  UTIMENS: 11,
  CREATE: 12,
  OPEN: 13,
  READ: 14,
  WRITE: 15,
  STATFS: 16,
  FLUSH: 17,
  RELEASE: 18,
  FSYNC: 19,
  READLINK: 20,
  SYMLINK: 21,
  LINK: 22,
  MKNOD: 23,
} as const;
const OP_COUNT = 24;
const OP_NAMES: string[] = Object.entries(NativeOp)
  .sort((a, b) => a[1] - b[1])
  .map(([k]) => k.toLowerCase());

type NativeArg = number | string | Buffer | undefined;
export type NativeDispatch = (op: number, id: number, path: string, a?: NativeArg, b?: NativeArg, c?: NativeArg, d?: NativeArg, e?: NativeArg) => void;

export interface NativeSessionConfig {
  timeouts: number[];
  maxWrite: number;
  writeback: number;
  attrTimeout: number;
  entryTimeout: number;
  negativeTimeout: number;
}

/** The addon's class (native/coffer_fuse.cc). */
export interface NativeSession {
  mount(mountPoint: string, options: string, config: NativeSessionConfig, dispatch: NativeDispatch, onExit: (code: number) => void): void;
  /** `extra`: readdir's attributes, or an entry's attributes after create, mkdir and setattr. */
  reply(id: number, result: number, value?: Float64Array | number | string | string[], extra?: Float64Array): boolean;
  /** Answers every pending request (EIO), refuses new ones, detaches the mount; returns an errno (0 = ok). */
  shutdown(): number;
  invalidate(path: string): boolean;
  pending(): number;
}

/** glibc's malloc figures (mallinfo2), and how many times the background trimmer ran. */
export interface MallocStats {
  arenaBytes: number;
  mmapBytes: number;
  inUseBytes: number;
  freeBytes: number;
  trims: number;
}

export interface NativeAddon {
  FuseSession: new () => NativeSession;
  libfuseVersion: number;
  /** native/memory.cc: freed malloc memory given back to the system (see there why). */
  mallocStats(): MallocStats;
  trimMemory(): MallocStats;
  startMemoryTrimmer(periodMs: number, thresholdBytes: number): void;
  stopMemoryTrimmer(): void;
  /** Tells this thread's V8 isolate how tight memory is: 0 none, 1 moderate, 2 critical. */
  setMemoryPressure(level: 0 | 1 | 2): void;
}

const EIO = -5;
const EINVAL = -22;
const UTIME_NOW_NS = 2 ** 30 - 1;
const UTIME_OMIT_NS = 2 ** 30 - 2;
const FUSE_CAP_WRITEBACK_CACHE = 1 << 16;
const FUSE_CAP_PARALLEL_DIROPS = 1 << 18;
const FUSE_CAP_READDIRPLUS = 1 << 13;
export const LIBFUSE3_MAX_WRITE = 1024 * 1024;
const STAT_FIELDS = 10;
const UNMOUNT_GRACE_MS = 2000;
const ABORT_WAIT_MS = 5000;
const FUSECTL = '/sys/fs/fuse/connections';

let addon: NativeAddon | undefined;

/** Loads native/build/Release/coffer_fuse.node (throws a CofferError when it is not built or cannot load). */
export function loadAddon(): NativeAddon {
  if (addon) return addon;
  const here = dirname(fileURLToPath(import.meta.url));
  // src/mount/ and dist/mount/ are both two levels below the package root.
  const file = process.env.COFFER_FUSE_ADDON ?? resolve(here, '../../native/build/Release/coffer_fuse.node');
  if (!existsSync(file)) throw new CofferError('not_supported', `libfuse3 addon not built (${file}); run make build`);
  try {
    addon = createRequire(import.meta.url)(file) as NativeAddon;
  } catch (err) {
    throw new CofferError('not_supported', `libfuse3 addon does not load (install libfuse3-3): ${describeError(err)}`);
  }
  return addon;
}

export function statToArray(st: FuseStat, out: Float64Array = new Float64Array(STAT_FIELDS), at = 0): Float64Array {
  out[at] = st.mode;
  out[at + 1] = st.uid;
  out[at + 2] = st.gid;
  out[at + 3] = st.size;
  out[at + 4] = st.nlink || 1;
  out[at + 5] = st.blksize;
  out[at + 6] = st.blocks;
  out[at + 7] = st.atime;
  out[at + 8] = st.mtime;
  out[at + 9] = st.ctime;
  return out;
}

function statfsToArray(s: FuseStatfs): Float64Array {
  return Float64Array.of(s.bsize, s.frsize, s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.favail, s.fsid, s.flag, s.namemax);
}

/** utimensat(2) timespec → ms, 'now' or 'omit'. */
export function decodeTime(sec: number, nsec: number): FuseTime {
  if (nsec === UTIME_NOW_NS) return 'now';
  if (nsec === UTIME_OMIT_NS) return 'omit';
  return sec * 1000 + Math.floor(nsec / 1e6);
}

const num = (v: NativeArg): number => (typeof v === 'number' ? v : NaN);
const str = (v: NativeArg): string => (typeof v === 'string' ? v : '');

/** Routes one native request to the handlers; every path ends in exactly one `reply`. */
export function makeDispatch(h: FuseHandlers, session: Pick<NativeSession, 'reply'>, onInit: (a: number, b: number, c: number, d: number, e: number) => void, logger: Logger): NativeDispatch {
  const done = (id: number) => (code: number) => void session.reply(id, code);
  // The kernel needs the attributes a new entry (create, mkdir, mknod, symlink, link) or a setattr
  // leaves: they go with the answer, read from the handlers in-process. Without them the addon
  // sends a getattr for them (a second trip through the dispatcher).
  const attrsOf = (path: string, fh: number, then: (st: Float64Array | undefined) => void): void => {
    const cb = (code: number, st?: FuseStat): void => then(code === 0 && st ? statToArray(st) : undefined);
    if (fh >= 0) h.fgetattr(path, fh, cb);
    else h.getattr(path, cb);
  };
  const doneWithAttrs = (id: number, path: string, fh = -1) => (code: number) => {
    if (code !== 0) return void session.reply(id, code);
    attrsOf(path, fh, (st) => void session.reply(id, 0, undefined, st));
  };
  return (op, id, path, a, b, c, d, e) => {
    try {
      switch (op) {
        case NativeOp.INIT:
          session.reply(id, 0);
          onInit(num(a), num(b), num(c), num(d), num(e));
          return;
        case NativeOp.GETATTR: {
          const cb = (code: number, st?: FuseStat): void => void (code === 0 && st ? session.reply(id, 0, statToArray(st)) : session.reply(id, code !== 0 ? code : EIO));
          const fh = num(a);
          if (fh >= 0) h.fgetattr(path, fh, cb);
          else h.getattr(path, cb);
          return;
        }
        case NativeOp.ACCESS:
          return h.access(path, num(a), done(id));
        case NativeOp.READDIR:
          return h.readdir(path, num(a) === 1, (code, listing) => {
            if (code !== 0 || !listing) return void session.reply(id, code !== 0 ? code : EIO);
            if (!listing.stats) return void session.reply(id, 0, listing.names);
            const flat = new Float64Array(listing.names.length * STAT_FIELDS); // mode 0: no attributes for that entry
            listing.stats.forEach((st, i) => {
              if (st && i < listing.names.length) statToArray(st, flat, i * STAT_FIELDS);
            });
            session.reply(id, 0, listing.names, flat);
          });
        case NativeOp.MKDIR:
          return h.mkdir(path, num(a), doneWithAttrs(id, path));
        case NativeOp.UNLINK:
          return h.unlink(path, done(id));
        case NativeOp.RMDIR:
          return h.rmdir(path, done(id));
        case NativeOp.RENAME:
          return h.rename(path, str(a), num(b), done(id));
        case NativeOp.CHMOD:
          return h.chmod(path, num(a), doneWithAttrs(id, path, num(b)));
        case NativeOp.CHOWN:
          return h.chown(path, num(a), num(b), doneWithAttrs(id, path, num(c)));
        case NativeOp.TRUNCATE: {
          const fh = num(b);
          if (fh >= 0) h.ftruncate(path, fh, num(a), doneWithAttrs(id, path, fh));
          else h.truncate(path, num(a), doneWithAttrs(id, path));
          return;
        }
        case NativeOp.UTIMENS:
          return h.utimens(path, decodeTime(num(a), num(b)), decodeTime(num(c), num(d)), doneWithAttrs(id, path, num(e)));
        case NativeOp.CREATE:
          return h.create(path, num(a), num(b), (code, fh) => {
            if (code !== 0 || fh === undefined) return void session.reply(id, code !== 0 ? code : EIO);
            attrsOf(path, fh, (st) => void session.reply(id, 0, fh, st));
          });
        case NativeOp.OPEN:
          return h.open(path, num(a), (code, fh) => void (code === 0 && fh !== undefined ? session.reply(id, 0, fh) : session.reply(id, code !== 0 ? code : EIO)));
        case NativeOp.READ:
        case NativeOp.WRITE: {
          const buf = b instanceof Buffer ? b : Buffer.alloc(0);
          const fn = op === NativeOp.READ ? h.read : h.write;
          return fn.call(h, path, num(a), buf, buf.length, num(c), done(id));
        }
        case NativeOp.STATFS:
          return h.statfs(path, (code, s) => void (code === 0 && s ? session.reply(id, 0, statfsToArray(s)) : session.reply(id, code !== 0 ? code : EIO)));
        case NativeOp.FLUSH:
          return h.flush(path, num(a), done(id));
        case NativeOp.RELEASE:
          return h.release(path, num(a), done(id));
        case NativeOp.FSYNC:
          return h.fsync(path, num(b) !== 0, num(a), done(id));
        case NativeOp.READLINK:
          return h.readlink(path, (code, target) => void (code === 0 && target !== undefined ? session.reply(id, 0, target) : session.reply(id, code !== 0 ? code : EIO)));
        case NativeOp.SYMLINK:
          return h.symlink(str(a), path, doneWithAttrs(id, path));
        case NativeOp.LINK:
          return h.link(str(a), path, doneWithAttrs(id, path));
        case NativeOp.MKNOD:
          return h.mknod(path, num(a), num(b), doneWithAttrs(id, path));
        default:
          session.reply(id, EINVAL);
      }
    } catch (err) {
      // Handlers never throw by contract; answer anyway so the kernel request is not left waiting.
      logger.error({ op: OP_NAMES[op] ?? op, path, err: describeError(err) }, 'fuse dispatch threw');
      session.reply(id, EIO);
    }
  };
}

function optionString(o: TransportMountOptions, autoUnmount: boolean): string {
  const opts = [`fsname=${o.fsName}`, `subtype=${o.subtype}`, ...SAFE_MOUNT_FLAGS];
  if (o.defaultPermissions) opts.push('default_permissions');
  if (o.allowOther) opts.push('allow_other');
  if (o.readOnly) opts.push('ro');
  if (autoUnmount) opts.push('auto_unmount');
  if (o.debug) opts.push('debug');
  return opts.join(',');
}

/** Aborts a FUSE connection through fusectl (mounted on demand): pending and later requests fail at once. */
async function abortConnection(dev: number, logger: Logger): Promise<void> {
  const dir = join(FUSECTL, String(dev));
  if (!existsSync(dir)) {
    try {
      if ((await readdir(FUSECTL)).length === 0) await run('mount', ['-t', 'fusectl', 'fusectl', FUSECTL]);
    } catch (err) {
      logger.debug({ err: describeError(err) }, 'cannot mount fusectl');
    }
  }
  await writeFile(join(dir, 'abort'), '1');
}

async function mountLibfuse3(h: FuseHandlers, o: TransportMountOptions, logger: Logger): Promise<MountedTransport> {
  const { FuseSession } = loadAddon();
  const session = new FuseSession();
  const mnt = o.mountPoint;
  // auto_unmount goes through fusermount3, whose watchdog clears the mount if this process dies.
  const autoUnmount = process.env.COFFER_FUSE_AUTO_UNMOUNT !== '0';
  const options = optionString(o, autoUnmount);
  const timeouts = new Array<number>(OP_COUNT).fill(o.opTimeoutsMs.default ?? 15_000);
  // Native ops are named like the driver's (getattr also serves fgetattr, truncate ftruncate).
  OP_NAMES.forEach((name, i) => {
    const t = o.opTimeoutsMs[name];
    if (t !== undefined) timeouts[i] = t;
  });
  timeouts[NativeOp.INIT] = o.mountTimeoutMs;

  let features: NegotiatedFeatures | undefined;
  let initResolve: (() => void) | undefined;
  const initSeen = new Promise<void>((res) => (initResolve = res));
  let exited = false;
  let exitResolve: (() => void) | undefined;
  const exitSeen = new Promise<void>((res) => (exitResolve = res));
  let unmounting = false;
  const exitListeners: Array<() => void> = [];

  const dispatch = makeDispatch(
    h,
    session,
    (maxWrite, want) => {
      features = {
        maxWrite,
        writebackCache: (want & FUSE_CAP_WRITEBACK_CACHE) !== 0,
        distinctTimes: true,
        createFlags: true,
        parallelDirops: (want & FUSE_CAP_PARALLEL_DIROPS) !== 0,
        readdirplus: (want & FUSE_CAP_READDIRPLUS) !== 0,
        invalidation: true,
      };
      initResolve?.();
    },
    logger,
  );
  const onExit = (code: number): void => {
    exited = true;
    exitResolve?.();
    if (code !== 0) logger.warn({ code }, 'the FUSE session ended with an error');
    if (!unmounting) {
      logger.warn('the FUSE connection ended without unmount (unmounted from outside?)');
      for (const l of exitListeners.splice(0)) l();
    }
  };

  try {
    session.mount(
      mnt,
      options,
      {
        timeouts,
        maxWrite: LIBFUSE3_MAX_WRITE,
        writeback: o.writebackCache ? 1 : 0,
        attrTimeout: o.attrTimeoutS,
        entryTimeout: o.entryTimeoutS,
        negativeTimeout: o.negativeTimeoutS,
      },
      dispatch,
      onExit,
    );
  } catch (err) {
    throw new CofferError('internal', `cannot mount FUSE at ${mnt}: ${describeError(err)}`);
  }

  const waitExit = (ms: number): Promise<boolean> =>
    exited
      ? Promise.resolve(true)
      : new Promise((res) => {
          const timer = setTimeout(() => res(false), ms);
          void exitSeen.then(() => {
            clearTimeout(timer);
            res(true);
          });
        });

  let dev: number | undefined;
  let unmounted: Promise<void> | undefined;
  const unmount = (): Promise<void> => {
    unmounted ??= (async () => {
      unmounting = true;
      if (exited) return;
      const rc = session.shutdown();
      if (rc !== 0) {
        logger.debug({ errno: rc }, 'umount2 failed; trying fusermount3');
        await forceUnmount(mnt).catch((err: unknown) => logger.warn({ err: describeError(err) }, 'fusermount3 failed'));
      }
      if (await waitExit(UNMOUNT_GRACE_MS)) return;
      // Files are still open (the lazy unmount keeps the connection): end it.
      logger.warn({ graceMs: UNMOUNT_GRACE_MS }, 'files still open after unmount: aborting the FUSE connection');
      if (dev !== undefined) await abortConnection(dev, logger).catch((err: unknown) => logger.warn({ err: describeError(err) }, 'cannot abort the FUSE connection'));
      if (!(await waitExit(ABORT_WAIT_MS))) throw new CofferError('busy', `the FUSE loop of ${mnt} did not stop`);
    })();
    return unmounted;
  };

  let initTimer: NodeJS.Timeout | undefined;
  const initOk = await Promise.race([
    initSeen.then(() => true),
    exitSeen.then(() => false),
    new Promise<boolean>((res) => (initTimer = setTimeout(() => res(false), o.mountTimeoutMs))),
  ]);
  clearTimeout(initTimer);
  if (!initOk || !features) {
    await unmount().catch(() => undefined);
    await forceUnmount(mnt).catch(() => undefined);
    throw new CofferError('internal', exited ? `cannot mount FUSE at ${mnt}: the connection ended during INIT` : `FUSE mount at ${mnt} did not start within ${o.mountTimeoutMs} ms`);
  }
  const info = await mountInfo(mnt);
  if (info) {
    dev = info.major * 2 ** 20 + info.minor; // the kernel's dev_t, as fusectl names connections
    // The kernel's default readahead (128 KiB) would cut sequential reads into small requests.
    await writeFile(`/sys/class/bdi/${info.major}:${info.minor}/read_ahead_kb`, String(LIBFUSE3_MAX_WRITE / 1024)).catch(() => undefined);
  }
  const negotiated = features;
  return {
    features: negotiated,
    description: options,
    unmount,
    invalidate(paths) {
      for (const p of paths) session.invalidate(p);
    },
    onExit(listener) {
      if (exited && !unmounting) listener();
      else exitListeners.push(listener);
    },
  };
}

export function libfuse3Transport(): FuseTransport {
  loadAddon(); // fail now (selection falls back or reports), not at mount time
  return { name: 'libfuse3', mount: mountLibfuse3 };
}
