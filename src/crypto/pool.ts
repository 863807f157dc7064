/**
 * worker_threads pool for block crypto (AES-256-GCM + SHA-256), so that bulk encryption uses the
 * other cores. Byte arrays are moved (transferred), not structured-clone copied: a round trip
 * costs ~10 us at any size, while copying 512 KiB would cost 150-335 us. Dispatch is least-busy
 * with a small in-flight window per worker (>= 2 keeps each worker busy while its next job is in
 * the mail); the rest waits in a FIFO queue here, so a crash loses at most that window.
 */
import { availableParallelism } from 'node:os';
import type { Worker } from 'node:worker_threads';
import { BadInputError, CofferError } from '../errors.js';
import type { EncryptedBlock } from './block.js';
import {
  deserializeError,
  takeOwnership,
  transferListFor,
  startWorker,
  type BlockRequest,
  type BlockResponse,
} from './worker-protocol.js';

const MAX_IN_FLIGHT_PER_WORKER = 4;
/** Spare buffers kept per size for reuse (bounds what the recycler holds: 16 x 512 KiB = 8 MiB). */
const MAX_SPARES_PER_SIZE = 16;
const MAX_POOL_SIZE = 256;

type Request = BlockRequest extends infer R ? (R extends { id: number } ? Omit<R, 'id'> : never) : never;

interface Job {
  request: Request;
  resolve: (res: BlockResponse & { ok: true }) => void;
  reject: (err: Error) => void;
}

interface Slot {
  worker: Worker;
  inFlight: Map<number, Job>;
  dead: boolean;
}

function toBuffer(u8: Uint8Array): Buffer {
  return Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength);
}

export class BlockCryptoPool {
  readonly size: number;
  private readonly slots: Slot[] = [];
  private readonly queue: Job[] = [];
  private nextId = 1;
  private closing = false; // no new jobs; queued ones still run
  private terminating = false; // workers are being shut down: exits are not crashes
  private crashStreak = 0; // crashes since the last answer, to stop respawning a broken script
  private closed: Promise<void> | undefined;
  private drained: (() => void) | undefined;

  constructor(options?: { size?: number }) {
    const size = options?.size ?? availableParallelism();
    if (!Number.isInteger(size) || size < 1 || size > MAX_POOL_SIZE) {
      throw new BadInputError(`pool size must be an integer in [1, ${MAX_POOL_SIZE}]`, { size });
    }
    this.size = size;
    for (let i = 0; i < size; i++) this.slots.push(this.spawn());
  }

  /** The plaintext's memory may be moved to a worker (detached): callers must not reuse it. */
  async encrypt(plaintext: Uint8Array): Promise<EncryptedBlock> {
    const res = await this.submit({ op: 'encrypt', plaintext: takeOwnership(plaintext) });
    if (res.op !== 'encrypt') throw new CofferError('internal', 'block worker answered the wrong operation');
    if (res.spare) this.recycle(res.spare);
    return { key: toBuffer(res.key), ciphertext: toBuffer(res.ciphertext), digest: toBuffer(res.digest) };
  }

  /**
   * A buffer of exactly `size` bytes, reusing the memory of a block the workers handed back when one
   * of that size is free (steady streams then allocate nothing, and leave no garbage for the GC);
   * zero-filled when `zero`.
   */
  buffer(size: number, zero: boolean): Buffer {
    const ab = this.spares.get(size)?.pop();
    if (!ab) return zero ? Buffer.alloc(size) : Buffer.allocUnsafeSlow(size);
    const b = Buffer.from(ab, 0, size);
    if (zero) b.fill(0);
    return b;
  }

  private readonly spares = new Map<number, ArrayBuffer[]>();

  /** Gives a caller's buffer back for reuse by buffer(): the caller must hold no reference to it any more. */
  giveBack(view: Uint8Array): void {
    this.recycle(view);
  }

  private recycle(view: Uint8Array): void {
    const ab = view.buffer;
    if (!(ab instanceof ArrayBuffer) || view.byteOffset !== 0 || view.byteLength !== ab.byteLength || ab.byteLength < 64 * 1024) return;
    let list = this.spares.get(ab.byteLength);
    if (!list) {
      if (this.spares.size >= 8) return; // a handful of sizes (block, block + overhead) is all that recurs
      list = [];
      this.spares.set(ab.byteLength, list);
    }
    if (list.length < MAX_SPARES_PER_SIZE) list.push(ab);
  }

  /** Same checks as openBlock (digest, then AEAD). The ciphertext's memory may be moved (detached). */
  async decrypt(key: Uint8Array, ciphertext: Uint8Array, digest: Uint8Array): Promise<Buffer> {
    const res = await this.submit({
      op: 'decrypt',
      // Small: exact private copies (Buffer#slice would be a view, and cloning a view of Node's
      // 8 KiB pool slab would copy the whole slab into the message).
      key: new Uint8Array(key),
      digest: new Uint8Array(digest),
      ciphertext: takeOwnership(ciphertext),
    });
    if (res.op !== 'decrypt') throw new CofferError('internal', 'block worker answered the wrong operation');
    if (res.spare) this.recycle(res.spare);
    return toBuffer(res.plaintext);
  }

  /** Lets queued and running jobs finish, then terminates every worker. Idempotent. */
  close(): Promise<void> {
    this.closed ??= (async () => {
      this.closing = true;
      if (this.pending() > 0) await new Promise<void>((resolve) => (this.drained = resolve));
      this.terminating = true;
      await Promise.all(this.slots.map((s) => this.terminate(s)));
    })();
    return this.closed;
  }

  /** @internal Test hook: make one worker crash with an uncaught exception. */
  crashWorkerForTest(index = 0): void {
    const slot = this.slots[index];
    if (slot !== undefined) slot.worker.postMessage({ id: 0, op: 'crash' } satisfies BlockRequest);
  }

  /** @internal Test hook: thread ids of the current workers. */
  workerThreadIdsForTest(): number[] {
    return this.slots.map((s) => s.worker.threadId);
  }

  private pending(): number {
    return this.queue.length + this.slots.reduce((n, s) => n + s.inFlight.size, 0);
  }

  private submit(request: Request): Promise<BlockResponse & { ok: true }> {
    if (this.closing) return Promise.reject(new CofferError('internal', 'block crypto pool is closed'));
    return new Promise((resolve, reject) => {
      this.queue.push({ request, resolve, reject });
      this.pump();
    });
  }

  private spawn(): Slot {
    const worker = startWorker('block-worker');
    const slot: Slot = { worker, inFlight: new Map(), dead: false };
    worker.unref(); // an idle pool must not keep the process alive; ref'd while it has jobs
    worker.on('message', (res: BlockResponse) => this.onMessage(slot, res));
    worker.on('error', (err) => this.onCrash(slot, err));
    worker.on('messageerror', (err) => this.onCrash(slot, err));
    worker.on('exit', (code) => this.onCrash(slot, new Error(`worker exited with code ${code}`)));
    return slot;
  }

  private pump(): void {
    while (this.queue.length > 0) {
      let best: Slot | undefined;
      for (const s of this.slots) {
        if (!s.dead && (best === undefined || s.inFlight.size < best.inFlight.size)) best = s;
      }
      if (best === undefined) {
        // Only after repeated start-up crashes: fail fast rather than queue forever.
        const failure = new CofferError('internal', 'no block crypto worker is available');
        for (const job of this.queue.splice(0)) job.reject(failure);
        return;
      }
      if (best.inFlight.size >= MAX_IN_FLIGHT_PER_WORKER) return;
      const job = this.queue.shift() as Job;
      const id = this.nextId++;
      const req = { ...job.request, id } as BlockRequest;
      const views = req.op === 'encrypt' ? [req.plaintext] : req.op === 'decrypt' ? [req.ciphertext] : [];
      try {
        best.worker.postMessage(req, transferListFor(...views));
      } catch (err) {
        job.reject(new CofferError('internal', `cannot send job to block worker: ${String(err)}`));
        continue;
      }
      if (best.inFlight.size === 0) best.worker.ref();
      best.inFlight.set(id, job);
    }
  }

  private settled(slot: Slot): void {
    if (slot.inFlight.size === 0) slot.worker.unref();
    this.pump();
    if (this.drained !== undefined && this.pending() === 0) {
      this.drained();
      this.drained = undefined;
    }
  }

  private onMessage(slot: Slot, res: BlockResponse): void {
    const job = slot.inFlight.get(res.id);
    if (job === undefined) return;
    this.crashStreak = 0;
    slot.inFlight.delete(res.id);
    if (res.ok) job.resolve(res);
    else job.reject(deserializeError(res.error));
    this.settled(slot);
  }

  /** A dead worker fails its own jobs (they may have half-run) and is replaced; the queue goes on. */
  private onCrash(slot: Slot, err: Error): void {
    if (slot.dead || this.terminating) return;
    slot.dead = true;
    const failure = new CofferError('internal', `block crypto worker crashed: ${err.message}`);
    for (const job of slot.inFlight.values()) job.reject(failure);
    slot.inFlight.clear();
    void slot.worker.terminate(); // no-op if it already exited
    const index = this.slots.indexOf(slot);
    if (++this.crashStreak > 2 * this.size + 2) {
      // Workers die without ever answering (e.g. the script cannot load): stop the respawn loop.
      for (const job of this.queue.splice(0)) job.reject(failure);
    } else if (index >= 0) {
      this.slots[index] = this.spawn();
    }
    this.settled(slot);
  }

  private async terminate(slot: Slot): Promise<void> {
    slot.dead = true;
    await slot.worker.terminate();
  }
}
