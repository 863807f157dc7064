/**
 * The thin FUSE driver: maps kernel requests (through fuse-native / libfuse 2.9) onto the
 * workspace engine (`WorkspaceFileSystem`). It holds no file state of its own.
 *
 * Rules every handler follows:
 * - it calls the engine, answers fuse-native's callback exactly once, never throws, and turns every
 *   failure into one errno via `errnoInfo` (src/mount/errno.ts);
 * - on a read-only mount, mutating ops answer EROFS before the engine is called;
 * - failures are logged at debug (op, path, code), unexpected ones at warn; never file contents.
 * fuse-native answers ETIMEDOUT itself if the engine does not settle in time (never `timeout:false`:
 * callers would hang in D state and the mount could not be unmounted).
 *
 * Choices:
 * - symlink, link, mknod → EPERM (what symlink(2)/link(2)/mknod(2) document for a filesystem that
 *   does not support the node type); readlink → EINVAL (no entry is ever a symlink).
 * - xattr ops answer ENOSYS: the kernel then remembers that this mount has no xattrs, answers
 *   ENOTSUP (EOPNOTSUPP) to every later call without asking us (it asks getxattr
 *   "security.capability" before every write otherwise), and callers see ENOTSUP.
 * - chown: a no-op when uid/gid are -1 or the mount's owner, else EPERM (entries have no owner of
 *   their own: every entry belongs to the mounting user).
 * - `default_permissions`: the kernel checks mode bits against the owner, so with `allow_other`
 *   (only when running as root) other users get exactly what the mode bits allow.
 * - st_blksize 128 KiB (= max_write with big_writes) so tools use large buffers.
 *
 * fuse-native 2.2.6 / libfuse 2.9 quirks handled here (the e2e test pins them):
 * - `big_writes` has no option: appended to the string `_fuseOptions()` returns; option values of
 *   0 are dropped, so the timeouts are appended raw too.
 * - its `_op_fgetattr` calls `ops.getattr(path)` and drops the handle: overridden to call fgetattr.
 * - `create` does not receive the open flags (only the mode): files are created O_RDWR.
 * - utimens passes atime twice (its C code converts tv[0] for both arguments): the driver sets
 *   mtime = atime. `touch`, `touch -d` work; distinct atime/mtime (`cp -p`, `tar x`, rsync) get
 *   the atime for both. libfuse 2.9 silently ignores a change of only one of them (`touch -m`).
 *   A UTIME_NOW sentinel (1073 ms) is read as "now", defensively.
 * - after a failed mount it leaves a uv handle referenced (the process never exits): released.
 * - libfuse 2 opens /dev/fuse without O_CLOEXEC: every child this process spawns holds the
 *   connection open while it lives.
 * - handlers run on this process's event loop: anything here that blocks it on the mount (sync
 *   fs calls on it, spawning a child whose cwd is inside it) deadlocks.
 */
import { execFile } from 'node:child_process';
import { constants as fsConstants } from 'node:fs';
import { readdir, readFile, realpath, stat } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { basename, dirname, join, resolve } from 'node:path';
import type { Logger } from 'pino';
import { BadInputError, CofferError, describeError } from '../errors.js';
import type { EntryAttributes, FileSystemStats, WorkspaceFileSystem } from '../client/workspace/types.js';
import { errnoInfo } from './errno.js';

// ---------------------------------------------------------------------------------------------
// fuse-native's shapes (it ships no types)

type Code = number;
type Done = (code: Code) => void;
type Reply<V> = (code: Code, value?: V) => void;

interface FuseStat {
  mode: number;
  uid: number;
  gid: number;
  size: number;
  nlink: number;
  blksize: number;
  blocks: number;
  /** Milliseconds since the epoch (fuse-native accepts numbers or Dates). */
  atime: number;
  mtime: number;
  ctime: number;
}

interface FuseStatfs {
  bsize: number;
  frsize: number;
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  favail: number;
  fsid: number;
  flag: number;
  namemax: number;
}

interface FuseOps {
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
  readonly ops: FuseOps;
  mount(cb: (err: Error | null) => void): void;
  unmount(cb: (err: Error | null) => void): void;
  _fuseOptions(): string;
  _op_fgetattr(signal: FuseSignal, path: string, fd: number): void;
}

type FuseNativeClass = new (mnt: string, ops: FuseOps, opts: FuseNativeOptions) => FuseNativeInstance;

interface CofferFuseInstance extends FuseNativeInstance {
  extraOptions: string[];
  releaseAfterFailedMount(): void;
}

type CofferFuseClass = new (mnt: string, ops: FuseOps, opts: FuseNativeOptions) => CofferFuseInstance;

// ---------------------------------------------------------------------------------------------
// constants

const E = {
  EPERM: -1,
  ENOENT: -2,
  EIO: -5,
  EACCES: -13,
  EINVAL: -22,
  EROFS: -30,
  ENOSYS: -38,
} as const;

const S_IFDIR = fsConstants.S_IFDIR;
const S_IFREG = fsConstants.S_IFREG;
const O_ACCMODE = 3;
const W_OK = fsConstants.W_OK;
const X_OK = fsConstants.X_OK;
const UINT32_MAX = 0xffffffff;
/** chown(2) passes -1 for "unchanged"; fuse-native hands it over as an unsigned 32-bit value. */
const CHOWN_UNCHANGED = UINT32_MAX;
/** UTIME_NOW / UTIME_OMIT (tv_sec 0, tv_nsec ≈ 2^30) as fuse-native's C code converts them to ms. */
const UTIME_SENTINEL_MS = 1073;
/** max_write with big_writes under libfuse 2: advertise it as the preferred I/O size. */
const IO_BLOCK_SIZE = 128 * 1024;
const ATTR_TIMEOUT_S = 1;
const ENTRY_TIMEOUT_S = 1;
const MOUNT_TIMEOUT_MS = 10_000;
/** fuse-native copies the option string into a 1024-byte buffer. */
const MAX_OPTIONS_LENGTH = 1000;
/** Per-op answer deadlines (ms) given to fuse-native; past them the caller gets ETIMEDOUT. */
const OP_TIMEOUTS: Record<string, number> = {
  default: 15_000,
  open: 60_000,
  create: 60_000,
  read: 60_000,
  write: 60_000,
  flush: 60_000,
  fsync: 60_000,
  release: 60_000,
  truncate: 60_000,
  ftruncate: 60_000,
};

// ---------------------------------------------------------------------------------------------
// loading fuse-native lazily: requiring it fails without libfuse.so.2, which must not break
// commands that never mount.

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
          signal(code !== 0 ? code : E.EIO);
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

// ---------------------------------------------------------------------------------------------
// conversions

function timeMs(ms: number): number {
  return Number.isFinite(ms) && ms > 0 ? Math.floor(ms) : 0;
}

function nonNegativeInt(n: number, what: string): number {
  if (!Number.isSafeInteger(n) || n < 0) throw new CofferError('internal', `engine returned an invalid ${what}`);
  return n;
}

function toFuseStat(a: EntryAttributes, uid: number, gid: number): FuseStat {
  const size = nonNegativeInt(a.size, 'size');
  return {
    mode: (a.kind === 'folder' ? S_IFDIR : S_IFREG) | (a.mode & 0o7777),
    uid,
    gid,
    size,
    nlink: Number.isSafeInteger(a.nlink) && a.nlink > 0 ? Math.min(a.nlink, UINT32_MAX) : 1,
    blksize: IO_BLOCK_SIZE,
    blocks: Math.ceil(size / 512),
    atime: timeMs(a.atime),
    mtime: timeMs(a.mtime),
    ctime: timeMs(a.ctime),
  };
}

/** statvfs fields are 32-bit here: scale the block size up until the block counts fit. */
function toFuseStatfs(s: FileSystemStats): FuseStatfs {
  const clamp = (n: number): number => (Number.isFinite(n) && n > 0 ? Math.min(Math.floor(n), UINT32_MAX) : 0);
  let bsize = Number.isSafeInteger(s.blockSize) && s.blockSize > 0 ? s.blockSize : 4096;
  let total = Math.max(0, s.totalBlocks);
  let free = Math.max(0, s.freeBlocks);
  let avail = Math.max(0, s.availableBlocks);
  while (Math.max(total, free, avail) > UINT32_MAX && bsize * 2 <= UINT32_MAX) {
    bsize *= 2;
    total /= 2;
    free /= 2;
    avail /= 2;
  }
  return {
    bsize,
    frsize: bsize,
    blocks: clamp(total),
    bfree: clamp(free),
    bavail: clamp(avail),
    files: clamp(s.totalFiles),
    ffree: clamp(s.freeFiles),
    favail: clamp(s.freeFiles),
    fsid: 0,
    flag: 0,
    namemax: clamp(s.nameMax) || 255,
  };
}

/** fsname appears in `mount` and `df`: keep it to characters the option parser and mountinfo keep. */
function fsName(displayName: string | undefined): string {
  // eslint-disable-next-line no-control-regex
  const name = (displayName ?? 'workspace').replace(/[,\\\s\u0000-\u001f\u007f"']/g, '_').slice(0, 100);
  return `coffer:${name || 'workspace'}`;
}

// ---------------------------------------------------------------------------------------------

export interface FuseMountOptions {
  readOnly?: boolean;
  logger: Logger;
  /** Owner shown for every entry (default: the mounting process's uid/gid). */
  uid?: number;
  gid?: number;
  /** Shown by `mount` and `df` as `coffer:<displayName>`. */
  displayName?: string;
  /** libfuse debug output on stderr. */
  debug?: boolean;
}

export class FuseMount {
  readonly mountPoint: string;
  /** Mounted read-only (kernel `ro`): only when asked explicitly. A reader's mount is read-only through the engine, so a role change needs no remount. */
  private readonly forcedReadOnly: boolean;
  private readonly fs: WorkspaceFileSystem;
  private readonly logger: Logger;
  private readonly uid: number;
  private readonly gid: number;
  private readonly options: FuseMountOptions;
  private fuse: CofferFuseInstance | undefined;
  private mounting = false;

  constructor(fs: WorkspaceFileSystem, mountPoint: string, options: FuseMountOptions) {
    this.fs = fs;
    this.mountPoint = resolve(mountPoint);
    this.options = options;
    this.forcedReadOnly = options.readOnly === true;
    this.logger = options.logger.child({ component: 'fuse', mountPoint: this.mountPoint });
    this.uid = options.uid ?? process.getuid?.() ?? 0;
    this.gid = options.gid ?? process.getgid?.() ?? 0;
  }

  get readOnly(): boolean {
    return this.forcedReadOnly || this.fs.readOnly;
  }

  get mounted(): boolean {
    return this.fuse !== undefined;
  }

  /** Mounts and resolves once the kernel has sent INIT (the mount is usable). */
  async mount(): Promise<void> {
    if (this.fuse || this.mounting) throw new CofferError('busy', `${this.mountPoint} is already mounted by this process`);
    this.mounting = true;
    try {
      await this.doMount();
    } finally {
      this.mounting = false;
    }
  }

  private async doMount(): Promise<void> {
    const mnt = this.mountPoint;
    if (Buffer.byteLength(mnt) > 1000) throw new CofferError('name_too_long', `mount point path is too long: ${mnt}`);
    await prepareMountPoint(mnt, this.logger);

    const Fuse = loadFuseClass();
    const isRoot = process.getuid?.() === 0;
    const fuse = new Fuse(mnt, this.makeOps(), {
      debug: this.options.debug === true,
      // Root mounts on behalf of desktop users: let them in; default_permissions makes the kernel
      // apply the mode bits (without it every user could do anything).
      allowOther: isRoot,
      defaultPermissions: true,
      fsname: fsName(this.options.displayName),
      subtype: 'coffer',
      timeout: OP_TIMEOUTS,
    });
    fuse.extraOptions = [
      'big_writes',
      `attr_timeout=${ATTR_TIMEOUT_S}`,
      `entry_timeout=${ENTRY_TIMEOUT_S}`,
      'negative_timeout=0',
      ...(this.forcedReadOnly ? ['ro'] : []),
    ];
    const optionString = fuse._fuseOptions();
    if (optionString.length > MAX_OPTIONS_LENGTH) throw new BadInputError('FUSE option string too long');

    await new Promise<void>((resolvePromise, reject) => {
      let settled = false;
      const timer = setTimeout(() => {
        if (settled) return;
        settled = true;
        this.logger.error({ options: optionString }, 'FUSE mount did not start in time');
        FuseMount.forceUnmount(mnt).then(
          () => reject(new CofferError('internal', `FUSE mount at ${mnt} did not start within ${MOUNT_TIMEOUT_MS} ms`)),
          (err: unknown) => reject(err),
        );
      }, MOUNT_TIMEOUT_MS);
      try {
        fuse.mount((err) => {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          if (!err) {
            resolvePromise();
            return;
          }
          // libfuse can fail after the kernel mount (e.g. an option it rejects late), leaving a
          // dead mount behind: clear it.
          const failure = new CofferError('internal', `cannot mount FUSE at ${mnt}: ${err.message}`);
          fuse.releaseAfterFailedMount();
          FuseMount.forceUnmount(mnt).then(
            () => reject(failure),
            () => reject(failure),
          );
        });
      } catch (err) {
        settled = true;
        clearTimeout(timer);
        const failure = new CofferError('internal', `cannot mount FUSE at ${mnt}: ${describeError(err)}`);
        fuse.releaseAfterFailedMount();
        FuseMount.forceUnmount(mnt).then(
          () => reject(failure),
          () => reject(failure),
        );
      }
    });
    this.fuse = fuse;
    this.logger.info({ readOnly: this.readOnly, options: optionString }, 'mounted');
  }

  /** Unmounts (lazily: open files keep working until closed). Idempotent. */
  async unmount(): Promise<void> {
    const fuse = this.fuse;
    if (!fuse) return;
    this.fuse = undefined;
    const err = await new Promise<Error | null>((res) => {
      try {
        fuse.unmount((e) => res(e ?? null));
      } catch (e) {
        res(e instanceof Error ? e : new Error(String(e)));
      }
    });
    if (err) {
      this.logger.warn({ err: describeError(err) }, 'fuse-native unmount failed; forcing');
      await FuseMount.forceUnmount(this.mountPoint);
    }
    this.logger.info('unmounted');
  }

  /**
   * Detaches whatever FUSE mount is at `mountPoint` (also a dead one left by a crashed process):
   * `fusermount -uz`, then `fusermount3 -uz`, then `umount -l`. Quiet when nothing is mounted.
   */
  static async forceUnmount(mountPoint: string): Promise<void> {
    const mnt = await canonicalMountPath(mountPoint);
    if ((await isMountPoint(mnt)) === false) return;
    const attempts: Array<[string, string[]]> = [
      ['fusermount', ['-uz', mnt]],
      ['fusermount3', ['-uz', mnt]],
      ['umount', ['-l', mnt]],
    ];
    const failures: string[] = [];
    for (const [cmd, args] of attempts) {
      try {
        await run(cmd, args);
        return;
      } catch (err) {
        failures.push(`${cmd}: ${describeError(err)}`);
        if ((await isMountPoint(mnt)) === false) return;
      }
    }
    throw new CofferError('busy', `cannot unmount ${mnt}: ${failures.join('; ')}`);
  }

  // -------------------------------------------------------------------------------------------
  // handler plumbing

  private fail(op: string, path: string, err: unknown): Code {
    const info = errnoInfo(err);
    if (info.expected) {
      this.logger.debug({ op, path, code: info.code, errno: info.errno }, 'fuse op failed');
    } else {
      this.logger.warn({ op, path, code: info.code, errno: info.errno, err: describeError(err) }, 'fuse op failed unexpectedly');
    }
    return info.errno;
  }

  private refuse(op: string, path: string, errno: Code): Code {
    this.logger.debug({ op, path, errno }, 'fuse op refused');
    return errno;
  }

  /** Runs `work` and answers `cb` exactly once with its code (0 for void). Never throws. */
  private answer(op: string, path: string, cb: Done, work: () => Promise<number | void>): void {
    let answered = false;
    const reply = (code: Code): void => {
      if (answered) return;
      answered = true;
      try {
        cb(code);
      } catch (err) {
        this.logger.error({ op, path, err: describeError(err) }, 'fuse callback threw');
      }
    };
    let p: Promise<number | void>;
    try {
      p = work();
    } catch (err) {
      p = Promise.reject(err);
    }
    p.then(
      (code) => reply(typeof code === 'number' ? code : 0),
      (err: unknown) => reply(this.fail(op, path, err)),
    );
  }

  /** Runs `work` and answers `cb` exactly once with (0, value) or (errno). Never throws. */
  private answerValue<V>(op: string, path: string, cb: Reply<V>, work: () => Promise<V>): void {
    let answered = false;
    const reply = (code: Code, value?: V): void => {
      if (answered) return;
      answered = true;
      try {
        if (code === 0) cb(0, value);
        else cb(code);
      } catch (err) {
        this.logger.error({ op, path, err: describeError(err) }, 'fuse callback threw');
      }
    };
    let p: Promise<V>;
    try {
      p = work();
    } catch (err) {
      p = Promise.reject(err);
    }
    p.then(
      (value) => reply(0, value),
      (err: unknown) => reply(this.fail(op, path, err)),
    );
  }

  /** Answers a mutating op with EROFS on a read-only mount, else runs it. */
  private mutate(op: string, path: string, cb: Done, work: () => Promise<number | void>): void {
    if (this.readOnly) {
      cb(this.refuse(op, path, E.EROFS));
      return;
    }
    this.answer(op, path, cb, work);
  }

  private makeOps(): FuseOps {
    const fs = this.fs;
    const uid = this.uid;
    const gid = this.gid;
    const checkedHandle = (fh: number): number => {
      if (!Number.isSafeInteger(fh) || fh < 0 || fh > 0x7fffffff) {
        throw new CofferError('internal', 'engine returned an invalid file handle');
      }
      return fh;
    };
    const constant = (op: string, code: Code) => {
      return (path: string, ...rest: unknown[]): void => {
        const cb = rest[rest.length - 1];
        if (typeof cb !== 'function') return;
        if (code !== 0) this.refuse(op, path, code);
        (cb as Done)(code);
      };
    };

    return {
      init: (cb) => cb(0),

      access: (path, mode, cb) =>
        this.answer('access', path, cb, async () => {
          const a = await fs.stat(path);
          if (mode & W_OK && this.readOnly) return this.refuse('access', path, E.EROFS);
          if (mode & X_OK && a.kind === 'file' && (a.mode & 0o111) === 0) return this.refuse('access', path, E.EACCES);
          return 0;
        }),

      statfs: (path, cb) => this.answerValue('statfs', path, cb, async () => toFuseStatfs(await fs.statfs())),

      getattr: (path, cb) => this.answerValue('getattr', path, cb, async () => toFuseStat(await fs.stat(path), uid, gid)),

      fgetattr: (path, fd, cb) =>
        this.answerValue('fgetattr', path, cb, async () => toFuseStat(await fs.fstat(fd), uid, gid)),

      readdir: (path, cb) =>
        this.answerValue('readdir', path, cb, async () => {
          const names = await fs.readdir(path);
          if (!Array.isArray(names) || names.some((n) => typeof n !== 'string')) {
            throw new CofferError('internal', 'engine returned invalid directory entries');
          }
          return ['.', '..', ...names];
        }),

      opendir: (_path, _flags, cb) => cb(0, 0),
      releasedir: (_path, _fd, cb) => cb(0),
      fsyncdir: (_path, _datasync, _fd, cb) => cb(0),

      open: (path, flags, cb) => {
        if (this.readOnly && ((flags & O_ACCMODE) !== fsConstants.O_RDONLY || (flags & fsConstants.O_TRUNC) !== 0)) {
          cb(this.refuse('open', path, E.EROFS));
          return;
        }
        this.answerValue('open', path, cb, async () => checkedHandle(await fs.open(path, { flags })));
      },

      create: (path, mode, cb) => {
        if (this.readOnly) {
          cb(this.refuse('create', path, E.EROFS));
          return;
        }
        // fuse-native does not pass the open flags of create: the kernel has already checked
        // O_EXCL against its lookup; the handle must allow reads and writes.
        this.answerValue('create', path, cb, async () =>
          checkedHandle(
            await fs.create(path, mode & 0o7777, { flags: fsConstants.O_CREAT | fsConstants.O_RDWR }),
          ),
        );
      },

      read: (path, fd, buffer, length, position, cb) =>
        this.answer('read', path, cb, async () => {
          const n = await fs.read(fd, buffer, length, position);
          if (!Number.isSafeInteger(n) || n < 0 || n > length) throw new CofferError('internal', 'engine read returned an invalid length');
          return n;
        }),

      write: (path, fd, buffer, length, position, cb) => {
        if (this.readOnly) {
          cb(this.refuse('write', path, E.EROFS));
          return;
        }
        this.answer('write', path, cb, async () => {
          const n = await fs.write(fd, buffer, length, position);
          if (!Number.isSafeInteger(n) || n < 0 || n > length) throw new CofferError('internal', 'engine write returned an invalid length');
          return n;
        });
      },

      flush: (path, fd, cb) => this.answer('flush', path, cb, () => fs.flush(fd)),
      fsync: (path, _datasync, fd, cb) => this.answer('fsync', path, cb, () => fs.fsync(fd)),
      release: (path, fd, cb) => this.answer('release', path, cb, () => fs.release(fd)),

      truncate: (path, size, cb) => this.mutate('truncate', path, cb, () => fs.truncate(path, size)),
      ftruncate: (path, fd, size, cb) => this.mutate('ftruncate', path, cb, () => fs.ftruncate(fd, size)),
      unlink: (path, cb) => this.mutate('unlink', path, cb, () => fs.unlink(path)),
      mkdir: (path, mode, cb) => this.mutate('mkdir', path, cb, () => fs.mkdir(path, mode & 0o7777)),
      rmdir: (path, cb) => this.mutate('rmdir', path, cb, () => fs.rmdir(path)),
      rename: (src, dest, cb) => this.mutate('rename', src, cb, () => fs.rename(src, dest)),
      chmod: (path, mode, cb) => this.mutate('chmod', path, cb, () => fs.chmod(path, mode & 0o7777)),

      utimens: (path, atime, _mtime, cb) =>
        this.mutate('utimens', path, cb, () => {
          // fuse-native passes atime for both (see the header): use it for both.
          const t = atime === UTIME_SENTINEL_MS ? Date.now() : atime;
          return fs.utimens(path, t, t);
        }),

      chown: (path, newUid, newGid, cb) =>
        this.mutate('chown', path, cb, async () => {
          const uidOk = newUid === CHOWN_UNCHANGED || newUid === uid;
          const gidOk = newGid === CHOWN_UNCHANGED || newGid === gid;
          if (!uidOk || !gidOk) return this.refuse('chown', path, E.EPERM);
          await fs.stat(path);
          return 0;
        }),

      readlink: (path, cb) => {
        cb(this.refuse('readlink', path, E.EINVAL));
      },
      symlink: (src, dest, cb) => this.mutate('symlink', dest, cb, async () => this.refuse('symlink', dest, E.EPERM)),
      link: (src, dest, cb) => this.mutate('link', dest, cb, async () => this.refuse('link', dest, E.EPERM)),
      mknod: (path, _mode, _dev, cb) => this.mutate('mknod', path, cb, async () => this.refuse('mknod', path, E.EPERM)),

      setxattr: constant('setxattr', E.ENOSYS),
      getxattr: constant('getxattr', E.ENOSYS),
      listxattr: constant('listxattr', E.ENOSYS),
      removexattr: constant('removexattr', E.ENOSYS),
    };
  }
}

// ---------------------------------------------------------------------------------------------
// mount point helpers

function run(cmd: string, args: string[]): Promise<void> {
  return new Promise((res, rej) => {
    execFile(cmd, args, { timeout: 10_000 }, (err, _stdout, stderr) => {
      if (err) rej(new Error(`${err.message.trim()} ${String(stderr).trim()}`.trim()));
      else res();
    });
  });
}

/** Absolute path as /proc/self/mountinfo shows it (the mount point itself may be a dead mount). */
async function canonicalMountPath(mountPoint: string): Promise<string> {
  const abs = resolve(mountPoint);
  try {
    return join(await realpath(dirname(abs)), basename(abs));
  } catch {
    return abs;
  }
}

/** True/false from /proc/self/mountinfo; undefined when it cannot be read. */
async function isMountPoint(mnt: string): Promise<boolean | undefined> {
  let text: string;
  try {
    text = await readFile('/proc/self/mountinfo', 'utf8');
  } catch {
    return undefined;
  }
  for (const line of text.split('\n')) {
    const field = line.split(' ')[4];
    if (field === undefined) continue;
    const decoded = field.replace(/\\([0-7]{3})/g, (_m, oct: string) => String.fromCharCode(parseInt(oct, 8)));
    if (decoded === mnt) return true;
  }
  return false;
}

async function prepareMountPoint(mnt: string, logger: Logger): Promise<void> {
  try {
    await stat(mnt);
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    if (code === 'ENOTCONN' || code === 'ECONNABORTED') {
      logger.warn('clearing a dead FUSE mount left at the mount point');
      await FuseMount.forceUnmount(mnt);
    } else if (code === 'ENOENT') {
      throw new CofferError('not_found', `mount point does not exist: ${mnt}`);
    } else {
      throw new CofferError('internal', `cannot use mount point ${mnt}: ${describeError(err)}`);
    }
  }
  const st = await stat(mnt);
  if (!st.isDirectory()) throw new CofferError('not_a_directory', `mount point is not a directory: ${mnt}`);
  if ((await isMountPoint(await canonicalMountPath(mnt))) === true) {
    throw new CofferError('busy', `something is already mounted at ${mnt}`);
  }
  // libfuse 2 refuses non-empty mount points ("nonempty" would hide the files underneath).
  if ((await readdir(mnt)).length > 0) throw new CofferError('not_empty', `mount point is not empty: ${mnt}`);
}
