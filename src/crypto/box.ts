/**
 * X25519 sealed boxes (libsodium crypto_box_seal): anonymous encryption to a user's public key,
 * used to share workspace keys. Inputs are small (keys, key bundles); a size cap keeps bulk data
 * out of libsodium's never-shrinking wasm heap. Call sodiumReady() once first.
 */
import { randomBytes } from 'node:crypto';
import { BadInputError, IntegrityError } from '../errors.js';
import { getSodium } from './sodium.js';

export interface BoxKeyPair {
  publicKey: Buffer; // 32 bytes
  secretKey: Buffer; // 32 bytes
}

const KEY_BYTES = 32;
const SEAL_OVERHEAD = 48; // ephemeral public key 32 + Poly1305 tag 16
export const SEALED_BOX_OVERHEAD = SEAL_OVERHEAD;
export const SEALED_BOX_MAX_MESSAGE = 1024 * 1024;

function toBuffer(u8: Uint8Array): Buffer {
  return Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength); // libsodium returns copies, not heap views
}

function checkKey(key: Uint8Array, what: string): void {
  if (key.byteLength !== KEY_BYTES) throw new BadInputError(`${what} must be ${KEY_BYTES} bytes`);
}

/** X25519 public key of a secret key (crypto_scalarmult_base; clamping happens inside). */
export function boxPublicKey(secretKey: Uint8Array): Buffer {
  checkKey(secretKey, 'X25519 secret key');
  return toBuffer(getSodium().crypto_scalarmult_base(secretKey));
}

export function generateBoxKeyPair(): BoxKeyPair {
  const secretKey = randomBytes(KEY_BYTES); // node:crypto: libsodium's randombytes is slow here
  return { publicKey: boxPublicKey(secretKey), secretKey };
}

export function sealToPublicKey(message: Uint8Array, recipientPublicKey: Uint8Array): Buffer {
  checkKey(recipientPublicKey, 'recipient public key');
  if (message.byteLength > SEALED_BOX_MAX_MESSAGE) {
    throw new BadInputError(`sealed-box message too large (${message.byteLength} > ${SEALED_BOX_MAX_MESSAGE} bytes)`);
  }
  return toBuffer(getSodium().crypto_box_seal(message, recipientPublicKey));
}

/** Wrong key pair or tampered box -> IntegrityError. */
export function openSealed(sealed: Uint8Array, publicKey: Uint8Array, secretKey: Uint8Array): Buffer {
  checkKey(publicKey, 'public key');
  checkKey(secretKey, 'secret key');
  if (sealed.byteLength < SEAL_OVERHEAD) throw new IntegrityError('sealed box is too short');
  if (sealed.byteLength > SEALED_BOX_MAX_MESSAGE + SEAL_OVERHEAD) throw new IntegrityError('sealed box is too large');
  let opened: Uint8Array;
  try {
    opened = getSodium().crypto_box_seal_open(sealed, publicKey, secretKey);
  } catch {
    throw new IntegrityError('sealed box could not be opened (wrong key or tampered data)');
  }
  return toBuffer(opened);
}

/**
 * X25519 Diffie-Hellman (crypto_scalarmult), hashed with both public keys so the result is a
 * uniformly random key bound to this exchange. An all-zero product (a low-order peer key) is refused.
 */
export function x25519SharedKey(secretKey: Uint8Array, ownPublicKey: Uint8Array, peerPublicKey: Uint8Array, initiatorIsSelf: boolean): Buffer {
  checkKey(secretKey, 'X25519 secret key');
  checkKey(peerPublicKey, 'peer public key');
  const product = getSodium().crypto_scalarmult(secretKey, peerPublicKey);
  if (product.every((b) => b === 0)) throw new IntegrityError('peer public key is of low order');
  const [a, b] = initiatorIsSelf ? [ownPublicKey, peerPublicKey] : [peerPublicKey, ownPublicKey];
  return Buffer.from(getSodium().crypto_generichash(32, Buffer.concat([product, a, b]), null));
}
