/**
 * Password KDF: Argon2id v1.3 (libsodium crypto_pwhash, ALG_ARGON2ID13). Parameters come from
 * device files on disk, so they are bounded: a hostile file must not make us allocate 100 GiB or
 * spin for minutes. Call sodiumReady() once first.
 */
import { randomBytes } from 'node:crypto';
import { BadInputError, CofferError } from '../errors.js';
import { startWorker } from '../worker-thread.js';
import { getSodium } from './sodium.js';
import { deserializeError, type SerializedError } from './worker-protocol.js';

export interface KdfParams {
  opsLimit: number;
  memLimit: number; // bytes
  salt: Uint8Array; // 16 bytes
}

/** libsodium crypto_pwhash_*_INTERACTIVE for Argon2id: ~0.15 s here. */
export const KDF_INTERACTIVE: Omit<KdfParams, 'salt'> = Object.freeze({ opsLimit: 2, memLimit: 64 * 1024 * 1024 });
/** libsodium crypto_pwhash_*_MODERATE for Argon2id: ~0.8 s here. */
export const KDF_MODERATE: Omit<KdfParams, 'salt'> = Object.freeze({ opsLimit: 3, memLimit: 256 * 1024 * 1024 });

export const KDF_SALT_BYTES = 16;
export const KDF_KEY_BYTES = 32;
export const KDF_OPS_MIN = 1; // crypto_pwhash_argon2id_OPSLIMIT_MIN
export const KDF_OPS_MAX = 20;
export const KDF_MEM_MIN = 8 * 1024; // crypto_pwhash_argon2id_MEMLIMIT_MIN
export const KDF_MEM_MAX = 1024 * 1024 * 1024;

export function newKdfSalt(): Buffer {
  return randomBytes(KDF_SALT_BYTES);
}

/** Throws BadInputError unless the parameters are within the sane bounds above. */
export function checkKdfParams(params: KdfParams): void {
  const { opsLimit, memLimit, salt } = params;
  if (!Number.isInteger(opsLimit) || opsLimit < KDF_OPS_MIN || opsLimit > KDF_OPS_MAX) {
    throw new BadInputError(`kdf opsLimit must be an integer in [${KDF_OPS_MIN}, ${KDF_OPS_MAX}]`, { opsLimit });
  }
  if (!Number.isInteger(memLimit) || memLimit < KDF_MEM_MIN || memLimit > KDF_MEM_MAX) {
    throw new BadInputError(`kdf memLimit must be an integer in [${KDF_MEM_MIN}, ${KDF_MEM_MAX}] bytes`, { memLimit });
  }
  if (!(salt instanceof Uint8Array) || salt.byteLength !== KDF_SALT_BYTES) {
    throw new BadInputError(`kdf salt must be ${KDF_SALT_BYTES} bytes`);
  }
}

/**
 * 32-byte key from a password. Note: libsodium's wasm heap keeps memLimit bytes resident after
 * the call (it never shrinks); loadDeviceFile/saveDeviceFile run this in a short-lived worker.
 */
export function deriveKeyFromPassword(password: string, params: KdfParams): Buffer {
  checkKdfParams(params);
  const sodium = getSodium();
  // NFC: the same password typed on different systems must give the same key.
  const pw = Buffer.from(password.normalize('NFC'), 'utf8');
  const key = sodium.crypto_pwhash(
    KDF_KEY_BYTES,
    pw,
    params.salt,
    params.opsLimit,
    params.memLimit,
    sodium.crypto_pwhash_ALG_ARGON2ID13,
  );
  pw.fill(0);
  return Buffer.from(key.buffer, key.byteOffset, key.byteLength);
}

/**
 * Same as deriveKeyFromPassword, in a short-lived worker thread: the caller's process does not keep
 * memLimit bytes of wasm heap for the rest of its life (a mount daemon runs for days), and the
 * event loop stays responsive. Costs ~50 ms of worker start-up.
 */
export async function deriveKeyFromPasswordIsolated(password: string, params: KdfParams): Promise<Buffer> {
  checkKdfParams(params); // fail before spawning anything
  const salt = new Uint8Array(params.salt); // plain copy for structured clone
  const worker = startWorker(import.meta.url, 'kdf-worker', {
    workerData: { password, params: { opsLimit: params.opsLimit, memLimit: params.memLimit, salt } },
  });
  return new Promise<Buffer>((resolve, reject) => {
    let answered = false;
    worker.once('message', (msg: { ok: true; key: Uint8Array } | { ok: false; error: SerializedError }) => {
      answered = true;
      if (msg.ok) resolve(Buffer.from(msg.key.buffer, msg.key.byteOffset, msg.key.byteLength));
      else reject(deserializeError(msg.error));
      void worker.terminate();
    });
    worker.once('error', (err) => {
      if (!answered) reject(new CofferError('internal', `password KDF worker failed: ${err.message}`));
    });
    worker.once('exit', (code) => {
      if (!answered) reject(new CofferError('internal', `password KDF worker exited with code ${code}`));
    });
  });
}
