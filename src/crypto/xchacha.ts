/**
 * XChaCha20-Poly1305 (IETF variant, as libsodium's crypto_aead_xchacha20poly1305_ietf_*), for
 * manifests and the local store where one key seals many messages: 192-bit random nonces never
 * realistically collide. Built as HChaCha20 (@noble/ciphers) to derive a subkey + node:crypto's
 * native chacha20-poly1305 with nonce 0x00000000 || nonce[16..24]: ~6x faster than libsodium's
 * wasm and keeps bulk data out of the wasm heap. Messages up to 2 KiB (most manifests) go through
 * libsodium instead: node:crypto's fixed cost per cipher (≈20 µs) dominates there, libsodium
 * takes 5–11 µs. Both compute the same function, so either output opens with either path.
 */
import { createCipheriv, createDecipheriv } from 'node:crypto';
import { hchacha } from '@noble/ciphers/chacha.js';
import { BadInputError, IntegrityError } from '../errors.js';
import { fillRandom } from './random.js';
import { sodiumIfReady } from './sodium.js';

const KEY_BYTES = 32;
const NONCE_BYTES = 24;
const TAG_BYTES = 16;
/** Up to this many plaintext bytes, libsodium is faster (measured crossover ≈3 KiB). */
const SODIUM_MAX_BYTES = 2048;
export const XCHACHA_KEY_BYTES = KEY_BYTES;
export const XCHACHA_OVERHEAD = NONCE_BYTES + TAG_BYTES; // nonce(24) | ciphertext | tag(16)

// "expand 32-byte k" as native-order words over its bytes (noble's hchacha normalizes endianness).
const SIGMA = new Uint32Array(new Uint8Array(Buffer.from('expand 32-byte k', 'latin1')).buffer);

/** HChaCha20(key, nonce[0..16]) -> 32-byte subkey. Inputs are copied into aligned word arrays. */
function subkey(key: Uint8Array, nonce: Uint8Array): Buffer {
  const k = new Uint32Array(8);
  new Uint8Array(k.buffer).set(key);
  const n = new Uint32Array(4);
  new Uint8Array(n.buffer).set(nonce.subarray(0, 16));
  const out = new Uint32Array(8);
  hchacha(SIGMA, k, n, out);
  k.fill(0);
  return Buffer.from(out.buffer);
}

function ietfNonce(nonce: Uint8Array): Buffer {
  const n = Buffer.alloc(12);
  n.set(nonce.subarray(16, 24), 4);
  return n;
}

function seal(key: Uint8Array, plaintext: Uint8Array, aad: Uint8Array | undefined, nonce: Uint8Array | undefined): Buffer {
  if (key.byteLength !== KEY_BYTES) throw new BadInputError(`xchacha key must be ${KEY_BYTES} bytes`);
  const out = Buffer.allocUnsafe(NONCE_BYTES + plaintext.byteLength + TAG_BYTES);
  if (nonce === undefined) fillRandom(out, 0, NONCE_BYTES);
  else if (nonce.byteLength === NONCE_BYTES) out.set(nonce, 0);
  else throw new BadInputError(`xchacha nonce must be ${NONCE_BYTES} bytes`);
  const n = out.subarray(0, NONCE_BYTES);
  const sodium = plaintext.byteLength <= SODIUM_MAX_BYTES ? sodiumIfReady() : undefined;
  if (sodium) {
    out.set(sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, aad ?? null, null, n, key), NONCE_BYTES);
    return out;
  }
  const sub = subkey(key, n);
  try {
    const cipher = createCipheriv('chacha20-poly1305', sub, ietfNonce(n), { authTagLength: TAG_BYTES });
    if (aad !== undefined) cipher.setAAD(aad, { plaintextLength: plaintext.byteLength });
    const body = cipher.update(plaintext);
    out.set(body, NONCE_BYTES);
    out.set(cipher.final(), NONCE_BYTES + body.byteLength);
    cipher.getAuthTag().copy(out, NONCE_BYTES + plaintext.byteLength);
    return out;
  } finally {
    sub.fill(0);
  }
}

/** @internal Fixed-nonce variant, exported only for known-answer tests. Never reuse a nonce. */
export function xchachaEncryptWithNonce(key: Uint8Array, nonce: Uint8Array, plaintext: Uint8Array, aad?: Uint8Array): Buffer {
  return seal(key, plaintext, aad, nonce);
}

/** Random nonce; output = nonce(24) | ciphertext | tag(16). */
export function xchachaEncrypt(key: Uint8Array, plaintext: Uint8Array, aad?: Uint8Array): Buffer {
  return seal(key, plaintext, aad, undefined);
}

/** Any failure is an IntegrityError. An absent AAD and an empty AAD are the same (as in libsodium). */
export function xchachaDecrypt(key: Uint8Array, sealed: Uint8Array, aad?: Uint8Array): Buffer {
  if (key.byteLength !== KEY_BYTES) throw new IntegrityError('xchacha key has the wrong length');
  if (sealed.byteLength < XCHACHA_OVERHEAD) throw new IntegrityError('sealed message is too short');
  const n = sealed.subarray(0, NONCE_BYTES);
  const end = sealed.byteLength - TAG_BYTES;
  const sodium = end - NONCE_BYTES <= SODIUM_MAX_BYTES ? sodiumIfReady() : undefined;
  if (sodium) {
    try {
      const plain = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(null, sealed.subarray(NONCE_BYTES), aad ?? null, n, key);
      return Buffer.from(plain.buffer, plain.byteOffset, plain.byteLength);
    } catch {
      throw new IntegrityError('decryption failed (wrong key or tampered data)');
    }
  }
  const sub = subkey(key, n);
  try {
    const decipher = createDecipheriv('chacha20-poly1305', sub, ietfNonce(n), { authTagLength: TAG_BYTES });
    if (aad !== undefined) decipher.setAAD(aad, { plaintextLength: end - NONCE_BYTES });
    decipher.setAuthTag(sealed.subarray(end));
    const body = decipher.update(sealed.subarray(NONCE_BYTES, end));
    const tail = decipher.final(); // throws on a bad tag
    return tail.byteLength === 0 ? body : Buffer.concat([body, tail]);
  } catch {
    throw new IntegrityError('decryption failed (wrong key or tampered data)');
  } finally {
    sub.fill(0);
  }
}
