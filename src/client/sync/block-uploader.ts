import type { Logger } from 'pino';
import type { BlockRef } from '../../model/manifests.js';
import type { LocalStore } from '../local-store.js';
import type { RemoteWorkspace } from '../remote.js';

/** Ciphertexts kept in memory for blocks waiting to go early; past this, they are read back from the store. */
const MAX_QUEUED_BYTES = 8 * 1024 * 1024;
/**
 * Small blocks (a small file's only block) have their own, larger limit: the connection sends those
 * made in the same turn together, so many in flight means few requests, not many.
 */
const SMALL_BLOCK_BYTES = 64 * 1024;
const SMALL_IN_FLIGHT = 64;
/**
 * A writer sealing more full blocks than this per second (32 MiB/s) is fast: its early uploads wait
 * until it slows down or stops. Uploads running beside a fast write share its CPU: a 256 MiB `dd`
 * into a mount on 2 cores ran at 92–103 MiB/s with 8 early uploads in flight and 194–255 without,
 * while first write -> fully synced stayed the same (4.2–5.3 s: the same work, after the close
 * instead of during the write). A slow writer (a recording, a download) still uploads as it goes.
 */
const FAST_WRITER_BLOCKS_PER_S = 64;
const FAST_WINDOW_MS = 1000;

/**
 * Block uploads with one concurrency limit for the whole workspace, each block at most once at a time.
 * Full blocks are queued as soon as they are sealed (`early`), while their file is still being written:
 * the file's manifest still waits for its close (the sync round), but by then most of its blocks are on
 * the server, so close -> synced costs the tail, not the whole file. Blocks are immutable, so uploading
 * one whose file then changes only leaves an unreferenced block on the server (garbage collected there).
 */
export class BlockUploader {
  private readonly queue: Array<{ ref: BlockRef; data: Buffer | null }> = [];
  private queuedBytes = 0;
  private readonly inflight = new Map<string, Promise<boolean>>();
  /** Uploads in flight and callers waiting for a slot: big blocks, then small ones. */
  private readonly slots = [
    { active: 0, limit: 0, waiters: [] as Array<() => void> },
    { active: 0, limit: SMALL_IN_FLIGHT, waiters: [] as Array<() => void> },
  ];
  /** Early uploads pause after a failure (offline): the sync rounds take over with their backoff. */
  private pausedUntil = 0;
  /** When the full blocks of the last FAST_WINDOW_MS were sealed (oldest first). */
  private readonly sealedAt: number[] = [];
  private pumpTimer: NodeJS.Timeout | null = null;
  stopped = false;
  /** Takes back the memory of a ciphertext nothing uses any more (the session hands in the crypto pool's). */
  recycle: (data: Buffer) => void = () => {};

  constructor(
    private readonly store: LocalStore,
    private readonly remote: RemoteWorkspace,
    private readonly concurrency: number,
    private readonly logger: Logger,
    private readonly now: () => number = Date.now,
  ) {
    this.slots[0]!.limit = concurrency;
  }

  /**
   * A block just sealed: upload it soon, in the background. Never throws. True when it keeps
   * `ciphertext` in memory (it then recycles it once sent or dropped).
   */
  early(ref: BlockRef, ciphertext: Buffer): boolean {
    const now = this.now();
    if (this.stopped || now < this.pausedUntil) return false;
    this.sealedAt.push(now);
    const keep = this.queuedBytes + ciphertext.length <= MAX_QUEUED_BYTES;
    this.queue.push({ ref, data: keep ? ciphertext : null });
    if (keep) this.queuedBytes += ciphertext.length;
    this.pump();
    return keep;
  }

  /** True while blocks are being sealed faster than FAST_WRITER_BLOCKS_PER_S. */
  private fastWriter(): boolean {
    const since = this.now() - FAST_WINDOW_MS;
    while (this.sealedAt.length > 0 && this.sealedAt[0]! < since) this.sealedAt.shift();
    return this.sealedAt.length > FAST_WRITER_BLOCKS_PER_S;
  }

  private pump(): void {
    if (this.queue.length === 0 || this.stopped) return;
    if (this.fastWriter()) {
      // Look again once the writer may have slowed down (its close makes the sync round upload anyway).
      this.pumpTimer ??= setTimeout(() => {
        this.pumpTimer = null;
        this.pump();
      }, FAST_WINDOW_MS / 4).unref();
      return;
    }
    // Early uploads are full blocks: they take the big blocks' slots.
    while (this.slots[0]!.active < this.concurrency && this.queue.length > 0 && !this.stopped) {
      const job = this.queue.shift()!;
      if (job.data) this.queuedBytes -= job.data.length;
      if (this.inflight.has(job.ref.id)) {
        if (job.data) this.recycle(job.data);
        continue;
      }
      void this.upload(job.ref, job.data, true).catch((err: unknown) => {
        // Offline or refused: leave it dirty; the next sync round retries with backoff.
        this.pausedUntil = this.now() + 2000;
        for (const j of this.queue.splice(0)) {
          if (!j.data) continue;
          this.queuedBytes -= j.data.length;
          this.recycle(j.data);
        }
        this.logger.debug({ err: (err as Error).message }, 'early block upload failed; the sync round will retry');
      });
    }
  }

  private async slot(small: boolean): Promise<void> {
    const s = this.slots[small ? 1 : 0]!;
    while (s.active >= s.limit) await new Promise<void>((r) => s.waiters.push(r));
    s.active++;
  }

  private release(small: boolean): void {
    const s = this.slots[small ? 1 : 0]!;
    s.active--;
    s.waiters.shift()?.();
    this.pump();
  }

  /**
   * Uploads a dirty block (once: a concurrent call waits for the same upload) and marks it clean.
   * False when the block is gone from the store (its entry changed meanwhile).
   */
  upload(ref: BlockRef, data: Buffer | null = null, own = false): Promise<boolean> {
    const running = this.inflight.get(ref.id);
    if (running) {
      if (data && own) this.recycle(data);
      return running;
    }
    const small = ref.size <= SMALL_BLOCK_BYTES;
    const p = (async () => {
      // `bytes` is ours once read here (or handed over by early()): recycled once sent or not needed;
      // after a failed send the HTTP stack may still hold it, so then it is left to the GC.
      let bytes: Buffer | null = own ? data : null;
      await this.slot(small);
      try {
        if (!this.store.isDirtyBlock(ref.id)) return this.store.hasBlock(ref.id); // uploaded already, or dropped
        if (!data) bytes = await this.store.getBlock(ref.id);
        const body = data ?? bytes;
        if (!body) return false;
        await this.remote.uploadBlock(ref, body);
        this.store.markBlockClean(ref.id);
        return true;
      } catch (err) {
        bytes = null;
        throw err;
      } finally {
        if (bytes) this.recycle(bytes);
        this.release(small);
      }
    })().finally(() => this.inflight.delete(ref.id));
    this.inflight.set(ref.id, p);
    return p;
  }
}
