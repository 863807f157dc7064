/**
 * Bulk block AEAD: AES-256-GCM (AES-NI, the fastest AEAD on this machine), from the native addon
 * when it is built (native-block.ts: straight into the caller's memory), else from node:crypto.
 * Every block gets a fresh random 256-bit key, so a random 96-bit nonce can never repeat under
 * one key; the nonce is random anyway so a key reused by mistake is still very unlikely to collide.
 */
import { createCipheriv, createDecipheriv } from 'node:crypto';
import { BadInputError, IntegrityError } from '../errors.js';
import { sha256, timingSafeEqualBytes } from './digest.js';
import { DIGEST_MISMATCH, OPENED, nativeBlockCrypto } from './native-block.js';
import { fillRandom, randomBuffer } from './random.js';

export const BLOCK_KEY_BYTES = 32;
const NONCE_BYTES = 12;
const TAG_BYTES = 16;
export const BLOCK_OVERHEAD = NONCE_BYTES + TAG_BYTES; // sealed layout = nonce | ciphertext | tag
const DIGEST_BYTES = 32;

export interface EncryptedBlock {
  key: Buffer;
  ciphertext: Buffer;
  digest: Buffer; // sha256(ciphertext)
}

export function newBlockKey(): Buffer {
  return randomBuffer(BLOCK_KEY_BYTES);
}

/**
 * Seals `plaintext` under `key` into `out` (its size + BLOCK_OVERHEAD bytes, not overlapping it),
 * with `nonce` or a random one; writes SHA-256(out) into `digest` when given (the native seal always
 * computes it).
 */
function sealInto(key: Uint8Array, plaintext: Uint8Array, out: Uint8Array, nonce: Uint8Array | undefined, digest: Uint8Array | undefined): void {
  if (key.byteLength !== BLOCK_KEY_BYTES) throw new BadInputError(`block key must be ${BLOCK_KEY_BYTES} bytes`);
  if (out.byteLength !== plaintext.byteLength + BLOCK_OVERHEAD) throw new BadInputError('sealed block buffer has the wrong size');
  if (nonce === undefined) fillRandom(out, 0, NONCE_BYTES);
  else if (nonce.byteLength === NONCE_BYTES) out.set(nonce, 0);
  else throw new BadInputError(`block nonce must be ${NONCE_BYTES} bytes`);
  const native = nativeBlockCrypto();
  if (native) {
    native.seal(key, plaintext, out, digest ?? Buffer.allocUnsafe(DIGEST_BYTES));
    return;
  }
  const cipher = createCipheriv('aes-256-gcm', key, out.subarray(0, NONCE_BYTES), { authTagLength: TAG_BYTES });
  // node:crypto cannot write into a caller buffer: one copy into the sealed layout.
  const body = cipher.update(plaintext);
  out.set(body, NONCE_BYTES);
  const tail = cipher.final(); // always empty for GCM; kept so a change of mode cannot drop bytes
  out.set(tail, NONCE_BYTES + body.byteLength);
  out.set(cipher.getAuthTag(), NONCE_BYTES + plaintext.byteLength);
  if (digest) digest.set(sha256(out));
}

/** @internal Fixed-nonce variant, exported only for known-answer tests. Never reuse a nonce. */
export function encryptBlockWithNonce(key: Uint8Array, nonce: Uint8Array, plaintext: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(plaintext.byteLength + BLOCK_OVERHEAD);
  sealInto(key, plaintext, out, nonce, undefined);
  return out;
}

export function encryptBlock(key: Uint8Array, plaintext: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(plaintext.byteLength + BLOCK_OVERHEAD);
  sealInto(key, plaintext, out, undefined, undefined);
  return out;
}

/** Any failure (short input, wrong key, tampering) is an IntegrityError: never return unchecked bytes. */
export function decryptBlock(key: Uint8Array, sealed: Uint8Array): Buffer {
  if (key.byteLength !== BLOCK_KEY_BYTES) throw new IntegrityError('block key has the wrong length');
  if (sealed.byteLength < BLOCK_OVERHEAD) throw new IntegrityError('sealed block is too short');
  const end = sealed.byteLength - TAG_BYTES;
  try {
    const decipher = createDecipheriv('aes-256-gcm', key, sealed.subarray(0, NONCE_BYTES), {
      authTagLength: TAG_BYTES,
    });
    decipher.setAuthTag(sealed.subarray(end));
    const body = decipher.update(sealed.subarray(NONCE_BYTES, end));
    const tail = decipher.final(); // throws on a bad tag
    return tail.byteLength === 0 ? body : Buffer.concat([body, tail]);
  } catch {
    throw new IntegrityError('block decryption failed (wrong key or tampered data)');
  }
}

/** New random key + encrypt + digest: everything a file manifest records about a block. */
export function sealBlock(plaintext: Uint8Array): EncryptedBlock {
  const ciphertext = Buffer.allocUnsafe(plaintext.byteLength + BLOCK_OVERHEAD);
  return { ...sealBlockInto(plaintext, ciphertext), ciphertext };
}

/**
 * sealBlock into the caller's `out` (plaintext size + BLOCK_OVERHEAD bytes, not overlapping it): the
 * crypto pool's shared memory, written once, nothing allocated on the way (with the native addon).
 */
export function sealBlockInto(plaintext: Uint8Array, out: Uint8Array): { key: Buffer; digest: Buffer } {
  const key = newBlockKey();
  // Its own memory, not a slice of Node's 8 KiB pool: a worker posts it back, and cloning a view
  // clones its whole ArrayBuffer.
  const digest = Buffer.allocUnsafeSlow(DIGEST_BYTES);
  sealInto(key, plaintext, out, undefined, digest);
  return { key, digest };
}

/** Digest first (cheap, catches a swapped/corrupted block from the server), then AEAD. */
export function openBlock(key: Uint8Array, ciphertext: Uint8Array, digest: Uint8Array): Buffer {
  if (ciphertext.byteLength < BLOCK_OVERHEAD) throw new IntegrityError('sealed block is too short');
  const out = Buffer.allocUnsafe(ciphertext.byteLength - BLOCK_OVERHEAD);
  openBlockInto(key, ciphertext, digest, out);
  return out;
}

/**
 * openBlock into the caller's `out` (ciphertext size - BLOCK_OVERHEAD bytes, not overlapping it).
 * On an IntegrityError `out` holds nothing of the bad block: untouched after a digest mismatch (and
 * always with node:crypto, which decrypts into memory of its own), zeroed by the addon after an AEAD
 * failure.
 */
export function openBlockInto(key: Uint8Array, ciphertext: Uint8Array, digest: Uint8Array, out: Uint8Array): void {
  if (digest.byteLength !== DIGEST_BYTES) throw new IntegrityError('block digest has the wrong length');
  if (key.byteLength !== BLOCK_KEY_BYTES) throw new IntegrityError('block key has the wrong length');
  if (ciphertext.byteLength < BLOCK_OVERHEAD) throw new IntegrityError('sealed block is too short');
  if (out.byteLength !== ciphertext.byteLength - BLOCK_OVERHEAD) throw new BadInputError('plaintext buffer has the wrong size');
  const native = nativeBlockCrypto();
  if (native) {
    const r = native.open(key, ciphertext, digest, out);
    if (r === DIGEST_MISMATCH) throw new IntegrityError('block digest mismatch');
    if (r !== OPENED) throw new IntegrityError('block decryption failed (wrong key or tampered data)');
    return;
  }
  if (!timingSafeEqualBytes(sha256(ciphertext), digest)) throw new IntegrityError('block digest mismatch');
  out.set(decryptBlock(key, ciphertext));
}
