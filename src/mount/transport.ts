/**
 * The seam between the FUSE driver (src/mount/fuse-driver.ts: what each operation means for the
 * workspace engine) and a FUSE transport (how kernel requests reach those handlers):
 * - `libfuse3` (src/mount/libfuse3-transport.ts): Coffer's own binding in native/ (libfuse 3.14):
 *   1 MiB writes, optional writeback cache, parallel directory operations, readdirplus, real
 *   utimens, open flags on create, kernel cache invalidation, per-request timeouts, auto_unmount.
 * - `fuse-native` (src/mount/fuse-native-transport.ts): the npm module on libfuse 2.9, kept as the
 *   fallback when the addon is not built (e.g. `npm ci` without `make build`).
 *
 * Handlers are callback-shaped (what both libraries speak): each answers its callback exactly
 * once, with 0 / a byte count or a NEGATIVE errno. They never throw.
 */
import type { Logger } from 'pino';
import { CofferError, describeError } from '../errors.js';

export type Code = number;
export type Done = (code: Code) => void;
export type Reply<V> = (code: Code, value?: V) => void;

export interface FuseStat {
  mode: number;
  uid: number;
  gid: number;
  size: number;
  nlink: number;
  blksize: number;
  blocks: number;
  /** Milliseconds since the epoch. */
  atime: number;
  mtime: number;
  ctime: number;
}

export interface FuseStatfs {
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

/** A time for utimens: ms since the epoch, or utimensat(2)'s UTIME_NOW / UTIME_OMIT. */
export type FuseTime = number | 'now' | 'omit';

/** A directory listing; `stats[i]` (when given) lets the kernel skip a lookup of `names[i]` (readdirplus). */
export interface DirListing {
  names: string[];
  stats?: Array<FuseStat | undefined>;
}

export interface FuseHandlers {
  access(path: string, mode: number, cb: Done): void;
  statfs(path: string, cb: Reply<FuseStatfs>): void;
  getattr(path: string, cb: Reply<FuseStat>): void;
  fgetattr(path: string, fh: number, cb: Reply<FuseStat>): void;
  /** `plus`: the kernel asked for attributes too (readdirplus). */
  readdir(path: string, plus: boolean, cb: Reply<DirListing>): void;
  open(path: string, flags: number, cb: Reply<number>): void;
  /** `flags`: the open(2) flags (O_EXCL, O_TRUNC, access mode) when the transport knows them. */
  create(path: string, mode: number, flags: number, cb: Reply<number>): void;
  /** Answers the number of bytes read. `buffer` is valid only until the callback. */
  read(path: string, fh: number, buffer: Buffer, length: number, position: number, cb: Done): void;
  /** Answers the number of bytes written. `buffer` is valid only until the callback. */
  write(path: string, fh: number, buffer: Buffer, length: number, position: number, cb: Done): void;
  flush(path: string, fh: number, cb: Done): void;
  fsync(path: string, datasync: boolean, fh: number, cb: Done): void;
  release(path: string, fh: number, cb: Done): void;
  truncate(path: string, size: number, cb: Done): void;
  ftruncate(path: string, fh: number, size: number, cb: Done): void;
  utimens(path: string, atime: FuseTime, mtime: FuseTime, cb: Done): void;
  chmod(path: string, mode: number, cb: Done): void;
  /** -1 means "unchanged". */
  chown(path: string, uid: number, gid: number, cb: Done): void;
  readlink(path: string, cb: Reply<string>): void;
  symlink(target: string, path: string, cb: Done): void;
  link(src: string, dest: string, cb: Done): void;
  mknod(path: string, mode: number, dev: number, cb: Done): void;
  unlink(path: string, cb: Done): void;
  /** `flags`: renameat2(2) flags (RENAME_NOREPLACE, RENAME_EXCHANGE); 0 for rename(2). */
  rename(src: string, dest: string, flags: number, cb: Done): void;
  mkdir(path: string, mode: number, cb: Done): void;
  rmdir(path: string, cb: Done): void;
}

/**
 * Mount flags every transport sets, whoever mounts. Modes come from manifests other members wrote,
 * and a root mount (allow_other, files owned by root) that honoured a set-user-ID bit one of them put
 * on a file would let any local user run it as root. libfuse already defaults to these (and drops
 * them only for an explicit `suid`/`dev`); stated here so that no option change can lose them.
 */
export const SAFE_MOUNT_FLAGS: readonly string[] = ['nosuid', 'nodev'];

export interface TransportMountOptions {
  mountPoint: string;
  fsName: string;
  subtype: string;
  readOnly: boolean;
  allowOther: boolean;
  defaultPermissions: boolean;
  debug: boolean;
  attrTimeoutS: number;
  entryTimeoutS: number;
  negativeTimeoutS: number;
  /** Kernel writeback cache (libfuse3 only; ignored elsewhere). */
  writebackCache: boolean;
  /** Answer deadlines per operation name (ms; `default` for the rest): past them the caller gets an error. */
  opTimeoutsMs: Readonly<Record<string, number>>;
  /** How long INIT may take. */
  mountTimeoutMs: number;
}

/** What the kernel connection ended up with (logged, and used by the driver). */
export interface NegotiatedFeatures {
  maxWrite: number;
  writebackCache: boolean;
  /** utimens receives distinct atime/mtime, UTIME_NOW and UTIME_OMIT. */
  distinctTimes: boolean;
  /** create receives the open flags. */
  createFlags: boolean;
  parallelDirops: boolean;
  readdirplus: boolean;
  invalidation: boolean;
}

export interface MountedTransport {
  readonly features: NegotiatedFeatures;
  /** What was passed to libfuse (for logs). */
  readonly description: string;
  /**
   * Unmounts (lazily: files still open keep the connection until closed or until the grace period
   * ends) and answers every pending request. Resolves once the connection is gone. Idempotent.
   */
  unmount(): Promise<void>;
  /** Drops the kernel's cached attributes and data of these paths (remote changes). */
  invalidate(paths: readonly string[]): void;
  /** Called once if the kernel connection ends without unmount() (e.g. `umount` from outside). */
  onExit(listener: () => void): void;
}

export interface FuseTransport {
  readonly name: TransportName;
  mount(handlers: FuseHandlers, options: TransportMountOptions, logger: Logger): Promise<MountedTransport>;
}

export const TRANSPORT_NAMES = ['libfuse3', 'fuse-native'] as const;
export type TransportName = (typeof TRANSPORT_NAMES)[number];
export type TransportChoice = TransportName | 'auto';

export function isTransportChoice(s: string): s is TransportChoice {
  return s === 'auto' || (TRANSPORT_NAMES as readonly string[]).includes(s);
}

/** `COFFER_FUSE_TRANSPORT` (libfuse3 | fuse-native | auto), validated. */
export function transportFromEnv(env: NodeJS.ProcessEnv = process.env): TransportChoice | undefined {
  const v = env.COFFER_FUSE_TRANSPORT?.trim();
  if (!v) return undefined;
  if (!isTransportChoice(v)) throw new CofferError('bad_request', `COFFER_FUSE_TRANSPORT must be libfuse3, fuse-native or auto, not "${v}"`);
  return v;
}

/**
 * The transport to use: a forced one (an error if it cannot load), or automatically libfuse3 when
 * its addon loads, else fuse-native (with a log line saying why).
 */
export async function selectTransport(choice: TransportChoice | undefined, logger: Logger): Promise<FuseTransport> {
  const wanted = choice ?? transportFromEnv() ?? 'auto';
  if (wanted === 'fuse-native') return (await import('./fuse-native-transport.js')).fuseNativeTransport();
  const libfuse3 = await import('./libfuse3-transport.js');
  if (wanted === 'libfuse3') return libfuse3.libfuse3Transport();
  try {
    return libfuse3.libfuse3Transport();
  } catch (err) {
    logger.info({ reason: describeError(err) }, 'libfuse3 addon not available (run `make build`): using fuse-native');
    return (await import('./fuse-native-transport.js')).fuseNativeTransport();
  }
}
