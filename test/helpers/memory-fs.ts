/**
 * An in-memory WorkspaceFileSystem: a test double of the workspace ENGINE, so the FUSE driver can
 * be tested for real against the kernel. It records what the driver asked for (calls, write sizes,
 * utimens values) so tests can assert on the engine side too.
 *
 * Test hooks: reading a file named `poison` fails with an IntegrityError; any operation on a path
 * whose last component is `slow` waits `slowMs` first.
 */
import { constants as fsConstants } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { CofferError, IntegrityError } from '../../src/errors.js';
import type {
  EntryAttributes,
  FileSystemStats,
  OpenOptions,
  WorkspaceFileSystem,
} from '../../src/client/workspace/types.js';

interface Base {
  id: string;
  mode: number;
  created: number;
  mtime: number;
  ctime: number;
  atime: number;
}
interface FileNode extends Base {
  kind: 'file';
  data: Buffer;
  size: number;
}
interface FolderNode extends Base {
  kind: 'folder';
  children: Map<string, Node>;
}
type Node = FileNode | FolderNode;

interface Handle {
  node: FileNode;
  flags: number;
}

export class MemoryFileSystem implements WorkspaceFileSystem {
  readonly readOnly: boolean;
  readonly root: FolderNode;
  /** Every engine call, as 'op path-or-fh'. */
  readonly calls: string[] = [];
  readonly writeLengths: number[] = [];
  maxWriteLength = 0;
  readonly utimensCalls: Array<{ path: string; atimeMs: number; mtimeMs: number }> = [];
  slowMs = 0;
  private readonly handles = new Map<number, Handle>();
  private nextHandle = 1;

  constructor(options: { readOnly?: boolean } = {}) {
    this.readOnly = options.readOnly === true;
    this.root = this.folder(0o755);
  }

  get openHandles(): number {
    return this.handles.size;
  }

  // --- test conveniences -------------------------------------------------------------------

  /** Creates a file directly (parents must exist). */
  seedFile(path: string, content: Buffer | string, mode = 0o644): void {
    const { parent, name } = this.parentOf(path);
    const data = Buffer.from(content);
    parent.children.set(name, { ...this.base(mode), kind: 'file', data, size: data.length });
  }

  seedFolder(path: string, mode = 0o755): void {
    const { parent, name } = this.parentOf(path);
    parent.children.set(name, this.folder(mode));
  }

  /** Content of a file as the engine holds it. */
  content(path: string): Buffer {
    const n = this.lookup(path);
    if (n.kind !== 'file') throw new CofferError('is_a_directory', path);
    return Buffer.from(n.data.subarray(0, n.size));
  }

  exists(path: string): boolean {
    try {
      this.lookup(path);
      return true;
    } catch {
      return false;
    }
  }

  // --- WorkspaceFileSystem -----------------------------------------------------------------

  async stat(path: string): Promise<EntryAttributes> {
    await this.enter('stat', path);
    return this.attrs(this.lookup(path));
  }

  async fstat(fh: number): Promise<EntryAttributes> {
    await this.enter('fstat', String(fh));
    return this.attrs(this.handle(fh).node);
  }

  async readdir(path: string): Promise<string[]> {
    await this.enter('readdir', path);
    const n = this.lookup(path);
    if (n.kind !== 'folder') throw new CofferError('not_a_directory', `not a folder: ${path}`);
    return [...n.children.keys()];
  }

  async create(path: string, mode: number, options: OpenOptions): Promise<number> {
    await this.enter('create', path);
    this.writable();
    const { parent, name } = this.parentOf(path);
    const existing = parent.children.get(name);
    let node: FileNode;
    if (existing) {
      if ((options.flags & fsConstants.O_EXCL) !== 0) throw new CofferError('exists', `exists: ${path}`);
      if (existing.kind !== 'file') throw new CofferError('is_a_directory', `is a folder: ${path}`);
      node = existing;
    } else {
      node = { ...this.base(mode), kind: 'file', data: Buffer.alloc(0), size: 0 };
      parent.children.set(name, node);
      this.touch(parent);
    }
    return this.newHandle(node, options.flags);
  }

  async open(path: string, options: OpenOptions): Promise<number> {
    await this.enter('open', path);
    const node = this.lookup(path);
    if (node.kind !== 'file') throw new CofferError('is_a_directory', `is a folder: ${path}`);
    const writing = (options.flags & 3) !== fsConstants.O_RDONLY || (options.flags & fsConstants.O_TRUNC) !== 0;
    if (writing) this.writable();
    if ((options.flags & fsConstants.O_TRUNC) !== 0) {
      node.size = 0;
      this.touch(node);
    }
    return this.newHandle(node, options.flags);
  }

  async read(fh: number, buffer: Buffer, length: number, position: number): Promise<number> {
    const h = this.handle(fh);
    await this.enter('read', String(fh));
    if (this.nameOf(h.node) === 'poison') throw new IntegrityError('poisoned block');
    if (position >= h.node.size) return 0;
    const end = Math.min(h.node.size, position + length);
    h.node.data.copy(buffer, 0, position, end);
    return end - position;
  }

  async write(fh: number, buffer: Buffer, length: number, position: number): Promise<number> {
    const h = this.handle(fh);
    await this.enter('write', String(fh));
    this.writable();
    this.writeLengths.push(length);
    this.maxWriteLength = Math.max(this.maxWriteLength, length);
    const node = h.node;
    const pos = (h.flags & fsConstants.O_APPEND) !== 0 ? node.size : position;
    this.ensureCapacity(node, pos + length);
    buffer.copy(node.data, pos, 0, length); // copy: fuse-native detaches the buffer afterwards
    if (pos > node.size) node.data.fill(0, node.size, pos);
    node.size = Math.max(node.size, pos + length);
    this.touch(node);
    return length;
  }

  async truncate(path: string, size: number): Promise<void> {
    await this.enter('truncate', path);
    this.writable();
    const node = this.lookup(path);
    if (node.kind !== 'file') throw new CofferError('is_a_directory', `is a folder: ${path}`);
    this.resize(node, size);
  }

  async ftruncate(fh: number, size: number): Promise<void> {
    await this.enter('ftruncate', String(fh));
    this.writable();
    this.resize(this.handle(fh).node, size);
  }

  async flush(fh: number): Promise<void> {
    await this.enter('flush', String(fh));
    this.handle(fh);
  }

  async fsync(fh: number): Promise<void> {
    await this.enter('fsync', String(fh));
    this.handle(fh);
  }

  async release(fh: number): Promise<void> {
    await this.enter('release', String(fh));
    this.handle(fh);
    this.handles.delete(fh);
  }

  async unlink(path: string): Promise<void> {
    await this.enter('unlink', path);
    this.writable();
    const { parent, name } = this.parentOf(path);
    const node = parent.children.get(name);
    if (!node) throw new CofferError('not_found', `no such entry: ${path}`);
    if (node.kind === 'folder') throw new CofferError('is_a_directory', `is a folder: ${path}`);
    parent.children.delete(name);
    this.touch(parent);
  }

  async mkdir(path: string, mode: number): Promise<void> {
    await this.enter('mkdir', path);
    this.writable();
    const { parent, name } = this.parentOf(path);
    if (parent.children.has(name)) throw new CofferError('exists', `exists: ${path}`);
    if (Buffer.byteLength(name) > 255) throw new CofferError('name_too_long', 'name too long');
    parent.children.set(name, this.folder(mode));
    this.touch(parent);
  }

  async rmdir(path: string): Promise<void> {
    await this.enter('rmdir', path);
    this.writable();
    if (path === '/') throw new CofferError('busy', 'cannot remove the root');
    const { parent, name } = this.parentOf(path);
    const node = parent.children.get(name);
    if (!node) throw new CofferError('not_found', `no such entry: ${path}`);
    if (node.kind !== 'folder') throw new CofferError('not_a_directory', `not a folder: ${path}`);
    if (node.children.size > 0) throw new CofferError('not_empty', `folder not empty: ${path}`);
    parent.children.delete(name);
    this.touch(parent);
  }

  async rename(from: string, to: string): Promise<void> {
    await this.enter('rename', `${from} -> ${to}`);
    this.writable();
    if (to === from) return;
    if (to.startsWith(`${from}/`)) throw new CofferError('bad_request', 'cannot move a folder into itself');
    const src = this.parentOf(from);
    const node = src.parent.children.get(src.name);
    if (!node) throw new CofferError('not_found', `no such entry: ${from}`);
    const dst = this.parentOf(to);
    const existing = dst.parent.children.get(dst.name);
    if (existing) {
      if (existing.kind === 'folder' && node.kind !== 'folder') throw new CofferError('is_a_directory', `is a folder: ${to}`);
      if (existing.kind !== 'folder' && node.kind === 'folder') throw new CofferError('not_a_directory', `not a folder: ${to}`);
      if (existing.kind === 'folder' && existing.children.size > 0) throw new CofferError('not_empty', `not empty: ${to}`);
    }
    src.parent.children.delete(src.name);
    dst.parent.children.set(dst.name, node);
    node.ctime = Date.now();
    this.touch(src.parent);
    this.touch(dst.parent);
  }

  async utimens(path: string, atimeMs: number, mtimeMs: number): Promise<void> {
    await this.enter('utimens', path);
    this.writable();
    this.utimensCalls.push({ path, atimeMs, mtimeMs });
    const node = this.lookup(path);
    node.atime = atimeMs;
    node.mtime = mtimeMs;
    node.ctime = Date.now();
  }

  async chmod(path: string, mode: number): Promise<void> {
    await this.enter('chmod', path);
    this.writable();
    const node = this.lookup(path);
    node.mode = mode & 0o7777;
    node.ctime = Date.now();
  }

  async statfs(): Promise<FileSystemStats> {
    await this.enter('statfs', '/');
    return {
      blockSize: 4096,
      totalBlocks: 1_048_576, // 4 GiB
      freeBlocks: 524_288,
      availableBlocks: 524_288,
      totalFiles: 1_000_000,
      freeFiles: 999_000,
      nameMax: 255,
    };
  }

  // --- internals ---------------------------------------------------------------------------

  private async enter(op: string, what: string): Promise<void> {
    this.calls.push(`${op} ${what}`);
    if (this.slowMs > 0 && what.endsWith('/slow')) await new Promise((r) => setTimeout(r, this.slowMs));
  }

  private writable(): void {
    if (this.readOnly) throw new CofferError('read_only', 'read-only workspace');
  }

  private base(mode: number): Base {
    const now = Date.now();
    return { id: randomUUID(), mode: mode & 0o7777, created: now, mtime: now, ctime: now, atime: now };
  }

  private folder(mode: number): FolderNode {
    return { ...this.base(mode), kind: 'folder', children: new Map() };
  }

  private touch(node: Node): void {
    const now = Date.now();
    node.mtime = now;
    node.ctime = now;
  }

  private attrs(n: Node): EntryAttributes {
    let subfolders = 0;
    if (n.kind === 'folder') for (const c of n.children.values()) if (c.kind === 'folder') subfolders++;
    return {
      kind: n.kind,
      id: n.id,
      size: n.kind === 'file' ? n.size : 0,
      mode: n.mode,
      created: n.created,
      mtime: n.mtime,
      ctime: n.ctime,
      atime: n.atime,
      nlink: n.kind === 'folder' ? subfolders + 2 : 1,
    };
  }

  private split(path: string): string[] {
    if (!path.startsWith('/')) throw new CofferError('bad_request', `not absolute: ${path}`);
    return path.split('/').filter((p) => p.length > 0);
  }

  private lookup(path: string): Node {
    let node: Node = this.root;
    for (const part of this.split(path)) {
      if (node.kind !== 'folder') throw new CofferError('not_a_directory', `not a folder on the way to ${path}`);
      const next: Node | undefined = node.children.get(part);
      if (!next) throw new CofferError('not_found', `no such entry: ${path}`);
      node = next;
    }
    return node;
  }

  private parentOf(path: string): { parent: FolderNode; name: string } {
    const parts = this.split(path);
    const name = parts.pop();
    if (name === undefined) throw new CofferError('bad_request', 'the root has no parent');
    const parent = this.lookup(`/${parts.join('/')}`);
    if (parent.kind !== 'folder') throw new CofferError('not_a_directory', `not a folder: ${path}`);
    return { parent, name };
  }

  private nameOf(node: FileNode): string | undefined {
    const walk = (folder: FolderNode): string | undefined => {
      for (const [name, child] of folder.children) {
        if (child === node) return name;
        if (child.kind === 'folder') {
          const found = walk(child);
          if (found !== undefined) return found;
        }
      }
      return undefined;
    };
    return walk(this.root);
  }

  private handle(fh: number): Handle {
    const h = this.handles.get(fh);
    if (!h) throw new CofferError('bad_request', `unknown handle ${fh}`);
    return h;
  }

  private newHandle(node: FileNode, flags: number): number {
    const fh = this.nextHandle++;
    this.handles.set(fh, { node, flags });
    return fh;
  }

  private ensureCapacity(node: FileNode, size: number): void {
    if (node.data.length >= size) return;
    const grown = Buffer.alloc(Math.max(size, node.data.length * 2, 4096));
    node.data.copy(grown, 0, 0, node.size);
    node.data = grown;
  }

  private resize(node: FileNode, size: number): void {
    if (size > node.size) {
      this.ensureCapacity(node, size);
      node.data.fill(0, node.size, size);
    }
    node.size = size;
    this.touch(node);
  }
}
