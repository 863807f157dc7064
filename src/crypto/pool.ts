/**
 * worker_threads pool for block crypto (AES-256-GCM + SHA-256), so that bulk encryption uses the
 * other cores. Byte arrays are moved (transferred), not structured-clone copied: a round trip
 * costs ~10 us at any size, while copying 512 KiB would cost 150-335 us. Dispatch is least-busy
 * with a small in-flight window per worker (>= 2 keeps each worker busy while its next job is in
 * the mail); the rest waits in a FIFO queue here, so a crash loses at most that window.
 *
 * Big blocks travel in shared memory instead: every ArrayBuffer that arrives on the main thread by
 * transfer counts there as new external memory, and one or two per 512 KiB block kept V8 starting a
 * full mark-compact every few dozen MiB (~50 per 256 MiB written and read back: ~1 s of main-thread
 * GC plus the helpers' marking). buffer() hands out SharedArrayBuffers (not counted), lent to the
 * worker together with a shared `out` for the result. Uncounted memory is not left to the GC in
 * steady state: it comes back through giveBack() and is handed out again for another block.
 *
 * Ownership rules for pooled buffers (buffer() memory, and encrypt/decrypt results of >= 64 KiB).
 * Reuse is immediate, so a reference used after its buffer was given back reads or writes another
 * block's bytes: these rules are what keeps that from happening.
 * 1. One owner at a time. The owner gives a buffer back at most once, and only when no reference to
 *    it will be used again (not by itself, not by anything it lent it to).
 * 2. encrypt() borrows its plaintext until it settles: nobody writes it meanwhile. decrypt() takes
 *    its ciphertext: the caller never uses it again (the pool takes it back once the worker answered).
 *    A job whose worker crashed keeps its buffers out of the pool: the dying thread may still use them.
 * 3. Owners in the client:
 *    - engine: a block buffer in OpenFile.buffers owns its memory; startSeal takes it out of the map
 *      for the seal, which gives the memory back and marks the BlockBuffer dead (any later access
 *      throws). A write re-checks after every await that its buffer is still the map's.
 *    - BlockReader: cached plaintexts never leave it (copy() copies them synchronously, in the turn
 *      they were looked up in); one dropped from the cache is given back from the next turn on.
 *    - a sealed block's ciphertext: stored (awaited), then kept by the BlockUploader or given back;
 *      the uploader gives it back once sent (not after a failed send: the HTTP stack may hold it).
 *      A block read from the store belongs to its reader (decrypt takes it, or the uploader).
 * 4. Checks. A buffer given back twice is refused (never listed twice, so never handed to two
 *    owners) and reported. With `checks` (COFFER_POOL_CHECKS=1, on in tests) given-back memory is
 *    poisoned and must still be poisoned when handed out again (a late write), a late read sees the
 *    poison, and a lent plaintext must be unchanged when encrypt() answers; violations throw.
 */
import { availableParallelism } from 'node:os';
import type { Worker } from 'node:worker_threads';
import { BadInputError, CofferError } from '../errors.js';
import { startWorker } from '../worker-thread.js';
import { BLOCK_OVERHEAD, type EncryptedBlock } from './block.js';
import { sha256 } from './digest.js';
import {
  deserializeError,
  takeOwnership,
  transferListFor,
  type BlockRequest,
  type BlockResponse,
} from './worker-protocol.js';

const MAX_IN_FLIGHT_PER_WORKER = 4;
/** Spare buffers kept per size for reuse (bounds what the recycler holds: 16 x 512 KiB = 8 MiB). */
const MAX_SPARES_PER_SIZE = 16;
const MAX_POOL_SIZE = 256;
/** Results at least this big come back in shared memory (see the header). */
const SHARED_MIN_BYTES = 64 * 1024;
/** fill(0) on shared memory goes element by element in V8 (~15x slower than memset); fill(ZEROS) is a C++ copy. */
const ZEROS = Buffer.alloc(64 * 1024);
/** What given-back memory holds under `checks` (see the header, rule 4). */
const POISON = Buffer.alloc(64 * 1024, 0xdb);

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

/**
 * `src[srcStart, srcEnd)` into `dst` at `dstStart`, as Buffer#copy does, but as one memcpy even when
 * either side is shared memory (the pool's blocks): Buffer#copy and fill(0) take V8's element-wise
 * path for SharedArrayBuffers (3-15x slower), Buffer#fill with a Buffer value copies in C++.
 * Returns the bytes copied.
 */
export function copyBytes(src: Uint8Array, dst: Buffer, dstStart: number, srcStart: number, srcEnd: number): number {
  const n = Math.min(Math.min(srcEnd, src.length) - srcStart, dst.length - dstStart);
  if (n > 0) dst.fill(src.subarray(srcStart, srcStart + n), dstStart, dstStart + n);
  return Math.max(0, n);
}

/** Whether every byte of `b` is `pattern`'s (a 64 KiB run), compared in C++. */
function filledWith(b: Buffer, pattern: Buffer): boolean {
  for (let off = 0; off < b.length; off += pattern.length) {
    const end = Math.min(b.length, off + pattern.length);
    if (pattern.compare(b, off, end, 0, end - off) !== 0) return false;
  }
  return true;
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

  /** Poisoning and lending checks (the header's rule 4); violations throw instead of being only reported. */
  readonly checks: boolean;
  /** Ownership violations seen (rule 4): a buffer given back twice, written after it was given back, ... */
  violations = 0;

  constructor(options?: { size?: number; checks?: boolean }) {
    this.checks = options?.checks ?? process.env.COFFER_POOL_CHECKS === '1';
    const size = options?.size ?? availableParallelism();
    if (!Number.isInteger(size) || size < 1 || size > MAX_POOL_SIZE) {
      throw new BadInputError(`pool size must be an integer in [1, ${MAX_POOL_SIZE}]`, { size });
    }
    this.size = size;
    for (let i = 0; i < size; i++) this.slots.push(this.spawn());
  }

  /**
   * The plaintext's memory may be moved to a worker (detached), or lent (buffer() memory): callers must
   * not change or reuse it until this settles. A big ciphertext comes back in buffer() memory: give it
   * back (giveBack) once nothing uses it any more, or leave it to the GC.
   */
  async encrypt(plaintext: Uint8Array): Promise<EncryptedBlock> {
    const out = this.shared(plaintext, 0) ? this.buffer(plaintext.byteLength + BLOCK_OVERHEAD, false) : undefined;
    // Rule 2: a lent plaintext must not change while the worker reads it (the block would hold bytes
    // nobody wrote at that moment). Checked by digest before and after.
    const lentDigest = this.checks && plaintext.buffer instanceof SharedArrayBuffer ? sha256(plaintext) : undefined;
    const res = await this.run({ op: 'encrypt', plaintext: takeOwnership(plaintext), ...(out && { out }) }, out);
    if (lentDigest && !lentDigest.equals(sha256(plaintext))) this.violation('a plaintext lent to encrypt() changed before it answered');
    if (res.op !== 'encrypt') throw new CofferError('internal', 'block worker answered the wrong operation');
    if (out && !res.inOut) this.giveBack(out);
    return { key: toBuffer(res.key), ciphertext: out && res.inOut ? out : toBuffer(res.ciphertext), digest: toBuffer(res.digest) };
  }

  /** Lent shared memory whose result (input size - `less`) is big enough to come back the same way. */
  private shared(input: Uint8Array, less: number): boolean {
    return input.buffer instanceof SharedArrayBuffer && input.byteLength - less >= SHARED_MIN_BYTES;
  }

  /**
   * Submits a job whose `out` (if any) is free again once the worker has answered, success or error.
   * After a crash it is not reused (the dying thread may still write it): the GC takes it.
   */
  private async run(request: Request, out: Buffer | undefined): Promise<BlockResponse & { ok: true }> {
    try {
      return await this.submit(request);
    } catch (err) {
      if (out && !this.crashed.has(err as Error)) this.giveBack(out);
      throw err;
    }
  }

  private readonly crashed = new WeakSet<Error>();

  /**
   * A buffer of exactly `size` bytes, its holder's own (rule 1), reusing memory given back when some of
   * that size is free (steady streams then allocate nothing, and leave no garbage for the GC);
   * zero-filled when `zero`. Below 64 KiB: ordinary memory, never pooled.
   */
  buffer(size: number, zero: boolean): Buffer {
    // Small blocks stay ordinary memory (cheap for the GC, and never recycled: see giveBack).
    if (size < SHARED_MIN_BYTES) return zero ? Buffer.alloc(size) : Buffer.allocUnsafeSlow(size);
    const sab = this.spares.get(size)?.pop() ?? new SharedArrayBuffer(size); // a new one is zero-filled
    const b = Buffer.from(sab, 0, size);
    const reused = this.owner.get(sab) === null;
    this.owner.set(sab, b);
    if (reused) {
      if (this.checks && !filledWith(b, POISON)) this.violation(`a ${size}-byte buffer was written after it was given back`);
      if (zero) b.fill(ZEROS);
    }
    return b;
  }

  private readonly spares = new Map<number, SharedArrayBuffer[]>();
  /**
   * Every buffer this pool made, and the view it was last handed out as (a new object each time:
   * the owner's handle), or null once given back. A view that is not its buffer's current one is an
   * owner's that gave it back: the memory may be another block's by now.
   */
  private readonly owner = new WeakMap<SharedArrayBuffer, Uint8Array | null>();

  /**
   * Whether the holder of `view` may still use it: true for memory that is not the pool's, and for the
   * very view a pool buffer was handed out as, until it is given back. A WeakMap lookup: owners of
   * pooled memory check it before they use it (rule 4), so a use after give-back throws instead.
   */
  owns(view: Uint8Array): boolean {
    const ab = view.buffer;
    if (!(ab instanceof SharedArrayBuffer)) return true;
    const o = this.owner.get(ab);
    return o === undefined || o === view;
  }

  /**
   * Gives a caller's buffer back for reuse by buffer(): the caller, and anything it lent the buffer
   * to, must never use it again (the header's rules). Anything but a whole buffer() is left to the GC.
   */
  giveBack(view: Uint8Array): void {
    const ab = view.buffer;
    if (!(ab instanceof SharedArrayBuffer) || view.byteOffset !== 0 || view.byteLength !== ab.byteLength) return;
    const o = this.owner.get(ab);
    if (o === undefined) return; // not this pool's
    if (o !== view) {
      // Refused either way: listed once only, so never handed to two owners.
      this.violation(o === null ? `a ${ab.byteLength}-byte buffer was given back twice` : `a ${ab.byteLength}-byte buffer was given back by a former owner (it belongs to another block now)`);
      return;
    }
    this.owner.set(ab, null);
    let list = this.spares.get(ab.byteLength);
    if (!list) {
      if (this.spares.size >= 8) return; // a handful of sizes (block, block + overhead) is all that recurs
      list = [];
      this.spares.set(ab.byteLength, list);
    }
    if (list.length >= MAX_SPARES_PER_SIZE) return;
    if (this.checks) Buffer.from(ab).fill(POISON);
    list.push(ab);
  }

  /**
   * A broken ownership rule. Without checks (production) the pool has already kept it harmless where
   * it can (a double give-back is refused) and warns; with checks it throws, so tests fail loudly.
   */
  private violation(message: string): void {
    this.violations++;
    if (this.checks) throw new CofferError('internal', `block buffer pool: ${message}`);
    process.emitWarning(`block buffer pool: ${message}`, 'CofferPoolWarning');
  }

  /**
   * Same checks as openBlock (digest, then AEAD). The ciphertext's memory may be moved (detached), or,
   * when it is buffer() memory, taken back for reuse once the worker has answered: callers must not
   * use it afterwards either way. A big plaintext comes back in buffer() memory (see encrypt).
   */
  async decrypt(key: Uint8Array, ciphertext: Uint8Array, digest: Uint8Array): Promise<Buffer> {
    const lent = ciphertext.buffer instanceof SharedArrayBuffer ? ciphertext : undefined;
    const out = this.shared(ciphertext, BLOCK_OVERHEAD) ? this.buffer(ciphertext.byteLength - BLOCK_OVERHEAD, false) : undefined;
    let res: BlockResponse & { ok: true };
    try {
      res = await this.run(
        {
          op: 'decrypt',
          // Small: exact private copies (Buffer#slice would be a view, and cloning a view of Node's
          // 8 KiB pool slab would copy the whole slab into the message).
          key: new Uint8Array(key),
          digest: new Uint8Array(digest),
          ciphertext: takeOwnership(ciphertext),
          ...(out && { out }),
        },
        out,
      );
    } catch (err) {
      if (lent && !this.crashed.has(err as Error)) this.giveBack(lent);
      throw err;
    }
    if (lent) this.giveBack(lent);
    if (res.op !== 'decrypt') throw new CofferError('internal', 'block worker answered the wrong operation');
    if (out && !res.inOut) this.giveBack(out);
    return out && res.inOut ? out : toBuffer(res.plaintext);
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
    const worker = startWorker(import.meta.url, 'block-worker');
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
    this.crashed.add(failure);
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
