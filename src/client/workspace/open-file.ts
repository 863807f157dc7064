import type { Entry } from './entries.js';

/** One block being written: its full plaintext so far (zeros where nothing was written). */
export interface BlockBuffer {
  /**
   * Recycled memory: only its first `length` bytes are the block's. Whatever lies past them (another
   * block's old bytes) is zeroed before it becomes part of the block (a write past `length`) and
   * never read (a read there sees zeros: a hole).
   */
  data: Buffer;
  /** Bytes of `data` that belong to the file (the rest is beyond the end of the file). */
  length: number;
}

/**
 * The state shared by every handle open on one file: blocks being written, kept in memory until
 * they are full (or the file is flushed), then encrypted once with their final key.
 */
export class OpenFile {
  readonly buffers = new Map<number, BlockBuffer>();
  readonly sealing = new Map<number, Promise<void>>();
  handles = 0;
  /** Unlinked while open: forgotten when the last handle closes. */
  unlinked = false;
  /** Last block index read, to detect sequential reads and prefetch. */
  lastReadIndex = -1;
  /** write() calls in progress (they read the current blocks before they record a change). */
  writing = 0;
  /** Full blocks go to the server as soon as they are sealed (see EngineOptions.onBlockSealed). */
  uploadEarly = false;
  /** The last O_APPEND write queued: appends run one at a time, each at the size the one before left. */
  appending: Promise<unknown> = Promise.resolve();
  /** A failure to store a block locally, reported on the next write or flush. */
  error: Error | null = null;
  /** Background retry of storing bytes left unsealed by a failure after the last close (engine.retrySeal). */
  retryTimer: NodeJS.Timeout | null = null;

  constructor(readonly entry: Entry) {}
}

export interface Handle {
  file: OpenFile;
  readable: boolean;
  writable: boolean;
  append: boolean;
}
