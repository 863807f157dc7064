/**
 * Random bytes for the per-file hot path (ids, block keys, nonces): node:crypto's CSPRNG, drawn
 * 4 KiB at a time. Each randomBytes()/randomFillSync() call costs ≈4–6 µs of fixed overhead on
 * this machine, and closing one small file draws six or more values (entry id, block id, block
 * key, nonces of the block and of two manifests); a copy from the pool costs ≈1 µs. Bytes handed
 * out are wiped from the pool so no key material lingers there. Long-lived secrets (device and
 * workspace keys) keep calling node:crypto directly.
 */
import { randomFillSync } from 'node:crypto';

const POOL_BYTES = 4096;
const pool = Buffer.alloc(POOL_BYTES);
let offset = POOL_BYTES;

/** Fills `target[start, start + length)` with random bytes. */
export function fillRandom(target: Uint8Array, start = 0, length = target.byteLength - start): void {
  if (length > POOL_BYTES / 4) {
    randomFillSync(target, start, length);
    return;
  }
  if (offset + length > POOL_BYTES) {
    randomFillSync(pool);
    offset = 0;
  }
  target.set(pool.subarray(offset, offset + length), start);
  pool.fill(0, offset, offset + length);
  offset += length;
}

/** `length` fresh random bytes in a buffer of their own. */
export function randomBuffer(length: number): Buffer {
  const out = Buffer.allocUnsafeSlow(length);
  fillRandom(out);
  return out;
}
