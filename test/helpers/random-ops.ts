/**
 * The random-operation verifier: a seeded PRNG (mulberry32) generates POSIX operations that run
 * against a real mounted workspace AND an in-memory reference model; every read, listing, stat size
 * and error code is compared. Operations are plain JSON (data to write is regenerated from a seed),
 * so a log replays exactly, and any sub-sequence of a log is itself a valid run (the model computes
 * the expected outcome of whatever state it reaches): that is what the shrinker relies on (delta
 * debugging of the failing prefix, replayed in fresh folders of a fresh mount of a new workspace).
 *
 * Operations: open (O_RDONLY/O_WRONLY/O_RDWR with O_CREAT, O_EXCL, O_TRUNC, O_APPEND) into up to 8
 * descriptor slots, close, pwrite/pread at offsets around 512 KiB block boundaries, at and past EOF
 * (sizes 1 B .. 1.5 MiB, skewed small), ftruncate/truncate, fsync, fstat, stat, readdir, whole-file
 * reads, mkdir, rmdir, unlink (also of open files), rename (over files, across folders, folders);
 * `par`: 2-3 descriptor operations issued at once, kept order-independent (different files, or
 * non-overlapping writes); `check`: the whole tree; `remount`: restart the mount (same or fresh store).
 *
 * Only async fs calls on the mount: the test server runs in this process, and a mount that has to
 * fetch from it would deadlock behind a synchronous call.
 *
 * libfuse 2 specifics the model follows:
 * - unlinking (or renaming over) a file that is open renames it to `.fuse_hidden*` in the same
 *   folder until the last close; such names are left out of listings, but the model counts them
 *   per folder (a folder holding one is not empty: rmdir gets ENOTEMPTY);
 * - FUSE RELEASE is asynchronous after close(2): a file closed a moment ago can still count as
 *   open, so an unlink may hide it briefly. Hidden counts are therefore compared after polling, and
 *   a rmdir/rename that got ENOTEMPTY only because of such a leftover is retried;
 * - a folder removed while a descriptor of it is open has no path left for the high-level API:
 *   fstat/fsync on that descriptor answer ENOENT (accepted, and counted, for exactly that case);
 * - O_DIRECT on a folder is EINVAL (FUSE folders have no direct_IO).
 */
import { constants as fsc } from 'node:fs';
import * as fsp from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Test } from 'tap';
import { newWorkspace } from './client.js';
import { mountWorkspace, type Environment, type MountedWorkspace } from './mount.js';
import { mulberry32, Rng } from './prng.js';

export const BLOCK = 524_288;
const MAX_WRITE = 1_572_864; // 1.5 MiB
/** Soft bound of one file's size (writes are steered below it). */
const MAX_FILE = 12 * BLOCK;
/** Soft bound of all file bytes in the model (past it, shrinking operations are preferred). */
const MAX_TOTAL = 48 * 1024 * 1024;
export const MAX_SLOTS = 8;
const HIDDEN_PREFIX = '.fuse_hidden';
const NAMES = ['a', 'b', 'c', 'f0', 'f1', 'f2', 'f3', 'f4', 'f5', 'x y', 'é.txt'];
const DIR_NAMES = ['a', 'b', 'c', 'x y'];
const FILE_NAMES = ['f0', 'f1', 'f2', 'f3', 'f4', 'f5', 'é.txt'];


/** The bytes of a write, regenerated from its seed (so logs stay small and replay exactly). */
export function payload(seed: number, length: number): Buffer {
  const next = mulberry32(seed);
  const b = Buffer.allocUnsafe(length);
  let i = 0;
  for (; i + 4 <= length; i += 4) b.writeUInt32LE(next(), i);
  if (i < length) {
    const last = next();
    for (let k = 0; i < length; i++, k++) b[i] = (last >>> (8 * k)) & 0xff;
  }
  return b;
}

// ---------------------------------------------------------------------------------------------
// operations (JSON-serialisable)

export type Access = 'r' | 'w' | 'rw';
export type Op =
  /** `direct`: O_DIRECT, so reads and writes skip the kernel's page cache and reach the engine (ignored on a plain directory). */
  | { op: 'open'; slot: number; path: string; acc: Access; creat?: boolean; excl?: boolean; trunc?: boolean; append?: boolean; direct?: boolean }
  | { op: 'close'; slot: number }
  | { op: 'write'; slot: number; offset: number; length: number; data: number }
  | { op: 'read'; slot: number; offset: number; length: number }
  | { op: 'ftruncate'; slot: number; size: number }
  | { op: 'fsync'; slot: number }
  | { op: 'fstat'; slot: number }
  | { op: 'truncate'; path: string; size: number }
  | { op: 'stat'; path: string }
  | { op: 'readdir'; path: string }
  | { op: 'readFile'; path: string }
  | { op: 'mkdir'; path: string }
  | { op: 'rmdir'; path: string }
  | { op: 'unlink'; path: string }
  | { op: 'rename'; from: string; to: string }
  /** Descriptor operations issued at once (the model applies them in order: the generator keeps them commutative). */
  | { op: 'par'; ops: ParOp[] }
  /** The whole tree (listings, sizes, contents) and every open descriptor against the model. */
  | { op: 'check' }
  /** Close every descriptor, restart the mount (`fresh`: after a full sync, an empty local store), compare the tree. */
  | { op: 'remount'; fresh: boolean };

export type OpKind = Op['op'];
export type ParOp = Extract<Op, { op: 'write' | 'read' | 'ftruncate' | 'fsync' }>;

function openFlags(op: Extract<Op, { op: 'open' }>, fuse: boolean): number {
  let f = op.acc === 'r' ? fsc.O_RDONLY : op.acc === 'w' ? fsc.O_WRONLY : fsc.O_RDWR;
  if (op.creat) f |= fsc.O_CREAT;
  if (op.excl) f |= fsc.O_EXCL;
  if (op.trunc) f |= fsc.O_TRUNC;
  if (op.append) f |= fsc.O_APPEND;
  // FUSE takes unaligned O_DIRECT I/O; local file systems want aligned buffers.
  if (op.direct && fuse) f |= fsc.O_DIRECT;
  return f;
}

// ---------------------------------------------------------------------------------------------
// the reference model

export class Errno extends Error {
  constructor(readonly code: string) {
    super(code);
  }
}

interface MFile {
  kind: 'file';
  ino: number;
  data: Buffer; // capacity >= size; bytes past size are zero
  size: number;
  /** Descriptors of the verifier open on it. */
  open: number;
  /** The folder holding its `.fuse_hidden*` name while it is unlinked but open. */
  hiddenIn: MDir | null;
}
interface MDir {
  kind: 'dir';
  children: Map<string, MNode>;
  hidden: Set<MFile>;
}
type MNode = MFile | MDir;

export interface ModelDescriptor {
  node: MNode;
  readable: boolean;
  writable: boolean;
  append: boolean;
}

function splitPath(path: string): string[] {
  return path.split('/').filter((p) => p.length > 0);
}

/** POSIX semantics (Linux errno choices) over a tree of folders and byte buffers. */
export class Model {
  readonly root: MDir = { kind: 'dir', children: new Map(), hidden: new Set() };
  private nextIno = 1;
  /** How many files went on living unlinked through an open descriptor. */
  hiddenEvents = 0;

  /** `fuse`: a libfuse 2 mount (.fuse_hidden names for open unlinked files, O_DIRECT); false: a plain local file system. */
  constructor(private readonly fuse = true) {}

  resolve(path: string): MNode {
    let cur: MNode = this.root;
    for (const name of splitPath(path)) {
      if (cur.kind !== 'dir') throw new Errno('ENOTDIR');
      const child: MNode | undefined = cur.children.get(name);
      if (!child) throw new Errno('ENOENT');
      cur = child;
    }
    return cur;
  }

  private parentOf(path: string): { dir: MDir; name: string } {
    const parts = splitPath(path);
    const name = parts.pop();
    if (name === undefined) throw new Error(`operation on the root: ${path}`);
    const dir = this.resolve(`/${parts.join('/')}`);
    if (dir.kind !== 'dir') throw new Errno('ENOTDIR');
    return { dir, name };
  }

  private static isEmpty(d: MDir): boolean {
    return d.children.size === 0 && d.hidden.size === 0;
  }

  /** Is `inner` the folder `outer` or inside it? */
  private contains(outer: MDir, inner: MDir): boolean {
    const path = this.pathOf(inner);
    const outerPath = this.pathOf(outer);
    if (path === null || outerPath === null) return false;
    return path === outerPath || path.startsWith(outerPath === '/' ? '/' : `${outerPath}/`);
  }

  /** Path of a node in the tree (null when it has no name: unlinked). */
  pathOf(target: MNode): string | null {
    if (target === this.root) return '/';
    const walk = (d: MDir, prefix: string): string | null => {
      for (const [name, child] of d.children) {
        const p = `${prefix}/${name}`;
        if (child === target) return p;
        if (child.kind === 'dir') {
          const r = walk(child, p);
          if (r !== null) return r;
        }
      }
      return null;
    };
    return walk(this.root, '');
  }

  private newFile(): MFile {
    return { kind: 'file', ino: this.nextIno++, data: Buffer.alloc(0), size: 0, open: 0, hiddenIn: null };
  }

  private static resize(f: MFile, size: number): void {
    if (size > f.data.length) {
      const grown = Buffer.alloc(Math.max(size, Math.min(f.data.length * 2, size + 8 * BLOCK)));
      f.data.copy(grown, 0, 0, f.size);
      f.data = grown;
    }
    if (size < f.size) f.data.fill(0, size, f.size);
    f.size = size;
  }

  /** A name goes away: an open file becomes hidden in `dir` (libfuse 2), else it is gone. */
  private dropName(dir: MDir, name: string): void {
    const node = dir.children.get(name);
    dir.children.delete(name);
    if (node && node.kind === 'file' && node.open > 0) {
      this.hiddenEvents++;
      if (!this.fuse) return;
      node.hiddenIn = dir;
      dir.hidden.add(node);
    }
  }

  open(path: string, acc: Access, creat: boolean, excl: boolean, trunc: boolean, append: boolean, direct = false): ModelDescriptor {
    const { dir, name } = this.parentOf(path);
    let node = dir.children.get(name);
    if (!node) {
      if (!creat) throw new Errno('ENOENT');
      node = this.newFile();
      dir.children.set(name, node);
    } else {
      if (creat && excl) throw new Errno('EEXIST');
      if (node.kind === 'dir') {
        if (acc !== 'r' || creat || trunc) throw new Errno('EISDIR');
        // do_dentry_open: O_DIRECT needs a direct_IO address-space op, which FUSE folders lack.
        if (direct && this.fuse) throw new Errno('EINVAL');
      } else if (trunc) Model.resize(node, 0);
    }
    if (node.kind === 'file') node.open++;
    return { node, readable: acc !== 'w', writable: acc !== 'r', append };
  }

  close(d: ModelDescriptor): void {
    const f = d.node;
    if (f.kind !== 'file') return;
    f.open--;
    if (f.open === 0 && f.hiddenIn) {
      f.hiddenIn.hidden.delete(f);
      f.hiddenIn = null;
    }
  }

  write(d: ModelDescriptor, offset: number, data: Buffer): number {
    if (!d.writable || d.node.kind !== 'file') throw new Errno('EBADF');
    const f = d.node;
    const pos = d.append ? f.size : offset;
    if (pos + data.length > f.size) Model.resize(f, pos + data.length);
    data.copy(f.data, pos);
    return data.length;
  }

  read(d: ModelDescriptor, offset: number, length: number): Buffer {
    if (d.node.kind === 'dir') throw new Errno('EISDIR');
    if (!d.readable) throw new Errno('EBADF');
    const f = d.node;
    if (offset >= f.size) return Buffer.alloc(0);
    return Buffer.from(f.data.subarray(offset, Math.min(f.size, offset + length)));
  }

  ftruncate(d: ModelDescriptor, size: number): void {
    if (d.node.kind !== 'file' || !d.writable) throw new Errno('EINVAL');
    Model.resize(d.node, size);
  }

  fstat(d: ModelDescriptor): { kind: 'file' | 'dir'; size: number } {
    return { kind: d.node.kind, size: d.node.kind === 'file' ? d.node.size : 0 };
  }

  truncate(path: string, size: number): void {
    const node = this.resolve(path);
    if (node.kind === 'dir') throw new Errno('EISDIR');
    Model.resize(node, size);
  }

  stat(path: string): { kind: 'file' | 'dir'; size: number } {
    const node = this.resolve(path);
    return { kind: node.kind, size: node.kind === 'file' ? node.size : 0 };
  }

  readdir(path: string): { names: string[]; hidden: number } {
    const node = this.resolve(path);
    if (node.kind !== 'dir') throw new Errno('ENOTDIR');
    return { names: [...node.children.keys()].sort(), hidden: node.hidden.size };
  }

  readFile(path: string): Buffer {
    const node = this.resolve(path);
    if (node.kind === 'dir') throw new Errno('EISDIR');
    return Buffer.from(node.data.subarray(0, node.size));
  }

  mkdir(path: string): void {
    const { dir, name } = this.parentOf(path);
    if (dir.children.has(name)) throw new Errno('EEXIST');
    dir.children.set(name, { kind: 'dir', children: new Map(), hidden: new Set() });
  }

  rmdir(path: string): void {
    const { dir, name } = this.parentOf(path);
    const node = dir.children.get(name);
    if (!node) throw new Errno('ENOENT');
    if (node.kind !== 'dir') throw new Errno('ENOTDIR');
    if (!Model.isEmpty(node)) throw new Errno('ENOTEMPTY');
    dir.children.delete(name);
  }

  unlink(path: string): void {
    const { dir, name } = this.parentOf(path);
    const node = dir.children.get(name);
    if (!node) throw new Errno('ENOENT');
    if (node.kind === 'dir') throw new Errno('EISDIR');
    this.dropName(dir, name);
  }

  /** Linux order of checks (do_renameat2 / vfs_rename), the file system's ENOTEMPTY last. */
  rename(from: string, to: string): void {
    const src = this.parentOf(from);
    const dst = this.parentOf(to);
    const moving = src.dir.children.get(src.name);
    if (!moving) throw new Errno('ENOENT');
    const target = dst.dir.children.get(dst.name);
    // The source must not be an ancestor of the target (its folder or above): EINVAL.
    if (moving.kind === 'dir' && src.dir !== dst.dir && this.contains(moving, dst.dir)) throw new Errno('EINVAL');
    // The target must not be an ancestor of the source: ENOTEMPTY.
    if (target && target.kind === 'dir' && src.dir !== dst.dir && this.contains(target, src.dir)) throw new Errno('ENOTEMPTY');
    if (target === moving) return;
    if (target) {
      if (moving.kind === 'dir' && target.kind !== 'dir') throw new Errno('ENOTDIR');
      if (moving.kind === 'file' && target.kind === 'dir') throw new Errno('EISDIR');
      if (target.kind === 'dir' && !Model.isEmpty(target)) throw new Errno('ENOTEMPTY');
      this.dropName(dst.dir, dst.name);
    }
    src.dir.children.delete(src.name);
    dst.dir.children.set(dst.name, moving);
  }

  /** Every named path, for the generator and the tree comparison. */
  paths(): { files: string[]; dirs: string[]; totalBytes: number } {
    const files: string[] = [];
    const dirs: string[] = ['/'];
    let totalBytes = 0;
    const walk = (d: MDir, prefix: string) => {
      for (const [name, child] of d.children) {
        const p = `${prefix}/${name}`;
        if (child.kind === 'dir') {
          dirs.push(p);
          walk(child, p);
        } else {
          files.push(p);
          totalBytes += child.size;
        }
      }
      for (const h of d.hidden) totalBytes += h.size;
    };
    walk(this.root, '');
    return { files, dirs, totalBytes };
  }

  sizeOf(path: string): number {
    try {
      const n = this.resolve(path);
      return n.kind === 'file' ? n.size : 0;
    } catch {
      return 0;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// the generator

function skewedLength(rng: Rng, max = MAX_WRITE): number {
  const r = rng.float();
  let n: number;
  if (r < 0.45) n = rng.range(1, 512);
  else if (r < 0.7) n = rng.range(513, 16_384);
  else if (r < 0.85) n = rng.range(16_385, 200_000);
  else if (r < 0.95) n = rng.range(200_001, 600_000);
  else n = rng.range(600_001, MAX_WRITE);
  return Math.max(1, Math.min(n, max));
}

/** Offsets that matter: 0, inside, at and past EOF, and around 512 KiB block boundaries. */
function interestingOffset(rng: Rng, size: number, length: number): number {
  const k = rng.int(Math.min(12, Math.floor(Math.max(size, BLOCK) / BLOCK) + 3));
  const r = rng.float();
  let off: number;
  if (r < 0.18) off = size;
  else if (r < 0.38) off = rng.int(size + 1);
  else if (r < 0.6) off = k * BLOCK + rng.range(-3, 3);
  else if (r < 0.68) off = k * BLOCK + rng.range(-4096, 4096);
  else if (r < 0.78) off = k * BLOCK - length + rng.range(-1, 1); // ends right at a boundary
  else if (r < 0.9) off = size + rng.range(1, 2 * BLOCK); // a hole
  else off = 0;
  return Math.max(0, off);
}

function interestingSize(rng: Rng, size: number): number {
  const r = rng.float();
  const k = rng.int(Math.min(12, Math.floor(size / BLOCK) + 3));
  if (r < 0.12) return 0;
  if (r < 0.47) return Math.max(0, k * BLOCK + rng.range(-1, 1));
  if (r < 0.72) return rng.int(size + 1);
  if (r < 0.92) return size + rng.range(1, 2 * BLOCK);
  return size;
}

export interface SlotView {
  path: string | null;
  desc: ModelDescriptor;
}

/** One operation chosen from the model's current state. */
export function generateOp(rng: Rng, model: Model, slots: ReadonlyArray<SlotView | undefined>): Op {
  const { files, dirs, totalBytes } = model.paths();
  const open = slots.flatMap((s, i) => (s ? [i] : []));
  const free = slots.flatMap((s, i) => (s ? [] : [i]));
  const full = totalBytes > MAX_TOTAL;
  const crowded = files.length > 40 || dirs.length > 20;

  const randomPath = (names: readonly string[] = NAMES): string => {
    if (rng.chance(0.9) || dirs.length === 0) {
      const parent = rng.pick(dirs);
      return `${parent === '/' ? '' : parent}/${rng.pick(names)}`;
    }
    const depth = rng.range(1, 3);
    return `/${Array.from({ length: depth }, () => rng.pick(NAMES)).join('/')}`;
  };
  const someFile = (): string => (files.length > 0 && rng.chance(0.9) ? rng.pick(files) : randomPath(FILE_NAMES));
  const someDir = (): string => (dirs.length > 1 && rng.chance(0.85) ? rng.pick(dirs.filter((d) => d !== '/')) : randomPath(DIR_NAMES));
  const anyPath = (): string => {
    const r = rng.float();
    if (r < 0.5) return someFile();
    if (r < 0.75) return someDir();
    return randomPath();
  };

  const few = files.length < 8;
  const manyDirs = dirs.length > 14;
  const kind = rng.weighted<OpKind>([
    ['open', free.length > 0 ? (open.length < 3 ? 20 : 9) : 0],
    ['close', open.length > 0 ? (free.length === 0 ? 12 : 6) : 0],
    ['write', open.length > 0 ? (full ? 6 : 22) : 0],
    ['read', open.length > 0 ? 14 : 0],
    ['ftruncate', open.length > 0 ? (full ? 8 : 4) : 0],
    ['fsync', open.length > 0 ? 2 : 0],
    ['fstat', open.length > 0 ? 3 : 0],
    ['par', open.length >= 2 ? 4 : 0],
    ['truncate', full ? 6 : 3],
    ['stat', 4],
    ['readdir', 4],
    ['readFile', 2],
    ['mkdir', manyDirs ? 0.5 : 3],
    ['rmdir', manyDirs ? 5 : 2],
    ['unlink', full || crowded ? 8 : few ? 1.5 : 4],
    ['rename', 6],
  ]);

  const slotOp = (): number => rng.pick(open);
  const sizeOfSlot = (slot: number): number => {
    const node = slots[slot]!.desc.node;
    return node.kind === 'file' ? node.size : 0;
  };
  const genWrite = (slot: number): Extract<Op, { op: 'write' }> => {
    let length = skewedLength(rng);
    let offset = interestingOffset(rng, sizeOfSlot(slot), length);
    if (offset + length > MAX_FILE) {
      if (rng.chance(0.5)) offset = Math.max(0, MAX_FILE - length - rng.int(BLOCK));
      else length = Math.max(1, Math.min(length, 4096));
    }
    return { op: 'write', slot, offset, length, data: rng.u32() };
  };
  const genRead = (slot: number): Extract<Op, { op: 'read' }> => {
    const length = rng.chance(0.1) ? rng.range(BLOCK, 2 * BLOCK + 7) : skewedLength(rng);
    return { op: 'read', slot, offset: interestingOffset(rng, sizeOfSlot(slot), length), length };
  };
  const genFtruncate = (slot: number): Extract<Op, { op: 'ftruncate' }> => ({
    op: 'ftruncate',
    slot,
    size: full ? rng.int(BLOCK) : Math.min(interestingSize(rng, sizeOfSlot(slot)), MAX_FILE),
  });
  /**
   * 2-3 descriptor operations at once whose outcome does not depend on their order: writes to one
   * file never overlap and never append, a file read or truncated is touched by nothing else in the group.
   */
  const genPar = (): Op => {
    const group: ParOp[] = [];
    const want = rng.range(2, 3);
    const nodeOf = (o: ParOp) => slots[o.slot]!.desc.node;
    const writeRange = (o: ParOp): [number, number] | null => (o.op === 'write' ? [o.offset, o.offset + o.length] : null);
    for (let attempt = 0; attempt < 12 && group.length < want; attempt++) {
      const sub = rng.weighted<ParOp['op']>([
        ['write', 6],
        ['read', 4],
        ['ftruncate', 1],
        ['fsync', 1],
      ]);
      const slot = rng.pick(open);
      const desc = slots[slot]!.desc;
      const cand: ParOp =
        sub === 'write' ? genWrite(slot) : sub === 'read' ? genRead(slot) : sub === 'ftruncate' ? genFtruncate(slot) : { op: 'fsync', slot };
      if (cand.op === 'write' && desc.append) continue;
      const clash = group.some((o) => {
        if (nodeOf(o) !== desc.node || cand.op === 'fsync' || o.op === 'fsync') return false;
        const a = writeRange(o);
        const b = writeRange(cand);
        if (a && b) return a[0] < b[1] && b[0] < a[1];
        return true; // a read or a truncate next to anything else on that file
      });
      if (!clash) group.push(cand);
    }
    return group.length >= 2 ? { op: 'par', ops: group } : genWrite(rng.pick(open));
  };
  /** Mostly a descriptor the operation suits (errors stay frequent enough to be compared too). */
  const slotWhere = (pred: (d: ModelDescriptor) => boolean): number => {
    const fit = open.filter((i) => pred(slots[i]!.desc));
    return fit.length > 0 && rng.chance(0.85) ? rng.pick(fit) : slotOp();
  };
  switch (kind) {
    case 'open': {
      const acc = rng.weighted<Access>([
        ['r', 3],
        ['w', 3],
        ['rw', 4],
      ]);
      const creat = rng.chance(few ? 0.7 : 0.5);
      const path = creat && rng.chance(few ? 0.7 : 0.4) ? randomPath(FILE_NAMES) : rng.chance(0.08) ? someDir() : someFile();
      return {
        op: 'open',
        slot: rng.pick(free),
        path,
        acc,
        ...(creat ? { creat } : {}),
        ...(creat && rng.chance(0.2) ? { excl: true } : {}),
        ...(acc !== 'r' && rng.chance(full ? 0.5 : 0.15) ? { trunc: true } : {}),
        ...(rng.chance(0.2) ? { append: true } : {}),
        ...(rng.chance(0.15) ? { direct: true } : {}),
      };
    }
    case 'close':
      return { op: 'close', slot: slotOp() };
    case 'write':
      return genWrite(slotWhere((d) => d.writable && d.node.kind === 'file'));
    case 'read':
      return genRead(slotWhere((d) => d.readable && d.node.kind === 'file'));
    case 'ftruncate':
      return genFtruncate(slotWhere((d) => d.writable && d.node.kind === 'file'));
    case 'par':
      return genPar();
    case 'fsync':
      return { op: 'fsync', slot: slotOp() };
    case 'fstat':
      return { op: 'fstat', slot: slotOp() };
    case 'truncate': {
      const path = rng.chance(0.9) ? someFile() : anyPath();
      const size = model.sizeOf(path);
      return { op: 'truncate', path, size: full ? rng.int(BLOCK) : Math.min(interestingSize(rng, size), MAX_FILE) };
    }
    case 'stat':
      return { op: 'stat', path: anyPath() };
    case 'readdir':
      return { op: 'readdir', path: rng.chance(0.8) ? rng.pick(dirs) : anyPath() };
    case 'readFile':
      return { op: 'readFile', path: rng.chance(0.9) ? someFile() : anyPath() };
    case 'mkdir':
      return { op: 'mkdir', path: rng.chance(0.8) ? randomPath(DIR_NAMES) : anyPath() };
    case 'rmdir':
      return { op: 'rmdir', path: rng.chance(0.85) ? someDir() : anyPath() };
    case 'unlink':
      return { op: 'unlink', path: rng.chance(0.85) ? someFile() : anyPath() };
    case 'rename': {
      const r = rng.float();
      const from = r < 0.6 ? someFile() : r < 0.92 ? someDir() : randomPath();
      const s = rng.float();
      const to = s < 0.3 ? someFile() : s < 0.45 ? someDir() : randomPath();
      return { op: 'rename', from, to };
    }
    default:
      throw new Error(`unhandled kind ${kind}`);
  }
}

// ---------------------------------------------------------------------------------------------
// running operations against the mount and the model

export class Mismatch extends Error {
  constructor(
    readonly index: number,
    readonly failedOp: Op | null,
    readonly detail: string,
  ) {
    super(`op #${index} ${failedOp ? JSON.stringify(failedOp) : '(final check)'}: ${detail}`);
  }
}

export interface Stats {
  ops: number;
  byKind: Record<string, number>;
  /** Milliseconds spent per kind of operation (mount and model together). */
  msByKind: Record<string, number>;
  /** Byte comparisons (reads through descriptors and whole-file reads). */
  reads: number;
  bytesCompared: number;
  listings: number;
  sizes: number;
  /** Operations whose expected failure (errno) matched. */
  errnos: number;
  /** Full tree comparisons. */
  trees: number;
  retries: number;
  /** fstat/fsync of a removed folder's descriptor answered ENOENT (the libfuse 2 limit, see removedFolderLimit). */
  removedFolderLimits: number;
  /** Coverage: writes spanning a block boundary, writes starting past EOF (holes). */
  boundaryWrites: number;
  holeWrites: number;
}

export function emptyStats(): Stats {
  return { ops: 0, byKind: {}, msByKind: {}, reads: 0, bytesCompared: 0, listings: 0, sizes: 0, errnos: 0, trees: 0, retries: 0, removedFolderLimits: 0, boundaryWrites: 0, holeWrites: 0 };
}

interface Slot extends SlotView {
  fh: FileHandle;
}

type Outcome<T> = { ok: true; value: T } | { ok: false; code: string };

function modelDo<T>(fn: () => T): Outcome<T> {
  try {
    return { ok: true, value: fn() };
  } catch (err) {
    if (err instanceof Errno) return { ok: false, code: err.code };
    throw err;
  }
}

async function realDo<T>(fn: () => Promise<T>): Promise<Outcome<T>> {
  try {
    return { ok: true, value: await fn() };
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    return { ok: false, code: typeof e.code === 'string' ? e.code : `UNKNOWN(${String(err)})` };
  }
}

function show(o: Outcome<unknown>): string {
  return o.ok ? 'success' : o.code;
}

/** Where two buffers first differ, for the report. */
export function describeDiff(expected: Buffer, actual: Buffer, base = 0): string {
  if (expected.length !== actual.length) {
    const n = Math.min(expected.length, actual.length);
    let i = 0;
    while (i < n && expected[i] === actual[i]) i++;
    return `length ${actual.length}, expected ${expected.length}${i < n ? `; first difference at byte ${base + i}` : ''}`;
  }
  let i = 0;
  while (i < expected.length && expected[i] === actual[i]) i++;
  let j = expected.length - 1;
  while (j > i && expected[j] === actual[j]) j--;
  const hex = (b: Buffer) => b.subarray(i, Math.min(i + 16, b.length)).toString('hex');
  const zeros = actual.subarray(i, j + 1).every((x) => x === 0);
  return `bytes ${base + i}..${base + j} differ (${j - i + 1} bytes${zeros ? ', all zero in the mount' : ''}; block ${Math.floor((base + i) / BLOCK)}, offset in block ${(base + i) % BLOCK}); expected ${hex(expected)}…, got ${hex(actual)}…`;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export interface VerifierHooks {
  /** Stops the mount, mounts again (`fresh`: after a full sync, with an empty local store); returns the new root. */
  remount?(fresh: boolean): Promise<string>;
}

/**
 * Runs operations on the mount (under `root`) and on the model, comparing outcomes. `apply` throws
 * a Mismatch at the first difference.
 */
export class Verifier {
  readonly model: Model;
  readonly slots: Array<Slot | undefined> = Array.from({ length: MAX_SLOTS }, () => undefined);
  readonly stats: Stats = emptyStats();
  /** What the last 'check' compared. */
  lastTree = { files: 0, dirs: 0, bytes: 0 };

  /** `fuse`: the root is on a libfuse 2 mount (.fuse_hidden names; O_DIRECT allowed unaligned); false: a plain local directory. */
  constructor(
    public root: string,
    private readonly hooks: VerifierHooks = {},
    private readonly fuse = true,
  ) {
    this.model = new Model(fuse);
  }

  private abs(path: string): string {
    return path === '/' ? this.root : join(this.root, path);
  }

  slotViews(): ReadonlyArray<SlotView | undefined> {
    return this.slots;
  }

  private fail(index: number, op: Op | null, detail: string): never {
    throw new Mismatch(index, op, detail);
  }

  /** Same errno, or same success (values are compared by the caller). */
  private sameOutcome(index: number, op: Op, expected: Outcome<unknown>, actual: Outcome<unknown>): boolean {
    if (expected.ok !== actual.ok || (!expected.ok && !actual.ok && expected.code !== actual.code)) {
      this.fail(index, op, `expected ${show(expected)}, the mount answered ${show(actual)}`);
    }
    if (!expected.ok) this.stats.errnos++;
    return expected.ok;
  }

  /** Visible names and the count of .fuse_hidden* names, polled while the hidden count differs. */
  private async listReal(path: string, expectedHidden: number): Promise<{ names: string[]; hidden: number }> {
    const deadline = Date.now() + 10_000;
    for (;;) {
      const all = await fsp.readdir(this.abs(path));
      const names = all.filter((n) => !n.startsWith(HIDDEN_PREFIX)).sort();
      const hidden = all.length - names.length;
      if (hidden === expectedHidden || Date.now() > deadline) return { names, hidden };
      this.stats.retries++;
      await sleep(25);
    }
  }

  /** rmdir/rename answered ENOTEMPTY where the model expects success: only a leftover .fuse_hidden (async RELEASE) may explain it. */
  private async retryHiddenLeftover<T>(dir: string, attempt: () => Promise<Outcome<T>>): Promise<Outcome<T>> {
    const deadline = Date.now() + 10_000;
    for (;;) {
      const r = await attempt();
      if (r.ok || r.code !== 'ENOTEMPTY' || Date.now() > deadline) return r;
      const all = await fsp.readdir(this.abs(dir)).catch(() => ['?']);
      if (all.some((n) => !n.startsWith(HIDDEN_PREFIX))) return r;
      this.stats.retries++;
      await sleep(25);
    }
  }

  private compareBytes(index: number, op: Op, expected: Buffer, actual: Buffer, base: number): void {
    this.stats.reads++;
    this.stats.bytesCompared += expected.length;
    if (!expected.equals(actual)) this.fail(index, op, describeDiff(expected, actual, base));
  }

  async apply(op: Op, index: number): Promise<void> {
    this.stats.ops++;
    this.stats.byKind[op.op] = (this.stats.byKind[op.op] ?? 0) + 1;
    const started = performance.now();
    // A hung mount is a finding too: report it instead of waiting for the test's timeout.
    const limitMs = op.op === 'remount' || op.op === 'check' ? 600_000 : 120_000;
    let timer: NodeJS.Timeout | undefined;
    const hung = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Mismatch(index, op, `no answer within ${limitMs / 1000} s: the mount hangs`)), limitMs);
    });
    try {
      await Promise.race([this.applyOp(op, index), hung]);
    } finally {
      clearTimeout(timer);
      this.stats.msByKind[op.op] = (this.stats.msByKind[op.op] ?? 0) + (performance.now() - started);
    }
  }

  private async applyOp(op: Op, index: number): Promise<void> {
    const m = this.model;
    switch (op.op) {
      case 'open': {
        if (this.slots[op.slot]) await this.closeSlot(op.slot);
        const e = modelDo(() => m.open(op.path, op.acc, !!op.creat, !!op.excl, !!op.trunc, !!op.append, !!op.direct));
        const a = await realDo(() => fsp.open(this.abs(op.path), openFlags(op, this.fuse), 0o644));
        if (a.ok && !e.ok) await a.value.close().catch(() => {});
        if (e.ok && !a.ok) m.close(e.value);
        if (this.sameOutcome(index, op, e, a) && e.ok && a.ok) {
          this.slots[op.slot] = { fh: a.value, desc: e.value, path: op.path };
        }
        return;
      }
      case 'close':
        if (this.slots[op.slot]) await this.closeSlot(op.slot, index, op);
        return;
      case 'remount':
        await this.remount(op.fresh, index, op);
        return;
      case 'check':
        this.lastTree = await this.compareTree(index, op);
        return;
      case 'truncate': {
        const e = modelDo(() => m.truncate(op.path, op.size));
        const a = await realDo(() => fsp.truncate(this.abs(op.path), op.size));
        this.sameOutcome(index, op, e, a);
        return;
      }
      case 'stat': {
        const e = modelDo(() => m.stat(op.path));
        const a = await realDo(() => fsp.stat(this.abs(op.path)));
        if (this.sameOutcome(index, op, e, a) && e.ok && a.ok) this.compareStat(index, op, e.value, a.value);
        return;
      }
      case 'readdir': {
        const e = modelDo(() => m.readdir(op.path));
        const a = await realDo(() => this.listReal(op.path, e.ok ? e.value.hidden : 0));
        if (this.sameOutcome(index, op, e, a) && e.ok && a.ok) this.compareListing(index, op, op.path, e.value, a.value);
        return;
      }
      case 'readFile': {
        const e = modelDo(() => m.readFile(op.path));
        const a = await realDo(() => fsp.readFile(this.abs(op.path)));
        if (this.sameOutcome(index, op, e, a) && e.ok && a.ok) this.compareBytes(index, op, e.value, a.value, 0);
        return;
      }
      case 'mkdir': {
        const e = modelDo(() => m.mkdir(op.path));
        const a = await realDo(() => fsp.mkdir(this.abs(op.path), 0o755));
        this.sameOutcome(index, op, e, a);
        return;
      }
      case 'rmdir': {
        const e = modelDo(() => m.rmdir(op.path));
        let a = await realDo(() => fsp.rmdir(this.abs(op.path)));
        if (e.ok) a = await this.retryHiddenLeftover(op.path, async () => (a.ok ? a : realDo(() => fsp.rmdir(this.abs(op.path)))));
        this.sameOutcome(index, op, e, a);
        return;
      }
      case 'unlink': {
        const e = modelDo(() => m.unlink(op.path));
        const a = await realDo(() => fsp.unlink(this.abs(op.path)));
        this.sameOutcome(index, op, e, a);
        return;
      }
      case 'rename': {
        const e = modelDo(() => m.rename(op.from, op.to));
        let a = await realDo(() => fsp.rename(this.abs(op.from), this.abs(op.to)));
        if (e.ok) a = await this.retryHiddenLeftover(op.to, async () => (a.ok ? a : realDo(() => fsp.rename(this.abs(op.from), this.abs(op.to)))));
        this.sameOutcome(index, op, e, a);
        return;
      }
      default:
        break;
    }
    if (op.op === 'par') {
      await this.applyPar(op, index);
      return;
    }
    // Descriptor operations: a slot left empty by a shrunk log is skipped.
    const slot = this.slots[op.slot];
    if (!slot) return;
    const d = slot.desc;
    switch (op.op) {
      case 'write': {
        const data = payload(op.data, op.length);
        if (d.node.kind === 'file' && d.writable) {
          const pos = d.append ? d.node.size : op.offset;
          if (Math.floor(pos / BLOCK) !== Math.floor((pos + op.length - 1) / BLOCK)) this.stats.boundaryWrites++;
          if (pos > d.node.size) this.stats.holeWrites++;
        }
        const e = modelDo(() => m.write(d, op.offset, data));
        const a = await realDo(async () => (await slot.fh.write(data, 0, data.length, op.offset)).bytesWritten);
        if (this.sameOutcome(index, op, e, a) && e.ok && a.ok && a.value !== e.value) {
          this.fail(index, op, `wrote ${a.value} bytes, expected ${e.value}`);
        }
        return;
      }
      case 'read': {
        const e = modelDo(() => m.read(d, op.offset, op.length));
        const a = await realDo(() => readFully(slot.fh, op.offset, op.length));
        if (this.sameOutcome(index, op, e, a) && e.ok && a.ok) this.compareBytes(index, op, e.value, a.value, op.offset);
        return;
      }
      case 'ftruncate': {
        const e = modelDo(() => m.ftruncate(d, op.size));
        let a = await realDo(() => slot.fh.truncate(op.size));
        // ftruncate(2) documents EBADF or EINVAL for a descriptor not open for writing.
        if (!e.ok && !a.ok && e.code === 'EINVAL' && a.code === 'EBADF') a = { ok: false, code: 'EINVAL' };
        this.sameOutcome(index, op, e, a);
        return;
      }
      case 'fsync': {
        const a = this.removedFolderLimit(d, await realDo(() => slot.fh.sync()));
        this.sameOutcome(index, op, { ok: true, value: undefined }, a);
        return;
      }
      case 'fstat': {
        const e = modelDo(() => m.fstat(d));
        const a = this.removedFolderLimit(d, await realDo(() => slot.fh.stat()));
        if (this.sameOutcome(index, op, e, a) && e.ok && a.ok && a.value) this.compareStat(index, op, e.value, a.value);
        return;
      }
      default:
        throw new Error(`unknown operation ${JSON.stringify(op)}`);
    }
  }

  /**
   * libfuse 2 (high-level API) limit: a folder removed while a descriptor of it is open has no path
   * any more, and the kernel asks GETATTR/FSYNCDIR by inode, which libfuse answers ENOENT (unless the
   * kernel's attribute cache still answers fstat). Accepted as success, only for exactly that case.
   */
  private removedFolderLimit<T>(d: ModelDescriptor, a: Outcome<T>): Outcome<T | undefined> {
    if (!a.ok && a.code === 'ENOENT' && this.fuse && d.node.kind === 'dir' && this.model.pathOf(d.node) === null) {
      this.stats.removedFolderLimits++;
      return { ok: true, value: undefined };
    }
    return a;
  }

  private unwrap<T>(o: Outcome<T>): T {
    if (o.ok) return o.value;
    throw Object.assign(new Error(o.code), { code: o.code });
  }

  /** The model in order, the mount all at once; then every outcome compared. */
  private async applyPar(op: Extract<Op, { op: 'par' }>, index: number): Promise<void> {
    const m = this.model;
    const jobs: Array<{ sub: ParOp; expected: Outcome<unknown>; run: () => Promise<unknown> }> = [];
    for (const sub of op.ops) {
      const slot = this.slots[sub.slot];
      if (!slot) continue;
      const d = slot.desc;
      switch (sub.op) {
        case 'write': {
          const data = payload(sub.data, sub.length);
          jobs.push({ sub, expected: modelDo(() => m.write(d, sub.offset, data)), run: async () => (await slot.fh.write(data, 0, data.length, sub.offset)).bytesWritten });
          break;
        }
        case 'read':
          jobs.push({ sub, expected: modelDo(() => m.read(d, sub.offset, sub.length)), run: () => readFully(slot.fh, sub.offset, sub.length) });
          break;
        case 'ftruncate':
          jobs.push({ sub, expected: modelDo(() => m.ftruncate(d, sub.size)), run: () => slot.fh.truncate(sub.size) });
          break;
        case 'fsync':
          jobs.push({ sub, expected: { ok: true, value: undefined }, run: async () => this.unwrap(this.removedFolderLimit(d, await realDo(() => slot.fh.sync()))) });
          break;
      }
    }
    const actual = await Promise.all(jobs.map((j) => realDo(j.run)));
    for (const [k, j] of jobs.entries()) {
      let a = actual[k]!;
      const e = j.expected;
      if (j.sub.op === 'ftruncate' && !e.ok && !a.ok && e.code === 'EINVAL' && a.code === 'EBADF') a = { ok: false, code: 'EINVAL' };
      if (!this.sameOutcome(index, op, e, a) || !e.ok || !a.ok) continue;
      if (j.sub.op === 'read') this.compareBytes(index, op, e.value as Buffer, a.value as Buffer, j.sub.offset);
      if (j.sub.op === 'write' && a.value !== e.value) this.fail(index, op, `sub-operation ${k}: wrote ${String(a.value)} bytes, expected ${String(e.value)}`);
    }
  }

  private compareStat(index: number, op: Op | null, e: { kind: 'file' | 'dir'; size: number }, a: { isDirectory(): boolean; isFile(): boolean; size: number }): void {
    this.stats.sizes++;
    const kind = a.isDirectory() ? 'dir' : a.isFile() ? 'file' : 'other';
    if (kind !== e.kind) this.fail(index, op, `a ${kind} in the mount, a ${e.kind} in the model`);
    if (e.kind === 'file' && a.size !== e.size) this.fail(index, op, `size ${a.size}, expected ${e.size}`);
  }

  private compareListing(index: number, op: Op | null, path: string, e: { names: string[]; hidden: number }, a: { names: string[]; hidden: number }): void {
    this.stats.listings++;
    if (JSON.stringify(e.names) !== JSON.stringify(a.names)) {
      const missing = e.names.filter((n) => !a.names.includes(n));
      const extra = a.names.filter((n) => !e.names.includes(n));
      this.fail(index, op, `listing of ${path}: missing ${JSON.stringify(missing)}, unexpected ${JSON.stringify(extra)}`);
    }
    if (e.hidden !== a.hidden) this.fail(index, op, `listing of ${path}: ${a.hidden} .fuse_hidden* entries, expected ${e.hidden} (unlinked files still open)`);
  }

  private async closeSlot(n: number, index = -1, op: Op | null = null): Promise<void> {
    const slot = this.slots[n];
    if (!slot) return;
    this.slots[n] = undefined;
    this.model.close(slot.desc);
    const a = await realDo(() => slot.fh.close());
    if (!a.ok && op) this.fail(index, op, `close failed: ${a.code}`);
  }

  /** Closes every descriptor (logged as close operations when `log` is given). */
  async closeAll(log?: Op[]): Promise<void> {
    for (let i = 0; i < this.slots.length; i++) {
      if (!this.slots[i]) continue;
      const op: Op = { op: 'close', slot: i };
      log?.push(op);
      await this.apply(op, log ? log.length - 1 : -1);
    }
  }

  private async remount(fresh: boolean, index: number, op: Op): Promise<void> {
    for (let i = 0; i < this.slots.length; i++) await this.closeSlot(i, index, op);
    if (!this.hooks.remount) return;
    await this.waitNoLeftovers(index, op);
    this.root = await this.hooks.remount(fresh);
    await this.compareTree(index, op);
  }

  /** After every descriptor is closed: the .fuse_hidden leftovers of async RELEASE disappear. */
  async waitNoLeftovers(index: number, op: Op | null): Promise<void> {
    const { dirs } = this.model.paths();
    for (const dir of dirs) {
      const e = this.model.readdir(dir);
      const a = await this.listReal(dir, e.hidden);
      this.compareListing(index, op, dir, e, a);
    }
  }

  /**
   * The whole tree against the model: every listing, every size, every byte; then every open
   * descriptor (also of unlinked files) read back in full.
   */
  async compareTree(index: number, op: Op | null): Promise<{ files: number; dirs: number; bytes: number }> {
    const { files, dirs } = this.model.paths();
    let bytes = 0;
    for (const dir of dirs) {
      const e = this.model.readdir(dir);
      const a = await realDo(() => this.listReal(dir, e.hidden));
      if (!a.ok) this.fail(index, op, `listing ${dir}: ${a.code}`);
      this.compareListing(index, op, dir, e, a.value);
      // Sub-folders are folders in the mount too.
      for (const name of e.names) {
        const child = dir === '/' ? `/${name}` : `${dir}/${name}`;
        const st = await realDo(() => fsp.stat(this.abs(child)));
        if (!st.ok) this.fail(index, op, `stat ${child}: ${st.code}`);
        this.compareStat(index, op, this.model.stat(child), st.value);
      }
    }
    for (const file of files) {
      const expected = this.model.readFile(file);
      const a = await realDo(() => fsp.readFile(this.abs(file)));
      if (!a.ok) this.fail(index, op, `reading ${file}: ${a.code}`);
      if (!expected.equals(a.value)) this.fail(index, op, `content of ${file}: ${describeDiff(expected, a.value)}`);
      this.stats.reads++;
      this.stats.bytesCompared += expected.length;
      bytes += expected.length;
    }
    for (const [i, slot] of this.slots.entries()) {
      if (!slot || slot.desc.node.kind !== 'file') continue;
      const st = await realDo(() => slot.fh.stat());
      if (!st.ok) this.fail(index, op, `fstat of slot ${i}: ${st.code}`);
      this.compareStat(index, op, this.model.fstat(slot.desc), st.value);
      if (!slot.desc.readable) continue;
      const f = slot.desc.node;
      const a = await realDo(() => readFully(slot.fh, 0, f.size + 1));
      if (!a.ok) this.fail(index, op, `reading slot ${i}: ${a.code}`);
      const expected = f.data.subarray(0, f.size);
      if (!expected.equals(a.value)) this.fail(index, op, `content through slot ${i} (${slot.path}${f.hiddenIn ? ', unlinked' : ''}): ${describeDiff(expected, a.value)}`);
      this.stats.reads++;
      this.stats.bytesCompared += f.size;
    }
    this.stats.trees++;
    return { files: files.length, dirs: dirs.length, bytes };
  }
}

async function readFully(fh: FileHandle, offset: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  let got = 0;
  while (got < length) {
    const { bytesRead } = await fh.read(buf, got, length - got, offset + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return buf.subarray(0, got);
}

// ---------------------------------------------------------------------------------------------
// runs, logs, shrinking

export interface RunResult {
  log: Op[];
  mismatch: Mismatch | null;
}

export function formatLog(ops: readonly Op[]): string {
  return ops.map((o) => JSON.stringify(o)).join('\n');
}

export function parseLog(text: string): Op[] {
  return text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l.length > 0 && !l.startsWith('#'))
    .map((l) => JSON.parse(l) as Op);
}

/** Replays `ops` on a verifier; the first mismatch (or null). */
export async function replay(v: Verifier, ops: readonly Op[]): Promise<Mismatch | null> {
  try {
    for (const [i, op] of ops.entries()) await v.apply(op, i);
    return null;
  } catch (err) {
    if (err instanceof Mismatch) return err;
    throw err;
  } finally {
    await v.closeAll().catch(() => {});
  }
}

/** Operations that change nothing (reads, listings, stats): dropped first when shrinking. */
function observes(op: Op): boolean {
  return op.op === 'read' || op.op === 'readdir' || op.op === 'stat' || op.op === 'fstat' || op.op === 'readFile' || op.op === 'fsync' || op.op === 'check';
}

/**
 * Drops what cannot matter: descriptor operations on a slot no 'open' before them filled (they
 * are skipped anyway) and groups left with one operation (which then runs alone).
 */
export function pruneDead(ops: readonly Op[]): Op[] {
  const live = new Set<number>();
  const out: Op[] = [];
  for (const op of ops) {
    switch (op.op) {
      case 'open':
        live.add(op.slot);
        out.push(op);
        break;
      case 'close':
        if (live.delete(op.slot)) out.push(op);
        break;
      case 'remount':
        live.clear();
        out.push(op);
        break;
      case 'write':
      case 'read':
      case 'ftruncate':
      case 'fsync':
      case 'fstat':
        if (live.has(op.slot)) out.push(op);
        break;
      case 'par': {
        const subs = op.ops.filter((o) => live.has(o.slot));
        if (subs.length === 1) out.push(subs[0]!);
        else if (subs.length > 1) out.push(subs.length === op.ops.length ? op : { op: 'par', ops: subs });
        break;
      }
      default:
        out.push(op);
    }
  }
  return out;
}

/**
 * Delta debugging over a failing log, within a budget: `fails(ops)` replays on a fresh folder
 * (or mount) and says whether the same kind of mismatch happens. The failing operation is kept last.
 * Then concurrent groups are tried as plain sequential operations (simpler to read).
 */
export async function shrink(
  ops: readonly Op[],
  fails: (ops: Op[]) => Promise<boolean>,
  budget: { deadline: number; maxRuns: number },
): Promise<{ ops: Op[]; runs: number }> {
  let runs = 0;
  const within = () => Date.now() < budget.deadline && runs < budget.maxRuns;
  const last = ops[ops.length - 1]!;
  const tryOps = async (body: Op[]): Promise<Op[] | null> => {
    const candidate = pruneDead([...body, last]);
    if (candidate[candidate.length - 1] !== last) return null; // the failing operation itself became dead
    runs++;
    return (await fails(candidate)) ? candidate.slice(0, -1) : null;
  };
  let cur = pruneDead(ops).slice(0, -1);
  // First the cheap, big cut: operations that only observe.
  const acting = cur.filter((o) => !observes(o));
  if (acting.length < cur.length && within()) cur = (await tryOps(acting)) ?? cur;
  let n = 2;
  while (cur.length > 0 && within()) {
    const chunk = Math.ceil(cur.length / n);
    let reduced = false;
    for (let start = 0; start < cur.length && within(); start += chunk) {
      const r = await tryOps([...cur.slice(0, start), ...cur.slice(start + chunk)]);
      if (r) {
        cur = r;
        n = Math.max(n - 1, 2);
        reduced = true;
        break;
      }
    }
    if (!reduced) {
      if (chunk <= 1) break;
      n = Math.min(cur.length, n * 2);
    }
  }
  for (let i = 0; i < cur.length && within(); i++) {
    const op = cur[i]!;
    if (op.op !== 'par') continue;
    const r = await tryOps([...cur.slice(0, i), ...op.ops, ...cur.slice(i + 1)]);
    if (r) cur = r;
  }
  return { ops: [...cur, last], runs };
}

// ---------------------------------------------------------------------------------------------
// a whole run on a real mount: generation, checkpoints, remounts, final check from the server

export interface RunOptions {
  /** The workspace to mount (empty at the start). */
  workspace: string;
  seed: number;
  count: number;
  /** A 'check' (whole tree) every this many operations. */
  checkpointEvery: number;
  /** Operation indices where the mount restarts: same local store (false) or a fresh one after a full sync (true). */
  remounts: ReadonlyArray<{ at: number; fresh: boolean }>;
  /** Instead of generating: these operations (COFFER_RANDOM_REPLAY). */
  replayOps?: Op[];
  /** Time for shrinking a failure (0: no shrinking). */
  shrinkSeconds: number;
}

/** The smallest block cache: a run's data (up to 48 MiB) does not fit, so clean blocks get evicted and fetched again. */
const MOUNT_ARGS = ['--cache-size', '16'];

/** One workspace mounted by a real `coffer mount`, restartable with the same or a fresh local store. */
export class MountController {
  private generation = 0;
  private constructor(
    private readonly t: Test,
    private readonly envx: Environment,
    private readonly workspace: string,
    private m: MountedWorkspace,
    private dataDir: string,
  ) {}

  static async start(t: Test, envx: Environment, workspace: string): Promise<MountController> {
    const dataDir = join(envx.root, `data-${workspace}-0`);
    const m = await mountWorkspace(t, envx, { workspace, dataDir, args: MOUNT_ARGS });
    return new MountController(t, envx, workspace, m, dataDir);
  }

  get mnt(): string {
    return this.m.mnt;
  }

  output(): string {
    return this.m.output();
  }

  /** `coffer sync --wait` against this mount's local store (its data dir holds the mount record). */
  async syncWait(): Promise<void> {
    await sleep(300); // namespace changes are persisted within 100 ms; sync --wait watches the store
    const r = await this.envx.coffer(['sync', this.workspace, '--wait', '--timeout', '300'], { COFFER_DATA_DIR: this.dataDir });
    if (r.code !== 0) throw new Error(`coffer sync --wait failed (${r.code}): ${r.stderr.slice(0, 2000)}`);
  }

  async remount(fresh: boolean): Promise<string> {
    if (fresh) await this.syncWait();
    await this.m.stop();
    if (this.m.proc.exitCode !== 0) throw new Error(`coffer mount exited ${this.m.proc.exitCode}: ${this.m.output().slice(-2000)}`);
    if (fresh) this.dataDir = join(this.envx.root, `data-${this.workspace}-${++this.generation}`);
    this.m = await mountWorkspace(this.t, this.envx, { workspace: this.workspace, mnt: this.m.mnt, dataDir: this.dataDir, args: MOUNT_ARGS });
    return this.m.mnt;
  }

  async stop(): Promise<void> {
    await this.m.stop();
  }
}

export function summarize(s: Stats): string {
  const kinds = Object.entries(s.byKind)
    .sort((a, b) => b[1] - a[1])
    .map(([k, n]) => `${k} ${n}/${((s.msByKind[k] ?? 0) / 1000).toFixed(1)}s`)
    .join(', ');
  return `${s.ops} ops (${kinds}); compared: ${s.reads} reads (${(s.bytesCompared / 1048576).toFixed(1)} MiB), ${s.listings} listings, ${s.sizes} sizes, ${s.errnos} expected errnos, ${s.trees} whole trees (${s.retries} polls for .fuse_hidden leftovers, ${s.removedFolderLimits} ENOENT of removed-folder descriptors); ${s.boundaryWrites} writes across a block boundary, ${s.holeWrites} past EOF`;
}

function comparisons(s: Stats): number {
  return s.reads + s.listings + s.sizes + s.errnos;
}

function logFile(seed: number, suffix: string): string {
  return join(tmpdir(), `coffer-random-ops-${seed >>> 0}-${process.pid}-${suffix}.jsonl`);
}

/**
 * Generates and runs `count` operations with checkpoints and remounts, then closes everything,
 * syncs, mounts a fresh local store and compares the whole tree once more. Asserts once per
 * checkpoint (every comparison of the window contributes) and for each final step.
 */
export async function runRandomOps(t: Test, envx: Environment, opts: RunOptions): Promise<{ stats: Stats; failed: boolean }> {
  const seedText = opts.replayOps
    ? `replay of ${opts.replayOps.length} logged operations`
    : `seed ${opts.seed >>> 0} (COFFER_RANDOM_SEED=${opts.seed >>> 0} COFFER_RANDOM_OPS=${opts.count}${opts.remounts.length ? '' : ' COFFER_RANDOM_REMOUNTS=0'})`;
  const ctl = await MountController.start(t, envx, opts.workspace);
  const v = new Verifier(ctl.mnt, { remount: (fresh) => ctl.remount(fresh) });
  const rng = new Rng(opts.seed);
  const log: Op[] = [];
  const remountAt = new Map(opts.remounts.map((r) => [r.at, r.fresh]));
  const started = Date.now();
  let windowStart = 0;
  let windowComparisons = 0;
  let windowTrees = 0;
  let mismatch: Mismatch | null = null;
  const total = opts.replayOps ? opts.replayOps.length : opts.count;

  for (let i = 0; i < total && !mismatch; i++) {
    let op: Op;
    if (opts.replayOps) op = opts.replayOps[i]!;
    else if (remountAt.has(i)) op = { op: 'remount', fresh: remountAt.get(i)! };
    else if (i > 0 && (i + 1) % opts.checkpointEvery === 0) op = { op: 'check' };
    else op = generateOp(rng, v.model, v.slotViews());
    log.push(op);
    try {
      await v.apply(op, i);
    } catch (err) {
      if (!(err instanceof Mismatch)) throw err;
      mismatch = err;
    }
    if (!mismatch && (op.op === 'check' || op.op === 'remount')) {
      // Every comparison of the window (reads, listings, sizes, errnos, the whole tree) passed.
      const compared = comparisons(v.stats) - windowComparisons;
      const tree = op.op === 'check' ? v.lastTree : { files: v.model.paths().files.length, dirs: v.model.paths().dirs.length, bytes: v.model.paths().totalBytes };
      t.ok(compared > 0 && v.stats.trees > windowTrees, `${seedText}: ops ${windowStart}..${i}: ${compared} comparisons equal${op.op === 'remount' ? ` (also after ${op.fresh ? 'a sync and a fresh-store' : 'a same-store'} remount)` : ''}; tree of ${tree.files} files, ${tree.dirs} folders, ${(tree.bytes / 1048576).toFixed(1)} MiB equal`);
      windowStart = i + 1;
      windowComparisons = comparisons(v.stats);
      windowTrees = v.stats.trees;
    }
  }

  if (mismatch) {
    await reportMismatch(t, envx, opts, seedText, log, mismatch, ctl);
    await v.closeAll().catch(() => {});
    return { stats: v.stats, failed: true };
  }

  // The end: every descriptor closed, the tree compared live, everything synced, then a fresh local store.
  const finalStep = async (what: string, fn: () => Promise<unknown>): Promise<boolean> => {
    try {
      await fn();
      return t.ok(true, `${seedText}: ${what}`);
    } catch (err) {
      const file = logFile(opts.seed, 'full');
      await fsp.writeFile(file, formatLog(log) + '\n');
      t.fail(`${seedText}: ${what}: ${(err as Error).message}\nlog of ${log.length} operations: ${file} (replay: COFFER_RANDOM_REPLAY=${file})\nmount output:\n${ctl.output().slice(-3000)}`);
      return false;
    }
  };
  const closeAndCheck = async () => {
    const before = log.length;
    await v.closeAll(log);
    await v.waitNoLeftovers(before, null);
    await v.compareTree(log.length, null);
  };
  const failed = { stats: v.stats, failed: true };
  if (!(await finalStep(`ops ${windowStart}..${total - 1} equal; all closed, whole tree equal on the live mount`, closeAndCheck))) return failed;
  if (!(await finalStep('coffer sync --wait', () => ctl.syncWait()))) return failed;
  if (!(await finalStep('after unmount and a mount with a FRESH local store (everything from the server): whole tree equal byte for byte', async () => {
    v.root = await ctl.remount(true);
    const tree = await v.compareTree(log.length, null);
    if (tree.files !== v.model.paths().files.length) throw new Error('not every file compared');
  }))) return failed;
  await ctl.stop();
  t.comment(`${seedText}: ${summarize(v.stats)}; ${v.model.hiddenEvents} files unlinked/replaced while open; ${((Date.now() - started) / 1000).toFixed(1)} s`);
  return { stats: v.stats, failed: false };
}

async function reportMismatch(t: Test, envx: Environment, opts: RunOptions, seedText: string, log: Op[], mismatch: Mismatch, ctl: MountController): Promise<void> {
  const prefix = log.slice(0, mismatch.index + 1);
  const full = logFile(opts.seed, 'full');
  await fsp.writeFile(full, formatLog(prefix) + '\n');
  let shrunkText = '';
  if (opts.shrinkSeconds > 0 && mismatch.failedOp) {
    try {
      shrunkText = await shrinkOnFreshMount(t, envx, prefix, mismatch, opts);
    } catch (err) {
      shrunkText = `shrinking failed: ${(err as Error).message}`;
    }
  }
  const report = [
    `${seedText}: first mismatch at operation #${mismatch.index} of ${log.length}`,
    mismatch.message,
    `replay the ${prefix.length} operations: COFFER_RANDOM_REPLAY=${full} npx tap test/e2e/random-ops.test.ts`,
    shrunkText,
    prefix.length <= 60 ? `operations:\n${formatLog(prefix)}` : `last operations before the mismatch:\n${formatLog(prefix.slice(-30))}`,
    `mount output (tail):\n${ctl.output().slice(-3000)}`,
  ].filter((x) => x);
  t.comment(report.join('\n'));
  t.fail(`${seedText}: mismatch at operation #${mismatch.index}: ${mismatch.detail} (log: ${full}; details in the comment above)`, {
    failedOp: mismatch.failedOp,
    replay: `COFFER_RANDOM_REPLAY=${full}`,
    shrunk: shrunkText,
  });
}

/**
 * Replays the failing operations on a fresh mount of a new, empty workspace (each attempt in its
 * own folder), then shrinks them by delta debugging within the time budget. Long logs are tried
 * by their tails first (any sub-sequence is a valid run): a local bug reproduces from a short one.
 */
async function shrinkOnFreshMount(t: Test, envx: Environment, prefix: Op[], mismatch: Mismatch, opts: RunOptions): Promise<string> {
  const name = `Shrink${Date.now().toString(36)}`;
  await newWorkspace(envx.org.device, name);
  const ctl = await MountController.start(t, envx, name);
  let attempt = 0;
  const kind = mismatch.failedOp!.op;
  const fails = async (ops: Op[]): Promise<boolean> => {
    const sub = `try-${attempt++}`;
    await fsp.mkdir(join(ctl.mnt, sub));
    const v = new Verifier(join(ctl.mnt, sub), { remount: async (fresh) => join(await ctl.remount(fresh), sub) });
    const m = await replay(v, ops);
    await fsp.rm(join(ctl.mnt, sub), { recursive: true, force: true, maxRetries: 5 }).catch(() => {});
    return m !== null && m.index === ops.length - 1 && m.failedOp?.op === kind;
  };
  try {
    const deadline = Date.now() + opts.shrinkSeconds * 1000;
    let start: Op[] | null = null;
    for (const k of [100, 1000, 10_000, Infinity]) {
      if (k !== Infinity && k >= prefix.length) continue;
      const tail = pruneDead(k === Infinity ? prefix : prefix.slice(-k));
      if (tail[tail.length - 1] !== prefix[prefix.length - 1]) continue; // its descriptor was opened before the tail
      if (await fails(tail)) {
        start = tail;
        break;
      }
      if (Date.now() > deadline) break;
    }
    if (!start) return `replaying on a fresh mount did NOT reproduce the mismatch${Date.now() > deadline ? ' within the shrinking time' : ' (timing-dependent?)'}`;
    const { ops, runs } = await shrink(start, fails, { deadline, maxRuns: 400 });
    const file = logFile(opts.seed, 'shrunk');
    await fsp.writeFile(file, formatLog(ops) + '\n');
    const shown = ops.length <= 60 ? `:\n${formatLog(ops)}` : ' (too long to show here)';
    return `reproduced on a fresh mount from ${start.length} operations; shrunk to ${ops.length} in ${runs} replays (COFFER_RANDOM_REPLAY=${file})${shown}`;
  } finally {
    await ctl.stop();
  }
}

/**
 * The model itself against the kernel: the same generator on a plain local directory (no FUSE, so
 * no .fuse_hidden names). A mismatch here is a bug of the model, not of Coffer.
 */
export async function runOnPlainDirectory(dir: string, seed: number, count: number): Promise<{ stats: Stats; mismatch: Mismatch | null; log: Op[] }> {
  const v = new Verifier(dir, {}, false);
  const rng = new Rng(seed);
  const log: Op[] = [];
  try {
    for (let i = 0; i < count; i++) {
      const op: Op = (i + 1) % 500 === 0 ? { op: 'check' } : generateOp(rng, v.model, v.slotViews());
      log.push(op);
      await v.apply(op, i);
    }
    await v.closeAll(log);
    await v.compareTree(log.length, null);
    return { stats: v.stats, mismatch: null, log };
  } catch (err) {
    if (err instanceof Mismatch) return { stats: v.stats, mismatch: err, log };
    throw err;
  } finally {
    await v.closeAll().catch(() => {});
  }
}
