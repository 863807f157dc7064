import { LRUCache } from 'lru-cache';
import type { Logger } from 'pino';
import { copyBytes } from '../crypto/index.js';
import { CofferError } from '../errors.js';
import type { BlockRef } from '../model/manifests.js';
import type { LocalStore } from './local-store.js';
import type { RemoteWorkspace } from './remote.js';

/** How a reader hands plaintext memory back to the crypto pool (see pool.ts, the ownership rules). */
export interface PlaintextRecycler {
  owns(view: Uint8Array): boolean;
  giveBack(view: Uint8Array): void;
}

/** Memory left to the GC (no pool): always usable, never recycled. */
const NO_POOL: PlaintextRecycler = { owns: () => true, giveBack: () => {} };

/**
 * Clean block plaintext, from the fastest place that has it: memory LRU -> local block cache -> server.
 * Every ciphertext is checked (digest + AEAD) in the worker pool before its bytes are used.
 *
 * Plaintexts may be the crypto pool's memory, reused for another block as soon as it is given back:
 * they never leave this class. copy() copies one into the caller's buffer in the same turn of the
 * event loop as it was looked up, and one dropped from the cache is given back only from the next
 * turn on (retire), so no copy can see it reused; each copy also checks the pool still lets it use it.
 */
export class BlockReader {
  private readonly memory: LRUCache<string, Buffer>;
  private readonly inflight = new Map<string, Promise<Buffer>>();
  private retired: Buffer[] = [];

  constructor(
    private readonly store: LocalStore,
    private readonly remote: RemoteWorkspace | null,
    private readonly decrypt: (ref: BlockRef, ciphertext: Buffer) => Promise<Buffer>,
    private readonly logger: Logger,
    private readonly pool: PlaintextRecycler = NO_POOL,
    // Enough for read-ahead (8 blocks) and re-reads of hot blocks; the kernel page cache holds the rest.
    memoryBytes = 24 * 1024 * 1024,
  ) {
    this.memory = new LRUCache<string, Buffer>({ maxSize: memoryBytes, sizeCalculation: (b) => Math.max(1, b.length), dispose: (b) => this.retire(b) });
  }

  /**
   * Copies the block's plaintext [srcStart, srcEnd) into `dst` at `dstStart`; resolves the bytes
   * copied (fewer when the plaintext is shorter).
   */
  async copy(ref: BlockRef, dst: Buffer, dstStart: number, srcStart: number, srcEnd: number): Promise<number> {
    const plain = await this.plaintext(ref);
    // No await between the lookup and the copy (see the class comment).
    if (!this.pool.owns(plain)) throw new CofferError('internal', `block ${ref.id}: its plaintext memory was given back while still cached`);
    return copyBytes(plain, dst, dstStart, srcStart, srcEnd);
  }

  /**
   * Makes sure the local store holds the block (downloaded and checked), for pinning. A plaintext in
   * memory does not count: the store may have evicted the block since (pinning then never got it
   * back while the plaintext stayed cached, found by test/e2e/pinning.test.ts).
   */
  async warm(ref: BlockRef): Promise<void> {
    if (this.store.hasBlock(ref.id)) return;
    this.memory.delete(ref.id); // retired, not reused, until this turn is over
    await this.plaintext(ref);
  }

  private async plaintext(ref: BlockRef): Promise<Buffer> {
    const hit = this.memory.get(ref.id);
    if (hit) return hit;
    let p = this.inflight.get(ref.id);
    if (!p) {
      p = this.load(ref).finally(() => this.inflight.delete(ref.id));
      this.inflight.set(ref.id, p);
    }
    return p;
  }

  /**
   * Starts loading blocks a sequential reader will want next (`refs`, nearest first); errors surface on
   * the real read. Blocks the server must send are fetched together (one batched request per turn),
   * and a window sliding one block per block read would ask for them one at a time: they are asked
   * for once half the window is missing, or the very next block is.
   */
  prefetch(refs: readonly BlockRef[]): void {
    const wanted = refs.filter((ref) => !this.memory.has(ref.id) && !this.inflight.has(ref.id));
    const remote = wanted.filter((ref) => !this.store.hasBlock(ref.id));
    const fetchNow = remote.length * 2 >= refs.length || remote[0] === refs[0];
    for (const ref of wanted) if (fetchNow || !remote.includes(ref)) this.plaintext(ref).catch(() => {});
  }

  /**
   * A plaintext dropped from the cache goes back to the pool once the current turn is over: a
   * copy() that looked it up in this turn (or awaits the load that produced it) has copied it by then.
   */
  private retire(plain: Buffer): void {
    this.retired.push(plain);
    if (this.retired.length > 1) return;
    setImmediate(() => {
      for (const b of this.retired.splice(0)) this.pool.giveBack(b);
    });
  }

  private async load(ref: BlockRef): Promise<Buffer> {
    let ciphertext = await this.store.getBlock(ref.id);
    let fromServer = false;
    if (!ciphertext) {
      if (!this.remote) throw new CofferError('offline', 'block not cached locally and no server connection');
      try {
        ciphertext = await this.remote.fetchBlockCiphertext(ref);
      } catch (err) {
        if (err instanceof CofferError && err.code === 'offline') {
          this.logger.warn({ blockId: ref.id }, 'block not cached and the server is unreachable');
        }
        throw err;
      }
      fromServer = true;
    }
    // Cache before decrypting: the pool takes the ciphertext's memory (no copy). A block that then fails
    // its check is dropped from the cache again.
    if (fromServer) {
      try {
        await this.store.putCleanBlock(ref.id, ciphertext);
      } catch (err) {
        // The cache is optional: a full local disk must not fail a read the server could serve
        // (found by test/e2e/disk-full.test.ts).
        this.logger.warn({ blockId: ref.id, err: (err as Error).message }, 'could not cache a downloaded block locally');
      }
    }
    try {
      const plain = await this.decrypt(ref, ciphertext);
      this.memory.set(ref.id, plain);
      return plain;
    } catch (err) {
      if (fromServer) this.store.dropCleanBlock(ref.id);
      throw err;
    }
  }

  forget(id: string): void {
    this.memory.delete(id);
  }
}
