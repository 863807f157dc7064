/**
 * The one libsodium of the project (the sumo build: it is the only one with Argon2id). Used only
 * for small inputs (sealed boxes, password KDF, XChaCha20-Poly1305 messages up to 2 KiB): its
 * wasm heap grows to fit the largest input and never shrinks, so bulk data must never go through
 * it. Random bytes come from node:crypto.
 */
import sodium from 'libsodium-wrappers-sumo';
import { CofferError } from '../errors.js';

export type Sodium = typeof sodium;

let ready: Promise<void> | undefined;
let isReady = false;

/** Idempotent; await once before using box or password functions. */
export async function sodiumReady(): Promise<void> {
  ready ??= sodium.ready.then(() => {
    isReady = true;
  });
  return ready;
}

/** libsodium once it is initialised (the first call starts that), else undefined: for code with a native fallback. */
export function sodiumIfReady(): Sodium | undefined {
  if (!isReady) void sodiumReady();
  return isReady ? sodium : undefined;
}

/** @internal Synchronous access for box/password; fails loudly if sodiumReady() was never awaited. */
export function getSodium(): Sodium {
  if (!isReady) throw new CofferError('internal', 'libsodium is not initialised: await sodiumReady() first');
  return sodium;
}
