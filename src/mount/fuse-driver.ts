/**
 * The thin FUSE driver: maps kernel requests onto the workspace engine (`WorkspaceFileSystem`). It
 * holds no file state of its own. How requests arrive is a transport's business
 * (src/mount/transport.ts): Coffer's libfuse3 addon by default, fuse-native (libfuse 2.9) as the
 * fallback; their differences are in their own files.
 *
 * Rules every handler follows:
 * - it calls the engine, answers its callback exactly once, never throws, and turns every failure
 *   into one errno via `errnoInfo` (src/mount/errno.ts);
 * - on a read-only mount, mutating ops answer EROFS before the engine is called;
 * - failures are logged at debug (op, path, code), unexpected ones at warn; never file contents.
 * Transports answer ETIMEDOUT themselves if the engine does not settle in time (OP_TIMEOUTS).
 *
 * Choices:
 * - symlink, link, mknod → EPERM (what symlink(2)/link(2)/mknod(2) document for a filesystem that
 *   does not support the node type); readlink → EINVAL (no entry is ever a symlink).
 * - xattr ops answer ENOSYS (both transports): the kernel then remembers that this mount has no
 *   xattrs, answers ENOTSUP (EOPNOTSUPP) to every later call without asking us (it asks getxattr
 *   "security.capability" before every write otherwise), and callers see ENOTSUP.
 * - chown: a no-op when uid/gid are -1 or the mount's owner, else EPERM (entries have no owner of
 *   their own: every entry belongs to the mounting user).
 * - `default_permissions`: the kernel checks mode bits against the owner, so with `allow_other`
 *   (only when running as root) other users get exactly what the mode bits allow.
 * - st_blksize = the transport's max_write so tools use large buffers.
 * - utimens with UTIME_OMIT for one time keeps the engine's current value (the engine takes both).
 * - rename with RENAME_NOREPLACE: EEXIST when the destination exists (checked, then renamed: the
 *   engine has no atomic variant); RENAME_EXCHANGE: EINVAL (callers fall back).
 * - writeback cache (libfuse3, opt-in): the kernel keeps dirty pages and owns size and mtime
 *   while a file is open; it may read through a write-only handle (to fill partial pages) and
 *   computes O_APPEND positions itself, so handles are opened O_RDWR without O_APPEND.
 * - readdirplus: listings carry each child's attributes (engine stats, no kernel round trip).
 * - handlers run on this process's event loop: anything here that blocks it on the mount (sync
 *   fs calls on it, spawning a child whose cwd is inside it) deadlocks.
 */
import { constants as fsConstants } from 'node:fs';
import { resolve } from 'node:path';
import type { Logger } from 'pino';
import { CofferError, describeError } from '../errors.js';
import type { EntryAttributes, FileSystemStats, WorkspaceFileSystem } from '../client/workspace/types.js';
import { errnoInfo } from './errno.js';
import { forceUnmount, prepareMountPoint } from './mount-point.js';
import {
  selectTransport,
  type Code,
  type DirListing,
  type Done,
  type FuseHandlers,
  type FuseStat,
  type FuseStatfs,
  type FuseTime,
  type MountedTransport,
  type NegotiatedFeatures,
  type Reply,
  type TransportChoice,
  type TransportName,
} from './transport.js';

// ---------------------------------------------------------------------------------------------
// constants

const E = {
  EPERM: -1,
  ENOENT: -2,
  EIO: -5,
  EACCES: -13,
  EEXIST: -17,
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
const RENAME_NOREPLACE = 1;
const RENAME_EXCHANGE = 2;
const ATTR_TIMEOUT_S = 1;
const ENTRY_TIMEOUT_S = 1;
const MOUNT_TIMEOUT_MS = 10_000;
/** Per-op answer deadlines (ms); past them the caller gets ETIMEDOUT. */
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
// conversions

function timeMs(ms: number): number {
  return Number.isFinite(ms) && ms > 0 ? Math.floor(ms) : 0;
}

function nonNegativeInt(n: number, what: string): number {
  if (!Number.isSafeInteger(n) || n < 0) throw new CofferError('internal', `engine returned an invalid ${what}`);
  return n;
}

function toFuseStat(a: EntryAttributes, uid: number, gid: number, blksize: number): FuseStat {
  const size = nonNegativeInt(a.size, 'size');
  return {
    mode: (a.kind === 'folder' ? S_IFDIR : S_IFREG) | (a.mode & 0o7777),
    uid,
    gid,
    size,
    nlink: Number.isSafeInteger(a.nlink) && a.nlink > 0 ? Math.min(a.nlink, UINT32_MAX) : 1,
    blksize,
    blocks: Math.ceil(size / 512),
    atime: timeMs(a.atime),
    mtime: timeMs(a.mtime),
    ctime: timeMs(a.ctime),
  };
}

/** statvfs fields are 32-bit under fuse-native: scale the block size up until the block counts fit. */
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

function childPath(dir: string, name: string): string {
  return dir === '/' ? `/${name}` : `${dir}/${name}`;
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
  /** libfuse3 | fuse-native | auto (default: COFFER_FUSE_TRANSPORT, else auto). */
  transport?: TransportChoice;
  /** Kernel writeback cache (libfuse3 only; default: COFFER_FUSE_WRITEBACK=1, else off). */
  writebackCache?: boolean;
  /** Answer deadlines per op name (ms), merged over the defaults. */
  opTimeoutsMs?: Readonly<Record<string, number>>;
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
  private session: MountedTransport | undefined;
  private transportName: TransportName | undefined;
  private mounting = false;
  /** Set from what the kernel negotiated; read by handlers. */
  private writeback = false;
  private blksize = 128 * 1024;

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
    return this.session !== undefined;
  }

  /** The transport in use (undefined until mounted). */
  get transport(): TransportName | undefined {
    return this.transportName;
  }

  /** What the kernel connection negotiated (undefined until mounted). */
  get features(): NegotiatedFeatures | undefined {
    return this.session?.features;
  }

  /** Mounts and resolves once the kernel has sent INIT (the mount is usable). */
  async mount(): Promise<void> {
    if (this.session || this.mounting) throw new CofferError('busy', `${this.mountPoint} is already mounted by this process`);
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
    const transport = await selectTransport(this.options.transport, this.logger);
    const isRoot = process.getuid?.() === 0;
    const writebackCache = this.options.writebackCache ?? process.env.COFFER_FUSE_WRITEBACK === '1';
    // Handlers read these from the first request on (INIT comes before any other request).
    this.writeback = writebackCache && !this.forcedReadOnly && transport.name === 'libfuse3';
    const session = await transport.mount(
      this.makeHandlers(),
      {
        mountPoint: mnt,
        fsName: fsName(this.options.displayName),
        subtype: 'coffer',
        readOnly: this.forcedReadOnly,
        // Root mounts on behalf of desktop users: let them in; default_permissions makes the kernel
        // apply the mode bits (without it every user could do anything).
        allowOther: isRoot,
        defaultPermissions: true,
        debug: this.options.debug === true,
        attrTimeoutS: ATTR_TIMEOUT_S,
        entryTimeoutS: ENTRY_TIMEOUT_S,
        negativeTimeoutS: 0,
        writebackCache: this.writeback,
        opTimeoutsMs: { ...OP_TIMEOUTS, ...this.options.opTimeoutsMs },
        mountTimeoutMs: MOUNT_TIMEOUT_MS,
      },
      this.logger,
    );
    this.session = session;
    this.transportName = transport.name;
    this.writeback = session.features.writebackCache;
    this.blksize = session.features.maxWrite;
    session.onExit(() => {
      if (this.session === session) this.session = undefined;
    });
    this.logger.info({ readOnly: this.readOnly, transport: transport.name, options: session.description, features: session.features }, 'mounted');
  }

  /** Unmounts (lazily: open files keep working for a short grace period). Idempotent. */
  async unmount(): Promise<void> {
    const session = this.session;
    if (!session) return;
    this.session = undefined;
    try {
      await session.unmount();
    } catch (err) {
      this.logger.warn({ err: describeError(err) }, 'unmount failed; forcing');
      await FuseMount.forceUnmount(this.mountPoint);
    }
    this.logger.info('unmounted');
  }

  /**
   * Tells the kernel that these paths changed behind its back (a synced remote change): it drops
   * their cached attributes and data. A no-op on transports without invalidation.
   */
  invalidate(paths: readonly string[]): void {
    if (!this.session || paths.length === 0) return;
    this.logger.debug({ count: paths.length }, 'invalidating kernel caches');
    this.session.invalidate(paths);
  }

  /**
   * Detaches whatever FUSE mount is at `mountPoint` (also a dead one left by a crashed process):
   * `fusermount -uz`, then `fusermount3 -uz`, then `umount -l`. Quiet when nothing is mounted.
   */
  static async forceUnmount(mountPoint: string): Promise<void> {
    await forceUnmount(mountPoint);
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

  /**
   * Runs `work` and answers `cb` exactly once with its code (0 for void). Never throws. (One of the
   * two `then` callbacks runs, once: no flag needed; every request comes through here.)
   */
  private answer(op: string, path: string, cb: Done, work: () => Promise<number | void>): void {
    this.run(work).then(
      (code) => this.call(op, path, cb, typeof code === 'number' ? code : 0),
      (err: unknown) => this.call(op, path, cb, this.fail(op, path, err)),
    );
  }

  /** Runs `work` and answers `cb` exactly once with (0, value) or (errno). Never throws. */
  private answerValue<V>(op: string, path: string, cb: Reply<V>, work: () => Promise<V>): void {
    this.run(work).then(
      (value) => this.call(op, path, cb, 0, value),
      (err: unknown) => this.call(op, path, cb, this.fail(op, path, err)),
    );
  }

  /** `work()`, a synchronous throw turned into a rejection. */
  private run<T>(work: () => Promise<T>): Promise<T> {
    try {
      return work();
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** Answers the transport; a callback that throws is logged, never passed on. */
  private call<V>(op: string, path: string, cb: Reply<V>, code: Code, value?: V): void {
    try {
      if (code === 0 && value !== undefined) cb(0, value);
      else cb(code);
    } catch (err) {
      this.logger.error({ op, path, err: describeError(err) }, 'fuse callback threw');
    }
  }

  /** Answers a mutating op with EROFS on a read-only mount, else runs it. */
  private mutate(op: string, path: string, cb: Done, work: () => Promise<number | void>): void {
    if (this.readOnly) {
      cb(this.refuse(op, path, E.EROFS));
      return;
    }
    this.answer(op, path, cb, work);
  }

  /** Open flags as the engine should see them (see the header on writeback cache). */
  private engineFlags(flags: number): number {
    if (!this.writeback) return flags;
    let f = flags & ~fsConstants.O_APPEND;
    if ((f & O_ACCMODE) === fsConstants.O_WRONLY) f = (f & ~O_ACCMODE) | fsConstants.O_RDWR;
    return f;
  }

  private makeHandlers(): FuseHandlers {
    const fs = this.fs;
    const uid = this.uid;
    const gid = this.gid;
    const stat = (a: EntryAttributes): FuseStat => toFuseStat(a, uid, gid, this.blksize);
    const checkedHandle = (fh: number): number => {
      if (!Number.isSafeInteger(fh) || fh < 0 || fh > 0x7fffffff) {
        throw new CofferError('internal', 'engine returned an invalid file handle');
      }
      return fh;
    };
    const resolveTime = async (path: string, atime: FuseTime, mtime: FuseTime): Promise<[number, number]> => {
      const now = Date.now();
      let current: EntryAttributes | undefined;
      const pick = async (t: FuseTime, which: 'atime' | 'mtime'): Promise<number> => {
        if (t === 'now') return now;
        if (t !== 'omit') return t;
        current ??= await fs.stat(path);
        return current[which];
      };
      return [await pick(atime, 'atime'), await pick(mtime, 'mtime')];
    };

    return {
      access: (path, mode, cb) =>
        this.answer('access', path, cb, async () => {
          const a = await fs.stat(path);
          if (mode & W_OK && this.readOnly) return this.refuse('access', path, E.EROFS);
          if (mode & X_OK && a.kind === 'file' && (a.mode & 0o111) === 0) return this.refuse('access', path, E.EACCES);
          return 0;
        }),

      statfs: (path, cb) => this.answerValue('statfs', path, cb, async () => toFuseStatfs(await fs.statfs())),

      getattr: (path, cb) => this.answerValue('getattr', path, cb, async () => stat(await fs.stat(path))),

      fgetattr: (path, fd, cb) => this.answerValue('fgetattr', path, cb, async () => stat(await fs.fstat(fd))),

      readdir: (path, plus, cb) =>
        this.answerValue('readdir', path, cb, async (): Promise<DirListing> => {
          const names = await fs.readdir(path);
          if (!Array.isArray(names) || names.some((n) => typeof n !== 'string')) {
            throw new CofferError('internal', 'engine returned invalid directory entries');
          }
          if (!plus) return { names: ['.', '..', ...names] };
          // An entry whose attributes fail is listed without them (the kernel looks it up itself).
          const stats = await Promise.all(names.map((n) => fs.stat(childPath(path, n)).then(stat, () => undefined)));
          return { names: ['.', '..', ...names], stats: [undefined, undefined, ...stats] };
        }),

      open: (path, flags, cb) => {
        if (this.readOnly && ((flags & O_ACCMODE) !== fsConstants.O_RDONLY || (flags & fsConstants.O_TRUNC) !== 0)) {
          cb(this.refuse('open', path, E.EROFS));
          return;
        }
        this.answerValue('open', path, cb, async () => checkedHandle(await fs.open(path, { flags: this.engineFlags(flags) })));
      },

      create: (path, mode, flags, cb) => {
        if (this.readOnly) {
          cb(this.refuse('create', path, E.EROFS));
          return;
        }
        this.answerValue('create', path, cb, async () =>
          checkedHandle(await fs.create(path, mode & 0o7777, { flags: this.engineFlags(flags | fsConstants.O_CREAT) })),
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
      rename: (src, dest, flags, cb) =>
        this.mutate('rename', src, cb, async () => {
          if (flags & RENAME_EXCHANGE || flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE)) return this.refuse('rename', src, E.EINVAL);
          if (flags & RENAME_NOREPLACE) {
            const exists = await fs.stat(dest).then(
              () => true,
              (err: unknown) => {
                if (errnoInfo(err).errno === E.ENOENT) return false;
                throw err;
              },
            );
            if (exists) return this.refuse('rename', src, E.EEXIST);
          }
          await fs.rename(src, dest);
          return 0;
        }),
      chmod: (path, mode, cb) => this.mutate('chmod', path, cb, () => fs.chmod(path, mode & 0o7777)),

      utimens: (path, atime, mtime, cb) =>
        this.mutate('utimens', path, cb, async () => {
          if (atime === 'omit' && mtime === 'omit') return 0;
          const [a, m] = await resolveTime(path, atime, mtime);
          await fs.utimens(path, a, m);
          return 0;
        }),

      chown: (path, newUid, newGid, cb) =>
        this.mutate('chown', path, cb, async () => {
          const uidOk = newUid === -1 || newUid === uid;
          const gidOk = newGid === -1 || newGid === gid;
          if (!uidOk || !gidOk) return this.refuse('chown', path, E.EPERM);
          await fs.stat(path);
          return 0;
        }),

      readlink: (path, cb) => {
        cb(this.refuse('readlink', path, E.EINVAL));
      },
      symlink: (_target, path, cb) => this.mutate('symlink', path, cb, async () => this.refuse('symlink', path, E.EPERM)),
      link: (_src, dest, cb) => this.mutate('link', dest, cb, async () => this.refuse('link', dest, E.EPERM)),
      mknod: (path, _mode, _dev, cb) => this.mutate('mknod', path, cb, async () => this.refuse('mknod', path, E.EPERM)),
    };
  }
}

export type { TransportChoice, TransportName } from './transport.js';
