import { LRUCache } from 'lru-cache';
import type { Logger } from 'pino';
import { CofferError } from '../errors.js';
import type { BlockRef } from '../model/manifests.js';
import type { LocalStore } from './local-store.js';
import type { RemoteWorkspace } from './remote.js';

/**
 * Clean block plaintext, from the fastest place that has it: memory LRU -> local block cache -> server.
 * Every ciphertext is checked (digest + AEAD) in the worker pool before its bytes are used.
 */
export class BlockReader {
  private readonly memory: LRUCache<string, Buffer>;
  private readonly inflight = new Map<string, Promise<Buffer>>();

  constructor(
    private readonly store: LocalStore,
    private readonly remote: RemoteWorkspace | null,
    private readonly decrypt: (ref: BlockRef, ciphertext: Buffer) => Promise<Buffer>,
    private readonly logger: Logger,
    // Enough for read-ahead (8 blocks) and re-reads of hot blocks; the kernel page cache holds the rest.
    memoryBytes = 24 * 1024 * 1024,
  ) {
    this.memory = new LRUCache<string, Buffer>({ maxSize: memoryBytes, sizeCalculation: (b) => Math.max(1, b.length) });
  }

  async read(ref: BlockRef): Promise<Buffer> {
    const hit = this.memory.get(ref.id);
    if (hit) return hit;
    let p = this.inflight.get(ref.id);
    if (!p) {
      p = this.load(ref).finally(() => this.inflight.delete(ref.id));
      this.inflight.set(ref.id, p);
    }
    return p;
  }

  /** Starts loading blocks a sequential reader will want next; errors surface on the real read. */
  prefetch(refs: readonly BlockRef[]): void {
    for (const ref of refs) {
      if (this.memory.has(ref.id) || this.inflight.has(ref.id)) continue;
      this.read(ref).catch(() => {});
    }
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
