/**
 * The fallback transport: fuse-native 2.2.6 on libfuse 2.9 (npm; needs libfuse.so.2). Adapts its
 * callback shapes to the driver's handlers. Its quirks (pinned by test/e2e/fuse-driver.test.ts):
 * - `big_writes` has no option: appended to the string `_fuseOptions()` returns; option values of
 *   0 are dropped, so the timeouts are appended raw too. max_write stays 128 KiB.
 * - its `_op_fgetattr` calls `ops.getattr(path)` and drops the handle: overridden to call fgetattr.
 * - `create` does not receive the open flags (only the mode): files are created O_RDWR.
 * - utimens passes atime twice (its C code converts tv[0] for both arguments): mtime = atime.
 *   `touch`, `touch -d` work; distinct atime/mtime (`cp -p`, `tar x`, rsync) get the atime for both.
 *   libfuse 2.9 silently ignores a change of only one of them (`touch -m`). A UTIME_NOW sentinel
 *   (1073 ms) is read as "now", defensively.
 * - after a failed mount it leaves a uv handle referenced (the process never exits): released.
 * - libfuse 2 opens /dev/fuse without O_CLOEXEC: every child this process spawns holds the
 *   connection open while it lives. No writeback cache (rejected after the kernel mount, leaving a
 *   dead mount), no parallel dirops, no invalidation, no auto_unmount.
 * - fuse-native answers ETIMEDOUT itself if a handler does not answer in time (never
 *   `timeout:false`: callers would hang in D state and the mount could not be unmounted).
 */
import { constants as fsConstants } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import type { Logger } from 'pino';
import { BadInputError, CofferError, describeError } from '../errors.js';
import { forceUnmount } from './mount-point.js';
import { SAFE_MOUNT_FLAGS, type Code, type Done, type FuseHandlers, type FuseStat, type FuseStatfs, type FuseTransport, type MountedTransport, type Reply, type TransportMountOptions } from './transport.js';

interface FuseNativeOps {
  init(cb: Done): void;
  access(path: string, mode: number, cb: Done): void;
  statfs(path: string, cb: Reply<FuseStatfs>): void;
  getattr(path: string, cb: Reply<FuseStat>): void;
  fgetattr(path: string, fd: number, cb: Reply<FuseStat>): void;
  flush(path: string, fd: number, cb: Done): void;
  fsync(path: string, datasync: number, fd: number, cb: Done): void;
  fsyncdir(path: string, datasync: number, fd: number, cb: Done): void;
  readdir(path: string, cb: Reply<string[]>): void;
  truncate(path: string, size: number, cb: Done): void;
  ftruncate(path: string, fd: number, size: number, cb: Done): void;
  utimens(path: string, atime: number, mtime: number, cb: Done): void;
  readlink(path: string, cb: Reply<string>): void;
  chown(path: string, uid: number, gid: number, cb: Done): void;
  chmod(path: string, mode: number, cb: Done): void;
  mknod(path: string, mode: number, dev: number, cb: Done): void;
  setxattr(path: string, name: string, value: Buffer, position: number, flags: number, cb: Done): void;
  getxattr(path: string, name: string, position: number, cb: Reply<Buffer>): void;
  listxattr(path: string, cb: Reply<string[]>): void;
  removexattr(path: string, name: string, cb: Done): void;
  open(path: string, flags: number, cb: Reply<number>): void;
  opendir(path: string, flags: number, cb: Reply<number>): void;
  read(path: string, fd: number, buffer: Buffer, length: number, position: number, cb: Done): void;
  write(path: string, fd: number, buffer: Buffer, length: number, position: number, cb: Done): void;
  release(path: string, fd: number, cb: Done): void;
  releasedir(path: string, fd: number, cb: Done): void;
  create(path: string, mode: number, cb: Reply<number>): void;
  unlink(path: string, cb: Done): void;
  rename(src: string, dest: string, cb: Done): void;
  link(src: string, dest: string, cb: Done): void;
  symlink(src: string, dest: string, cb: Done): void;
  mkdir(path: string, mode: number, cb: Done): void;
  rmdir(path: string, cb: Done): void;
}

interface FuseNativeOptions {
  debug?: boolean;
  allowOther?: boolean;
  defaultPermissions?: boolean;
  fsname?: string;
  subtype?: string;
  timeout?: number | Record<string, number>;
}

/** fuse-native's internal signal function: answers the kernel (code first, then op-specific values). */
type FuseSignal = (code: Code, ...values: unknown[]) => void;

interface NativeBinding {
  fuse_native_unmount(mnt: string, thread: Buffer): void;
}

interface FuseNativeInstance {
  readonly mnt: string;
  readonly _thread: Buffer | null;
  readonly ops: FuseNativeOps;
  mount(cb: (err: Error | null) => void): void;
  unmount(cb: (err: Error | null) => void): void;
  _fuseOptions(): string;
  _op_fgetattr(signal: FuseSignal, path: string, fd: number): void;
}

type FuseNativeClass = new (mnt: string, ops: FuseNativeOps, opts: FuseNativeOptions) => FuseNativeInstance;

interface CofferFuseInstance extends FuseNativeInstance {
  extraOptions: string[];
  releaseAfterFailedMount(): void;
}

type CofferFuseClass = new (mnt: string, ops: FuseNativeOps, opts: FuseNativeOptions) => CofferFuseInstance;

const ENOSYS = -38;
const EIO = -5;
const UINT32_MAX = 0xffffffff;
/** chown(2) passes -1 for "unchanged"; fuse-native hands it over as an unsigned 32-bit value. */
const CHOWN_UNCHANGED = UINT32_MAX;
/** UTIME_NOW / UTIME_OMIT (tv_sec 0, tv_nsec ≈ 2^30) as fuse-native's C code converts them to ms. */
const UTIME_SENTINEL_MS = 1073;
/** fuse-native copies the option string into a 1024-byte buffer. */
const MAX_OPTIONS_LENGTH = 1000;
/** max_write with big_writes under libfuse 2. */
export const FUSE_NATIVE_MAX_WRITE = 128 * 1024;

// Loaded lazily: requiring fuse-native fails without libfuse.so.2, which must not break commands
// that never mount.
let fuseClass: CofferFuseClass | undefined;

function loadFuseClass(): CofferFuseClass {
  if (fuseClass) return fuseClass;
  const require = createRequire(import.meta.url);
  let Base: FuseNativeClass;
  try {
    Base = require('fuse-native') as FuseNativeClass;
  } catch (err) {
    throw new CofferError('not_supported', `FUSE is not available (install libfuse2): ${describeError(err)}`);
  }

  // The same native module instance fuse-native loaded (node caches addons by path).
  let binding: NativeBinding | undefined;
  try {
    const fuseDir = dirname(require.resolve('fuse-native/package.json'));
    const gypBuild = createRequire(join(fuseDir, 'index.js'))('node-gyp-build') as (dir: string) => NativeBinding;
    binding = gypBuild(fuseDir);
  } catch {
    binding = undefined;
  }

  class CofferFuse extends Base {
    extraOptions: string[] = [];

    /**
     * After a failed mount fuse-native leaves its uv_async handle referenced (it initialises it
     * before checking fuse_new's result), which keeps the process alive forever: unreference it.
     */
    releaseAfterFailedMount(): void {
      try {
        if (binding && this._thread) binding.fuse_native_unmount(this.mnt, this._thread);
      } catch {
        // best effort
      }
    }

    override _fuseOptions(): string {
      const base = super._fuseOptions();
      const extra = this.extraOptions.join(',');
      if (!extra) return base;
      return base ? `${base},${extra}` : `-o${extra}`;
    }

    /** fuse-native's own version calls ops.getattr(path) and drops the handle. */
    override _op_fgetattr(signal: FuseSignal, path: string, fd: number): void {
      this.ops.fgetattr(path, fd, (code, st) => {
        if (code !== 0 || !st) {
          signal(code !== 0 ? code : EIO);
          return;
        }
        signal(0, statArray(st));
      });
    }
  }
  fuseClass = CofferFuse;
  return fuseClass;
}

/** The Uint32Array layout fuse-native's C code reads (same as its private getStatArray). */
function statArray(st: FuseStat): Uint32Array {
  const ints = new Uint32Array(18);
  const setDouble = (idx: number, n: number): void => {
    ints[idx] = n % 4294967296;
    ints[idx + 1] = Math.floor(n / 4294967296);
  };
  ints[0] = st.mode;
  ints[1] = st.uid;
  ints[2] = st.gid;
  setDouble(3, st.size);
  ints[5] = 0; // dev
  ints[6] = st.nlink || 1;
  ints[7] = 0; // ino: libfuse assigns its own
  ints[8] = 0; // rdev
  ints[9] = st.blksize;
  setDouble(10, st.blocks);
  setDouble(12, st.atime);
  setDouble(14, st.mtime);
  setDouble(16, st.ctime);
  return ints;
}

function adapt(h: FuseHandlers): FuseNativeOps {
  const enosys = (...args: unknown[]): void => {
    const cb = args[args.length - 1];
    if (typeof cb === 'function') (cb as Done)(ENOSYS);
  };
  return {
    init: (cb) => cb(0),
    access: (path, mode, cb) => h.access(path, mode, cb),
    statfs: (path, cb) => h.statfs(path, cb),
    getattr: (path, cb) => h.getattr(path, cb),
    fgetattr: (path, fd, cb) => h.fgetattr(path, fd, cb),
    flush: (path, fd, cb) => h.flush(path, fd, cb),
    fsync: (path, datasync, fd, cb) => h.fsync(path, datasync !== 0, fd, cb),
    fsyncdir: (_path, _datasync, _fd, cb) => cb(0),
    readdir: (path, cb) => h.readdir(path, false, (code, listing) => (code === 0 && listing ? cb(0, listing.names) : cb(code !== 0 ? code : EIO))),
    truncate: (path, size, cb) => h.truncate(path, size, cb),
    ftruncate: (path, fd, size, cb) => h.ftruncate(path, fd, size, cb),
    // fuse-native passes atime for both (see the header): use it for both.
    utimens: (path, atime, _mtime, cb) => {
      const t = atime === UTIME_SENTINEL_MS ? 'now' : atime;
      h.utimens(path, t, t, cb);
    },
    readlink: (path, cb) => h.readlink(path, cb),
    chown: (path, uid, gid, cb) => h.chown(path, uid === CHOWN_UNCHANGED ? -1 : uid, gid === CHOWN_UNCHANGED ? -1 : gid, cb),
    chmod: (path, mode, cb) => h.chmod(path, mode, cb),
    mknod: (path, mode, dev, cb) => h.mknod(path, mode, dev, cb),
    setxattr: enosys,
    getxattr: enosys,
    listxattr: enosys,
    removexattr: enosys,
    open: (path, flags, cb) => h.open(path, flags, cb),
    opendir: (_path, _flags, cb) => cb(0, 0),
    read: (path, fd, buffer, length, position, cb) => h.read(path, fd, buffer, length, position, cb),
    write: (path, fd, buffer, length, position, cb) => h.write(path, fd, buffer, length, position, cb),
    release: (path, fd, cb) => h.release(path, fd, cb),
    releasedir: (_path, _fd, cb) => cb(0),
    // fuse-native does not pass the open flags of create: the kernel has already checked O_EXCL
    // against its lookup; the handle must allow reads and writes. O_EXCL keeps the safe answer
    // (EEXIST) when the name appeared since that lookup, since the caller's flags are unknown.
    create: (path, mode, cb) => h.create(path, mode, fsConstants.O_CREAT | fsConstants.O_RDWR | fsConstants.O_EXCL, cb),
    unlink: (path, cb) => h.unlink(path, cb),
    rename: (src, dest, cb) => h.rename(src, dest, 0, cb),
    link: (src, dest, cb) => h.link(src, dest, cb),
    symlink: (src, dest, cb) => h.symlink(src, dest, cb),
    mkdir: (path, mode, cb) => h.mkdir(path, mode, cb),
    rmdir: (path, cb) => h.rmdir(path, cb),
  };
}

async function mountFuseNative(handlers: FuseHandlers, o: TransportMountOptions, logger: Logger): Promise<MountedTransport> {
  const Fuse = loadFuseClass();
  const mnt = o.mountPoint;
  const fuse = new Fuse(mnt, adapt(handlers), {
    debug: o.debug,
    allowOther: o.allowOther,
    defaultPermissions: o.defaultPermissions,
    fsname: o.fsName,
    subtype: o.subtype,
    timeout: { ...o.opTimeoutsMs },
  });
  fuse.extraOptions = [
    'big_writes',
    ...SAFE_MOUNT_FLAGS,
    `attr_timeout=${o.attrTimeoutS}`,
    `entry_timeout=${o.entryTimeoutS}`,
    `negative_timeout=${o.negativeTimeoutS}`,
    ...(o.readOnly ? ['ro'] : []),
  ];
  const optionString = fuse._fuseOptions();
  if (optionString.length > MAX_OPTIONS_LENGTH) throw new BadInputError('FUSE option string too long');

  await new Promise<void>((resolvePromise, reject) => {
    let settled = false;
    const timer = setTimeout(() => {
      if (settled) return;
      settled = true;
      logger.error({ options: optionString }, 'FUSE mount did not start in time');
      forceUnmount(mnt).then(
        () => reject(new CofferError('internal', `FUSE mount at ${mnt} did not start within ${o.mountTimeoutMs} ms`)),
        (err: unknown) => reject(err),
      );
    }, o.mountTimeoutMs);
    const failed = (message: string): void => {
      // libfuse can fail after the kernel mount (e.g. an option it rejects late), leaving a dead
      // mount behind: clear it.
      const failure = new CofferError('internal', `cannot mount FUSE at ${mnt}: ${message}`);
      fuse.releaseAfterFailedMount();
      forceUnmount(mnt).then(
        () => reject(failure),
        () => reject(failure),
      );
    };
    try {
      fuse.mount((err) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (!err) resolvePromise();
        else failed(err.message);
      });
    } catch (err) {
      settled = true;
      clearTimeout(timer);
      failed(describeError(err));
    }
  });

  let unmounted: Promise<void> | undefined;
  return {
    description: optionString,
    features: {
      maxWrite: FUSE_NATIVE_MAX_WRITE,
      writebackCache: false,
      distinctTimes: false,
      createFlags: false,
      parallelDirops: false,
      readdirplus: false,
      invalidation: false,
    },
    unmount() {
      unmounted ??= (async () => {
        const err = await new Promise<Error | null>((res) => {
          try {
            fuse.unmount((e) => res(e ?? null));
          } catch (e) {
            res(e instanceof Error ? e : new Error(String(e)));
          }
        });
        if (err) {
          logger.warn({ err: describeError(err) }, 'fuse-native unmount failed; forcing');
          await forceUnmount(mnt);
        }
      })();
      return unmounted;
    },
    invalidate() {
      // libfuse 2 through fuse-native has no notify API: the 1 s attribute timeout bounds staleness.
    },
    onExit() {
      // fuse-native does not report the end of its loop.
    },
  };
}

export function fuseNativeTransport(): FuseTransport {
  loadFuseClass(); // fail now (selection falls back or reports), not at mount time
  return { name: 'fuse-native', mount: mountFuseNative };
}
