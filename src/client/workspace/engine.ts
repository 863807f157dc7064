import { statfs } from 'node:fs/promises';
import { constants as fsc } from 'node:fs';
import type { Logger } from 'pino';
import { copyBytes, sealBlock as sealBlockInline, type BlockCryptoPool } from '../../crypto/index.js';
import { CofferError, expectedError } from '../../errors.js';
import { planTruncate, touchedBlocks } from '../../model/blocks.js';
import { newId } from '../../model/ids.js';
import {
  newFileManifest,
  newFolderManifest,
  type BlockRef,
  type FileManifest,
  type FolderManifest,
  type Manifest,
  type WorkspaceManifest,
} from '../../model/manifests.js';
import { MAX_NAME_BYTES, validateEntryName } from '../../model/names.js';
import type { Role } from '../../protocol/schemas.js';
import type { BlockReader } from '../block-reader.js';
import type { LocalStore } from '../local-store.js';
import type { Entry, EntryTable } from './entries.js';
import { OpenFile, type BlockBuffer, type Handle } from './open-file.js';
import type { EntryAttributes, FileSystemStats, OpenOptions, WorkspaceFileSystem } from './types.js';

export interface EngineOptions {
  realmId: string;
  /** Read-only by request (a `--read-only` mount); a reader role makes it read-only too. */
  readOnly: boolean;
  role: Role;
  blockSize: number;
  /** Where the local store lives: statfs reports that disk's space. */
  dataDir: string;
  /**
   * Told about each full block sealed while its file is open (the sync engine uploads it early).
   * Only for files opened under a path `uploadEarly` accepts (not editor/OS litter kept local).
   * True when it keeps the ciphertext (and gives its memory back to the pool when done with it).
   */
  onBlockSealed?: (ref: BlockRef, ciphertext: Buffer) => boolean;
  uploadEarly?: (path: string) => boolean;
}

type FolderLike = FolderManifest | WorkspaceManifest;

/** How many blocks of one file may wait in memory before the oldest are sealed (bounds RSS). */
const MAX_BUFFERED_BLOCKS = 8;
/** How many block encryptions per file may be in flight before writes wait (backpressure). */
const MAX_SEALING = 4;
/**
 * Read-ahead of a sequential reader, in blocks (8 MiB of 512 KiB blocks, inside BlockReader's 24 MiB):
 * a cold read from the server went 156-170 -> 168-220 MiB/s from 8 to 16; 24 and 32 were slower
 * (116-190 MiB/s, the mount's main thread busier: 86-122 ticks per 256 MiB against 54-75).
 */
const PREFETCH_BLOCKS = 16;
/** A file open with more blocks than this is saved on flush/fsync/close only, not in the background. */
const DEFER_PERSIST_BLOCKS = 64;
/**
 * Blocks up to this size (small files, tails) are encrypted on the event loop: ~10 us of AES-GCM +
 * SHA-256 costs less than a round trip to a worker thread, which is what a small file's close() waits on.
 */
const INLINE_SEAL_BYTES = 64 * 1024;

/** What a sealed BlockBuffer holds once its memory went back to the pool: any use of it throws (see live()). */
const GIVEN_BACK = Buffer.alloc(0);

function isFolder(m: Manifest): m is FolderLike {
  return m.type === 'folder' || m.type === 'workspace';
}

function splitPath(path: string): string[] {
  if (!path.startsWith('/')) throw new CofferError('invalid_name', `not an absolute path: ${path}`);
  return path.split('/').filter((p) => p.length > 0);
}

/** Index of the block at `offset` in a sorted block list, or -1 (binary search: large files have thousands). */
function refIndex(blocks: readonly BlockRef[], offset: number): number {
  let lo = 0;
  let hi = blocks.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const o = blocks[mid]!.offset;
    if (o === offset) return mid;
    if (o < offset) lo = mid + 1;
    else hi = mid - 1;
  }
  return -1;
}

/**
 * File-system semantics over manifests, entirely against the local store: path resolution, handles,
 * read/write/truncate on blocks, namespace operations. Never waits on the network for a write; reads
 * of data never seen locally go through the BlockReader (and so to the server).
 */
export class WorkspaceEngine implements WorkspaceFileSystem {
  private readonly handles = new Map<number, Handle>();
  private readonly openFiles = new Map<string, OpenFile>();
  private nextHandle = 1;
  private role: Role;

  constructor(
    private readonly entries: EntryTable,
    private readonly blocks: BlockReader,
    private readonly pool: BlockCryptoPool,
    private readonly store: LocalStore,
    private readonly opts: EngineOptions,
    private readonly logger: Logger,
  ) {
    this.role = opts.role;
    entries.deferred = (e) => {
      const f = this.openFiles.get(e.id);
      return f !== undefined && f.handles > 0 && e.manifest.type === 'file' && e.manifest.blocks.length > DEFER_PERSIST_BLOCKS && !f.unlinked;
    };
  }

  get readOnly(): boolean {
    return this.opts.readOnly || this.role === 'reader';
  }

  /** Follows a role change without a remount (a reader's mount refuses writes with EROFS). */
  setRole(role: Role): void {
    if (role === this.role) return;
    const was = this.readOnly;
    this.role = role;
    if (was !== this.readOnly) this.logger.warn({ role, readOnly: this.readOnly }, this.readOnly ? 'role changed: the mount is now read-only' : 'role changed: the mount is now writable');
  }

  private assertWritable(): void {
    if (this.opts.readOnly) throw new CofferError('read_only', 'this workspace is mounted read-only');
    if (this.role === 'reader') throw new CofferError('read_only', 'you are a reader of this workspace');
  }

  // ---- path resolution -------------------------------------------------------------------------

  private async resolve(path: string): Promise<Entry> {
    const parts = splitPath(path);
    return this.walkLocal(parts) ?? this.walk(parts);
  }

  /**
   * The entry at `parts` when every entry on the way is in memory or in the local store (the usual
   * case), without the await per component that walk() takes; undefined when one must be fetched.
   */
  private walkLocal(parts: readonly string[]): Entry | undefined {
    let entry = this.entries.peek(this.opts.realmId);
    for (let i = 0; i < parts.length && entry; i++) entry = this.entries.peek(this.childId(entry, parts[i]!));
    return entry;
  }

  private async walk(parts: readonly string[]): Promise<Entry> {
    let entry = await this.entries.get(this.opts.realmId);
    for (const name of parts) entry = await this.entries.get(this.childId(entry, name));
    return entry;
  }

  private childId(entry: Entry, name: string): string {
    const m = entry.manifest;
    if (!isFolder(m)) throw new CofferError('not_a_directory', `${name}: a parent is not a folder`);
    const child = m.children[name];
    if (child === undefined) throw expectedError('not_found', 'no such file or folder');
    return child;
  }

  /** The entry at a workspace path (for pinning and other whole-tree work). */
  async entryAt(path: string): Promise<Entry> {
    return this.resolve(path);
  }

  private async resolveParent(path: string): Promise<{ parent: Entry; folder: FolderLike; name: string }> {
    const parts = splitPath(path);
    const name = parts.pop();
    if (name === undefined) throw new CofferError('busy', 'the workspace root cannot be changed this way');
    if (Buffer.byteLength(name, 'utf8') > MAX_NAME_BYTES) throw new CofferError('name_too_long', 'name longer than 255 bytes');
    const parent = this.walkLocal(parts) ?? (await this.walk(parts));
    if (!isFolder(parent.manifest)) throw new CofferError('not_a_directory', 'parent is not a folder');
    return { parent, folder: parent.manifest, name };
  }

  private fileOf(entry: Entry): FileManifest {
    if (entry.manifest.type !== 'file') throw new CofferError('is_a_directory', 'is a folder');
    return entry.manifest;
  }

  // ---- attributes ------------------------------------------------------------------------------

  private attributes(entry: Entry): EntryAttributes {
    const m = entry.manifest;
    if (m.type === 'user') throw new CofferError('integrity', 'a user manifest inside a workspace');
    // Folders report nlink 1 ("unknown"), as btrfs and most FUSE file systems do: tools then do not
    // use the link count to skip sub-folders. One literal (no spread of a common part): every stat builds one.
    const file = m.type === 'file';
    return { kind: file ? 'file' : 'folder', id: entry.id, size: file ? m.size : 4096, mode: m.mode, created: m.created, mtime: m.updated, ctime: m.updated, atime: m.updated, nlink: 1 };
  }

  async stat(path: string): Promise<EntryAttributes> {
    return this.attributes(await this.resolve(path));
  }

  async fstat(fh: number): Promise<EntryAttributes> {
    return this.attributes(this.handle(fh).file.entry);
  }

  async readdir(path: string): Promise<string[]> {
    const entry = await this.resolve(path);
    const m = entry.manifest;
    if (!isFolder(m)) throw new CofferError('not_a_directory', 'not a folder');
    const ids = Object.values(m.children);
    // One batched request for the children never seen: `ls -l` then stats them locally.
    try {
      await this.entries.fetchMissing(ids);
    } catch (err) {
      if (!(err instanceof CofferError && err.code === 'offline')) throw err;
      this.logger.warn({ path }, 'listing a folder offline: entries never cached will fail to open');
    }
    return Object.keys(m.children);
  }

  // ---- handles ---------------------------------------------------------------------------------

  private handle(fh: number): Handle {
    const h = this.handles.get(fh);
    if (!h) throw new CofferError('bad_request', `unknown file handle ${fh}`);
    return h;
  }

  private openHandle(entry: Entry, flags: number, path: string): number {
    const access = flags & 3; // O_ACCMODE (absent from node:fs constants)
    const writable = access === fsc.O_WRONLY || access === fsc.O_RDWR;
    if (writable) this.assertWritable();
    let file = this.openFiles.get(entry.id);
    if (!file) {
      file = new OpenFile(entry);
      this.openFiles.set(entry.id, file);
    }
    if (writable && this.opts.onBlockSealed && this.opts.uploadEarly?.(path)) file.uploadEarly = true;
    file.handles++;
    const fh = this.nextHandle++;
    this.handles.set(fh, { file, readable: access !== fsc.O_WRONLY, writable, append: (flags & fsc.O_APPEND) !== 0 });
    return fh;
  }

  async create(path: string, mode: number, options: OpenOptions): Promise<number> {
    this.assertWritable();
    const { parent, folder, name } = await this.resolveParent(path);
    validateEntryName(name);
    if (folder.children[name] !== undefined) {
      // The name appeared after the kernel's lookup (e.g. from another device): create(2) without
      // O_EXCL opens it (O_TRUNC truncates), as a local file system would. The mount passes O_EXCL
      // when it cannot tell (fuse-native).
      if ((options.flags & fsc.O_EXCL) !== 0) throw new CofferError('exists', 'file exists');
      return this.open(path, { flags: options.flags & ~fsc.O_CREAT });
    }
    const now = Date.now();
    const m = newFileManifest(newId(), parent.id, now, this.opts.blockSize);
    m.mode = mode & 0o7777;
    const entry = this.entries.create(m);
    folder.children[name] = m.id;
    folder.updated = now;
    this.entries.linkChanged(parent, name);
    return this.openHandle(entry, options.flags, path);
  }

  async open(path: string, options: OpenOptions): Promise<number> {
    const entry = await this.resolve(path);
    this.fileOf(entry);
    const fh = this.openHandle(entry, options.flags, path);
    if ((options.flags & fsc.O_TRUNC) !== 0 && this.handle(fh).writable) {
      await this.truncateFile(this.handle(fh).file, 0);
    }
    return fh;
  }

  async flush(fh: number): Promise<void> {
    const h = this.handle(fh);
    if (!h.writable) return;
    await this.sealAll(h.file);
    this.entries.persist(false);
  }

  async fsync(fh: number): Promise<void> {
    const h = this.handle(fh);
    // fsync(2) covers the whole file, including bytes written through other descriptors.
    await this.sealAll(h.file);
    await this.store.syncBlockFiles(); // off the event loop; the save below commits with synchronous=FULL
    this.entries.persist(true);
  }

  async release(fh: number): Promise<void> {
    const h = this.handle(fh);
    try {
      if (h.writable) {
        await this.sealAll(h.file);
        this.entries.persist(false);
      }
    } finally {
      this.handles.delete(fh);
      const file = h.file;
      file.handles--;
      if (file.handles === 0 && file.buffers.size === 0 && file.sealing.size === 0) {
        this.openFiles.delete(file.entry.id);
        if (file.unlinked) this.forgetEntry(file.entry);
      } else if (file.handles === 0 && file.buffers.size > 0) this.retrySeal(file, 1000);
    }
  }

  /**
   * The last handle closed with bytes that could not be stored (disk full): they stay in memory and
   * keep the file busy, which kept it (and its folder) from ever uploading until a remount. Retry
   * storing them in the background until it works (found by test/e2e/disk-full.test.ts).
   */
  private retrySeal(file: OpenFile, delayMs: number): void {
    if (file.retryTimer) return;
    file.retryTimer = setTimeout(() => {
      file.retryTimer = null;
      if (file.handles > 0 || this.openFiles.get(file.entry.id) !== file) return; // an open handle's flush/close retries
      this.sealAll(file)
        .then(() => {
          this.entries.persist(false);
          if (file.handles === 0 && file.buffers.size === 0 && file.sealing.size === 0) {
            this.openFiles.delete(file.entry.id);
            if (file.unlinked) this.forgetEntry(file.entry);
          }
          this.logger.info({ entry: file.entry.id }, 'stored the data of a file closed while the disk was full');
        })
        .catch(() => this.retrySeal(file, Math.min(30_000, delayMs * 2)));
    }, delayMs);
    file.retryTimer.unref();
  }

  // ---- data ------------------------------------------------------------------------------------

  async read(fh: number, buffer: Buffer, length: number, position: number): Promise<number> {
    const h = this.handle(fh);
    const file = h.file;
    const m = this.fileOf(file.entry);
    if (position >= m.size) return 0;
    const n = Math.min(length, m.size - position);
    const bs = m.blockSize;
    for (const s of touchedBlocks(position, n, bs)) {
      const sealing = file.sealing.get(s.index);
      if (sealing) await sealing;
      const len = s.end - s.start;
      const buffered = file.buffers.get(s.index);
      if (buffered) {
        // Past the buffer's length the file has a hole here (it grew by a truncate or a later block).
        const got = copyBytes(this.live(buffered), buffer, s.bufferOffset, s.start, Math.min(s.end, buffered.length));
        if (got < len) buffer.fill(0, s.bufferOffset + got, s.bufferOffset + len);
        continue;
      }
      const i = refIndex(m.blocks, s.blockOffset);
      const ref = i >= 0 ? m.blocks[i] : undefined;
      if (!ref || s.start >= ref.size) {
        buffer.fill(0, s.bufferOffset, s.bufferOffset + len); // a hole
        continue;
      }
      if (s.index === file.lastReadIndex + 1) this.blocks.prefetch(m.blocks.slice(i + 1, i + 1 + PREFETCH_BLOCKS));
      file.lastReadIndex = s.index;
      const available = await this.blocks.copy(ref, buffer, s.bufferOffset, s.start, Math.min(s.end, ref.size));
      if (available < len) buffer.fill(0, s.bufferOffset + available, s.bufferOffset + len);
    }
    return n;
  }

  async write(fh: number, buffer: Buffer, length: number, position: number): Promise<number> {
    this.assertWritable();
    const h = this.handle(fh);
    if (!h.writable) throw new CofferError('forbidden', 'file not open for writing');
    const file = h.file;
    const m = this.fileOf(file.entry);
    // Busy from here on (isBusy): until the change is recorded, the sync engine must not swap in a
    // remote version under the blocks this write is reading.
    file.writing++;
    try {
      if (!h.append) return await this.writeBlocks(file, m, false, buffer, length, position);
      // An append takes its position from the size, which an append still in progress has not
      // extended yet: queued behind it, two appenders never write over each other.
      const done = file.appending.then(() => this.writeBlocks(file, this.fileOf(file.entry), true, buffer, length, position));
      file.appending = done.catch(() => undefined);
      return await done;
    } finally {
      file.writing--;
    }
  }

  private async writeBlocks(file: OpenFile, m: FileManifest, append: boolean, buffer: Buffer, length: number, position: number): Promise<number> {
    const pos = append ? m.size : position;
    const bs = m.blockSize;
    const slices = touchedBlocks(pos, length, bs);
    for (const s of slices) {
      let b = await this.bufferFor(file, m, s.index, s.start, s.end);
      // Only the map's buffer may be written: by the time this resumes, a concurrent write to the block
      // (the writeback cache sends several) may have sealed it (its memory lent, then given back).
      while (file.buffers.get(s.index) !== b) b = await this.bufferFor(file, m, s.index, s.start, s.end);
      if (s.start > b.length) this.live(b).fill(0, b.length, s.start); // a hole inside the block
      copyBytes(buffer, this.live(b), s.start, s.bufferOffset, s.bufferOffset + (s.end - s.start));
      b.length = Math.max(b.length, s.end);
    }
    if (pos + length > m.size) m.size = pos + length;
    m.updated = Date.now();
    this.entries.changed(file.entry);
    // A block written up to its end is complete for a sequential writer: encrypt it now, once.
    for (const s of slices) if (s.end === bs) this.startSeal(file, s.index);
    if (file.buffers.size > MAX_BUFFERED_BLOCKS) {
      const oldest = [...file.buffers.keys()].sort((a, b) => a - b).slice(0, file.buffers.size - MAX_BUFFERED_BLOCKS);
      for (const i of oldest) this.startSeal(file, i);
    }
    while (file.sealing.size > MAX_SEALING) await Promise.race(file.sealing.values());
    if (file.error) throw file.error;
    return length;
  }

  /** The in-memory block being written at `index`, loaded from its current content when needed. */
  private async bufferFor(file: OpenFile, m: FileManifest, index: number, start: number, end: number): Promise<BlockBuffer> {
    for (;;) {
      const sealing = file.sealing.get(index);
      if (!sealing) break;
      await sealing;
    }
    const existing = file.buffers.get(index);
    if (existing) return existing;
    const bs = m.blockSize;
    const off = index * bs;
    const fileBytes = Math.max(0, Math.min(bs, m.size - off));
    // Not zeroed as a whole (512 KiB per small file): only the file's bytes not read from the block
    // below; past `length` nothing is read before it is written or zeroed (see BlockBuffer).
    const data = this.pool.buffer(bs, false);
    const i = refIndex(m.blocks, off);
    const ref = i >= 0 ? m.blocks[i] : undefined;
    let copied = 0;
    if (ref && !(start === 0 && end >= Math.min(fileBytes, ref.size))) {
      // What the block really held: a shorter plaintext leaves the rest to the zeroing below.
      copied = await this.blocks.copy(ref, data, 0, 0, Math.min(ref.size, fileBytes));
    }
    data.fill(0, copied, fileBytes);
    const raced = file.buffers.get(index);
    if (raced) {
      this.pool.giveBack(data); // never shared: the copy above is done
      return raced;
    }
    const b = { data, length: fileBytes };
    file.buffers.set(index, b);
    return b;
  }

  private startSeal(file: OpenFile, index: number): void {
    const b = file.buffers.get(index);
    if (!b || file.sealing.has(index)) return;
    file.buffers.delete(index);
    const p = this.sealBlock(file, index, b)
      .catch((err: unknown) => {
        // Keep the bytes (the next flush retries) and report the failure on the next write/flush.
        if (!file.buffers.has(index)) file.buffers.set(index, b);
        file.error = err instanceof Error ? err : new Error(String(err));
        this.logger.error({ entry: file.entry.id, err: file.error.message }, 'could not store a block locally');
      })
      .finally(() => file.sealing.delete(index));
    file.sealing.set(index, p);
  }

  /** Encrypts a block once with its final random key and keeps the ciphertext as a dirty block. */
  private async sealBlock(file: OpenFile, index: number, b: BlockBuffer): Promise<void> {
    const m = this.fileOf(file.entry);
    const bs = m.blockSize;
    const off = index * bs;
    const len = Math.min(b.length, m.size - off);
    if (len <= 0) {
      this.retireBuffer(b); // truncated away meanwhile
      return;
    }
    // Block buffers are the pool's shared memory (or small enough to be sealed inline): lent to the
    // worker, not copied or moved, so `b.data` still holds the bytes if storing fails below and
    // startSeal puts `b` back for a retry (after ENOSPC: test/e2e/disk-full.test.ts).
    const data = this.live(b);
    const enc = len <= INLINE_SEAL_BYTES ? sealBlockInline(data.subarray(0, len)) : await this.pool.encrypt(len === data.length ? data : data.subarray(0, len));
    const id = newId();
    // A small block waits for the save that records it (the close's): one commit for both.
    if (!this.store.stageDirtyBlock(id, enc.ciphertext)) await this.store.putDirtyBlock(id, enc.ciphertext);
    const size = Math.min(len, m.size - off);
    if (size <= 0) {
      this.entries.dropLater(file.entry, id); // truncated away meanwhile
      this.pool.giveBack(enc.ciphertext);
      this.retireBuffer(b);
      return;
    }
    const ref: BlockRef = { id, offset: off, size, key: enc.key, digest: enc.digest };
    const i = refIndex(m.blocks, off);
    if (i >= 0) {
      this.dropBlock(file.entry, m.blocks[i]!);
      m.blocks[i] = ref;
    } else {
      let at = m.blocks.findIndex((r) => r.offset > off);
      if (at < 0) at = m.blocks.length;
      m.blocks.splice(at, 0, ref);
    }
    this.entries.changed(file.entry);
    const kept = file.uploadEarly && size === bs && file.entry.localOnly !== true && this.opts.onBlockSealed?.(ref, enc.ciphertext) === true;
    // Stored: unless the uploader keeps it, the ciphertext's (pool) memory is free again.
    if (!kept) this.pool.giveBack(enc.ciphertext);
    this.retireBuffer(b);
  }

  /**
   * A sealed block buffer's memory goes back to the pool (a small file must not leave a resident
   * 512 KiB buffer behind for the GC), and the BlockBuffer is dead from then on: startSeal took it
   * out of file.buffers, so nothing should reach it any more, and live() makes sure of it.
   */
  private retireBuffer(b: BlockBuffer): void {
    this.pool.giveBack(b.data);
    b.data = GIVEN_BACK;
  }

  /**
   * A block buffer's memory, checked on every use: never another block's bytes after it went back to
   * the pool (rule 3 in crypto/pool.ts), but an error.
   */
  private live(b: BlockBuffer): Buffer {
    if (b.data === GIVEN_BACK || !this.pool.owns(b.data)) throw new CofferError('internal', 'a block buffer was used after its memory went back to the pool');
    return b.data;
  }

  /** A block the entry stops referencing: a never-uploaded one is dropped with the next persist. */
  private dropBlock(entry: Entry, ref: BlockRef): void {
    this.blocks.forget(ref.id);
    if (this.store.isDirtyBlock(ref.id)) this.entries.dropLater(entry, ref.id);
  }

  private async sealAll(file: OpenFile): Promise<void> {
    for (const index of [...file.buffers.keys()]) this.startSeal(file, index);
    while (file.sealing.size > 0) await Promise.all([...file.sealing.values()]);
    if (file.error) {
      const err = file.error;
      file.error = null;
      // Retry the blocks put back after the failure once more before reporting it.
      if (file.buffers.size > 0) throw new CofferError('no_space', `could not store data locally: ${err.message}`);
    }
  }

  private async truncateFile(file: OpenFile, size: number): Promise<void> {
    this.assertWritable();
    const m = this.fileOf(file.entry);
    const bs = m.blockSize;
    // The block straddling the new end becomes a buffer again (its tail zeroed below). Loading it
    // waits, and a seal may finish meanwhile (a flush or release of another handle): the plan is
    // made once nothing is sealing or loading, and applied without a wait. (A plan made before the
    // load put back the block list of before that seal: its block was lost; engine-races.test.ts.)
    for (;;) {
      while (file.sealing.size > 0) await Promise.all([...file.sealing.values()]);
      const trim = size < m.size ? planTruncate(m.blocks, size, bs).trim : null;
      const index = trim ? trim.block.offset / bs : -1;
      if (!trim || file.buffers.has(index)) break;
      const data = this.pool.buffer(bs, true);
      await this.blocks.copy(trim.block, data, 0, 0, trim.block.size);
      if (file.sealing.size === 0 && !file.buffers.has(index) && m.blocks[refIndex(m.blocks, trim.block.offset)] === trim.block) {
        file.buffers.set(index, { data, length: Math.min(bs, m.size - trim.block.offset) });
        break;
      }
      this.pool.giveBack(data); // stale: plan again
    }
    if (size < m.size) {
      const plan = planTruncate(m.blocks, size, bs);
      for (const ref of plan.drop) this.dropBlock(file.entry, ref);
      if (plan.trim) this.dropBlock(file.entry, plan.trim.block); // superseded by its buffer
      m.blocks = plan.keep;
      for (const [index, b] of file.buffers) {
        const off = index * bs;
        if (off >= size) {
          file.buffers.delete(index);
          this.retireBuffer(b);
        } else if (off + bs > size) {
          this.live(b).fill(0, size - off);
          b.length = Math.min(b.length, size - off);
        }
      }
    }
    m.size = size;
    m.updated = Date.now();
    this.entries.changed(file.entry);
  }

  private async withFile<T>(entry: Entry, fn: (file: OpenFile) => Promise<T>): Promise<T> {
    const existing = this.openFiles.get(entry.id);
    if (existing) return fn(existing);
    const file = new OpenFile(entry);
    this.openFiles.set(entry.id, file);
    try {
      const r = await fn(file);
      await this.sealAll(file);
      return r;
    } finally {
      if (file.handles === 0) this.openFiles.delete(entry.id);
    }
  }

  async truncate(path: string, size: number): Promise<void> {
    this.assertWritable();
    const entry = await this.resolve(path);
    this.fileOf(entry);
    await this.withFile(entry, (file) => this.truncateFile(file, size));
    this.entries.persist(false);
  }

  async ftruncate(fh: number, size: number): Promise<void> {
    const h = this.handle(fh);
    if (!h.writable) throw new CofferError('forbidden', 'file not open for writing');
    await this.truncateFile(h.file, size);
  }

  // ---- namespace -------------------------------------------------------------------------------

  /** Drops an entry that no folder references any more (its never-uploaded blocks go too). */
  private forgetEntry(entry: Entry): void {
    if (entry.manifest.type === 'file') for (const ref of entry.manifest.blocks) this.dropBlock(entry, ref);
    this.entries.forget(entry.id);
  }

  private detach(entry: Entry): void {
    const open = this.openFiles.get(entry.id);
    if (open && open.handles > 0) open.unlinked = true;
    else {
      if (open) {
        // Unsealed leftovers of a failed close (retrySeal) go with the file.
        if (open.retryTimer) clearTimeout(open.retryTimer);
        this.openFiles.delete(entry.id);
      }
      this.forgetEntry(entry);
    }
  }

  async unlink(path: string): Promise<void> {
    this.assertWritable();
    const { parent, folder, name } = await this.resolveParent(path);
    const id = folder.children[name];
    if (id === undefined) throw new CofferError('not_found', 'no such file');
    const entry = await this.entries.get(id);
    if (entry.manifest.type !== 'file') throw new CofferError('is_a_directory', 'is a folder (use rmdir)');
    if (folder.children[name] !== id) throw new CofferError('not_found', 'no such file');
    delete folder.children[name];
    folder.updated = Date.now();
    this.entries.linkChanged(parent, name);
    this.detach(entry);
  }

  async mkdir(path: string, mode: number): Promise<void> {
    this.assertWritable();
    const { parent, folder, name } = await this.resolveParent(path);
    validateEntryName(name);
    if (folder.children[name] !== undefined) throw new CofferError('exists', 'already exists');
    const now = Date.now();
    const m = newFolderManifest(newId(), parent.id, now);
    m.mode = mode & 0o7777;
    this.entries.create(m);
    folder.children[name] = m.id;
    folder.updated = now;
    this.entries.linkChanged(parent, name);
  }

  async rmdir(path: string): Promise<void> {
    this.assertWritable();
    const { parent, folder, name } = await this.resolveParent(path);
    const id = folder.children[name];
    if (id === undefined) throw new CofferError('not_found', 'no such folder');
    const entry = await this.entries.get(id);
    if (!isFolder(entry.manifest)) throw new CofferError('not_a_directory', 'not a folder');
    if (Object.keys(entry.manifest.children).length > 0) throw new CofferError('not_empty', 'folder not empty');
    if (folder.children[name] !== id) throw new CofferError('not_found', 'no such folder');
    delete folder.children[name];
    folder.updated = Date.now();
    this.entries.linkChanged(parent, name);
    this.entries.forget(id);
  }

  async rename(from: string, to: string): Promise<void> {
    this.assertWritable();
    const src = await this.resolveParent(from);
    const dst = await this.resolveParent(to);
    validateEntryName(dst.name);
    const id = src.folder.children[src.name];
    if (id === undefined) throw new CofferError('not_found', 'no such file or folder');
    const moving = await this.entries.get(id);
    const replacedId = dst.folder.children[dst.name];
    if (replacedId === id) return;
    const replaced = replacedId === undefined ? null : await this.entries.get(replacedId);
    if (replaced) {
      if (isFolder(moving.manifest)) {
        if (!isFolder(replaced.manifest)) throw new CofferError('not_a_directory', 'cannot replace a file with a folder');
        if (Object.keys(replaced.manifest.children).length > 0) throw new CofferError('not_empty', 'destination folder not empty');
      } else if (isFolder(replaced.manifest)) throw new CofferError('is_a_directory', 'cannot replace a folder with a file');
    }
    if (isFolder(moving.manifest)) {
      // A folder cannot move inside itself.
      let cursor: Entry | undefined = dst.parent;
      while (cursor && cursor.id !== this.opts.realmId) {
        if (cursor.id === id) throw new CofferError('bad_request', 'cannot move a folder inside itself');
        const m: Manifest = cursor.manifest;
        cursor = m.type === 'folder' ? await this.entries.get(m.parent) : undefined;
      }
      if (dst.parent.id === id) throw new CofferError('bad_request', 'cannot move a folder inside itself');
    }
    // Everything is known: mutate in one synchronous step.
    if (src.folder.children[src.name] !== id || dst.folder.children[dst.name] !== replacedId) {
      throw new CofferError('busy', 'the folder changed during rename; retry');
    }
    const now = Date.now();
    delete src.folder.children[src.name];
    dst.folder.children[dst.name] = id;
    src.folder.updated = now;
    dst.folder.updated = now;
    if (dst.parent !== src.parent) {
      this.entries.linkChanged(src.parent, src.name);
      this.entries.linkChanged(dst.parent, dst.name);
    } else this.entries.linkChanged(src.parent, src.name, dst.name);
    const m = moving.manifest;
    if ((m.type === 'file' || m.type === 'folder') && m.parent !== dst.parent.id) {
      m.parent = dst.parent.id;
      this.entries.changed(moving);
    }
    if (replaced) {
      if (isFolder(replaced.manifest)) this.entries.forget(replaced.id);
      else this.detach(replaced);
    }
  }

  async utimens(path: string, _atimeMs: number, mtimeMs: number): Promise<void> {
    this.assertWritable();
    const entry = await this.resolve(path);
    const m = entry.manifest;
    if (m.type === 'user') throw new CofferError('integrity', 'a user manifest inside a workspace');
    m.updated = Math.max(0, Math.round(mtimeMs));
    this.entries.changed(entry);
  }

  async chmod(path: string, mode: number): Promise<void> {
    this.assertWritable();
    const entry = await this.resolve(path);
    const m = entry.manifest;
    if (m.type === 'user') throw new CofferError('integrity', 'a user manifest inside a workspace');
    m.mode = mode & 0o7777;
    this.entries.changed(entry);
  }

  async statfs(): Promise<FileSystemStats> {
    const s = await statfs(this.opts.dataDir);
    return {
      blockSize: s.bsize,
      totalBlocks: s.blocks,
      freeBlocks: s.bfree,
      availableBlocks: s.bavail,
      totalFiles: s.files,
      freeFiles: s.ffree,
      nameMax: MAX_NAME_BYTES,
    };
  }

  /** True while a file has bytes in memory not yet sealed into blocks, or a write in progress: not ready to upload. */
  isBusy(id: string): boolean {
    const f = this.openFiles.get(id);
    return f !== undefined && (f.buffers.size > 0 || f.sealing.size > 0 || f.writing > 0);
  }

  /** Seals and persists everything (on unmount). */
  async close(): Promise<void> {
    for (const file of this.openFiles.values()) {
      if (file.retryTimer) clearTimeout(file.retryTimer);
      // One file that cannot be stored (disk full) must not keep the others from being persisted.
      await this.sealAll(file).catch((err: unknown) => this.logger.error({ entry: file.entry.id, err: (err as Error).message }, 'could not store a file on unmount'));
    }
    await this.store.syncBlockFiles().catch((err: unknown) => this.logger.error({ err: (err as Error).message }, 'could not flush block files on unmount; retried by the last save'));
    this.entries.close();
  }
}
