/**
 * The native block AEAD (native/block_crypto.cc, built by `make build`): AES-256-GCM and SHA-256 from
 * the OpenSSL node itself links, writing straight into the caller's memory. node:crypto cannot do
 * that: through it, sealing a 512 KiB block allocated and copied two more 512 KiB buffers, which cost
 * the crypto workers about as much as AES-GCM. Optional: without the addon (not built, or
 * COFFER_NATIVE_CRYPTO=0) block.ts falls back to node:crypto, same bytes either way.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** What open() answers: the block opened, or why not (out then holds nothing of the bad block: untouched, or zeroed after an AEAD failure). */
export const OPENED = 0;
export const DIGEST_MISMATCH = 1;
export const AUTH_FAILED = 2;

export interface NativeBlockCrypto {
  /** out = nonce (already in out[0, 12)) | ciphertext | tag; digest = SHA-256(out). Throws on bad sizes. */
  seal(key: Uint8Array, plaintext: Uint8Array, out: Uint8Array, digest: Uint8Array): void;
  /** Digest check, then AEAD, into out (sealed size - 28 bytes). Throws on bad sizes. */
  open(key: Uint8Array, sealed: Uint8Array, digest: Uint8Array, out: Uint8Array): typeof OPENED | typeof DIGEST_MISMATCH | typeof AUTH_FAILED;
}

let loaded: NativeBlockCrypto | null | undefined;

/** The addon, or null when it is not built, does not load, or is turned off (COFFER_NATIVE_CRYPTO=0). */
export function nativeBlockCrypto(): NativeBlockCrypto | null {
  if (loaded !== undefined) return loaded;
  loaded = null;
  if (process.env.COFFER_NATIVE_CRYPTO === '0') return loaded;
  // src/crypto/ and dist/crypto/ are both two levels below the package root.
  const file = resolve(dirname(fileURLToPath(import.meta.url)), '../../native/build/Release/coffer_crypto.node');
  if (!existsSync(file)) return loaded;
  try {
    loaded = createRequire(import.meta.url)(file) as NativeBlockCrypto;
  } catch {
    loaded = null; // a stale or foreign build: node:crypto does the same work
  }
  return loaded;
}
