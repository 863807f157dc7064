import type { Worker } from 'node:worker_threads';
import type { Logger } from 'pino';
import { startWorker } from '../worker-thread.js';

export interface CheckpointerConfig {
  file: string;
  /** Delay between checkpoints while the last one copied pages. */
  minDelayMs: number;
  /** Delay once idle (doubling from minDelayMs). */
  maxDelayMs: number;
}

export type CheckpointerMessage = { kind: 'checkpointed' } | { kind: 'error'; message: string };

/**
 * Checkpoints a WAL-mode SQLite database from a worker thread (wal-checkpoint-worker.ts, its own
 * connection), so copying committed pages into the database file, and its fsyncs, never run inside
 * a commit on the event loop. SQLite's automatic checkpoint does: in a 2,000-file untar it was ≈40 %
 * of the commits' time in SQLite, ≈20 % of a small file's close (CPU profile).
 *
 * The owner keeps a far automatic checkpoint on its own connection as a safety net (a WAL never grows
 * without bound if the worker dies or falls behind), and `onFailure` when the worker is gone.
 */
export class WalCheckpointer {
  private readonly worker: Worker;
  private closed = false;
  private errors = 0;
  /** Checkpoints that copied pages so far (tests and diagnostics). */
  checkpoints = 0;

  constructor(file: string, logger: Logger, onFailure: (err: Error) => void, options: { minDelayMs?: number; maxDelayMs?: number } = {}) {
    const config: CheckpointerConfig = { file, minDelayMs: options.minDelayMs ?? 100, maxDelayMs: options.maxDelayMs ?? 1000 };
    // A small heap: it only runs a pragma (a default isolate's heap would cost the mount's RSS more).
    this.worker = startWorker(import.meta.url, 'wal-checkpoint-worker', { workerData: config, resourceLimits: { maxYoungGenerationSizeMb: 1, maxOldGenerationSizeMb: 16 } });
    this.worker.unref(); // never keeps a process alive
    this.worker.on('message', (m: CheckpointerMessage) => {
      if (m.kind === 'checkpointed') {
        this.checkpoints++;
      } else if (this.errors++ === 0) {
        logger.warn({ err: m.message }, 'background checkpoint of the local store failed; retrying');
      }
    });
    const fail = (thrown: unknown): void => {
      if (this.closed) return;
      // A worker's error may arrive as a plain object (a SqliteError is cloned as its code alone).
      const { message, code } = (thrown ?? {}) as { message?: unknown; code?: unknown };
      const err = thrown instanceof Error ? thrown : new Error(typeof message === 'string' ? message : typeof code === 'string' ? code : String(thrown));
      this.closed = true;
      logger.warn({ err: err.message }, 'background checkpoints of the local store stopped; checkpointing inline');
      onFailure(err);
    };
    this.worker.on('error', fail);
    this.worker.on('exit', (code) => fail(new Error(`checkpoint worker exited (${code})`)));
  }

  /** Stops the worker; it closes its connection (checkpointing what is left when it is the last one). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.worker.postMessage('close');
  }
}
