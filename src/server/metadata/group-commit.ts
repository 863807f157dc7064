import { open } from 'node:fs/promises';

/**
 * Group commit for a SQLite database in WAL mode. Hot writes commit with synchronous = NORMAL (no
 * fsync on the event loop: each one blocked the server for the disk's whole flush, ≈3 ms here, and
 * serialised every request behind it), then wait here until the WAL file is flushed by one
 * fdatasync in the thread pool that covers every commit made before it started. A write is still
 * acknowledged only once it is on disk, as with synchronous = FULL, but N concurrent writers share
 * one flush instead of paying N in a row.
 */
export class WalGroupCommit {
  /** Commits made so far, and how many of them the last finished flush covered. */
  private committed = 0;
  private flushed = 0;
  private flushing: Promise<void> | null = null;

  constructor(private readonly walPath: string) {}

  /** Call right after a commit (synchronously, before any other commit can interleave); resolves once it is durable. */
  async committedDurably(): Promise<void> {
    const mine = ++this.committed;
    while (this.flushed < mine) {
      this.flushing ??= this.flush().finally(() => {
        this.flushing = null;
      });
      await this.flushing;
    }
  }

  private async flush(): Promise<void> {
    const upTo = this.committed;
    // Its own descriptor: fdatasync flushes the file (the inode), whoever wrote it.
    const fh = await open(this.walPath, 'r+');
    try {
      await fh.datasync();
    } finally {
      await fh.close();
    }
    this.flushed = Math.max(this.flushed, upTo);
  }
}
