/**
 * The workspace engine's face toward the mount: POSIX-shaped operations on paths and handles.
 * Paths are absolute inside the workspace ('/' is its root, '/a/b.txt' a file). Every failure is a
 * CofferError whose code the mount maps to one errno.
 */
export type EntryKind = 'file' | 'folder';

export interface EntryAttributes {
  kind: EntryKind;
  id: string;
  size: number;
  /** Permission bits only (0..0o7777). */
  mode: number;
  /** Milliseconds since epoch. */
  created: number;
  mtime: number;
  ctime: number;
  atime: number;
  /** Number of sub-folders + 2 for folders, 1 for files. */
  nlink: number;
}

export interface FileSystemStats {
  blockSize: number;
  totalBlocks: number;
  freeBlocks: number;
  availableBlocks: number;
  totalFiles: number;
  freeFiles: number;
  nameMax: number;
}

/** Open flags the engine understands (the numeric values of node:fs constants). */
export interface OpenOptions {
  flags: number;
}

export interface WorkspaceFileSystem {
  readonly readOnly: boolean;
  stat(path: string): Promise<EntryAttributes>;
  /** Attributes of an open file (sizes of files being written are their current, growing size). */
  fstat(fh: number): Promise<EntryAttributes>;
  readdir(path: string): Promise<string[]>;
  create(path: string, mode: number, options: OpenOptions): Promise<number>;
  open(path: string, options: OpenOptions): Promise<number>;
  /** Fills `buffer` from `position`; returns the number of bytes read (0 at end of file). */
  read(fh: number, buffer: Buffer, length: number, position: number): Promise<number>;
  /** Writes `length` bytes of `buffer` at `position` (at end of file when opened with O_APPEND); returns bytes written. */
  write(fh: number, buffer: Buffer, length: number, position: number): Promise<number>;
  truncate(path: string, size: number): Promise<void>;
  ftruncate(fh: number, size: number): Promise<void>;
  /** Makes the handle's data durable in the local store (called on close(2) of each descriptor). */
  flush(fh: number): Promise<void>;
  fsync(fh: number): Promise<void>;
  release(fh: number): Promise<void>;
  unlink(path: string): Promise<void>;
  mkdir(path: string, mode: number): Promise<void>;
  rmdir(path: string): Promise<void>;
  /** Replaces an existing destination file or empty folder, as rename(2) does. */
  rename(from: string, to: string): Promise<void>;
  utimens(path: string, atimeMs: number, mtimeMs: number): Promise<void>;
  chmod(path: string, mode: number): Promise<void>;
  statfs(): Promise<FileSystemStats>;
}
