/** Crypto core: the only place where primitives are chosen. See docs/crypto.md. */
export { BLOCK_KEY_BYTES, BLOCK_OVERHEAD, newBlockKey, encryptBlock, decryptBlock, sealBlock, openBlock, type EncryptedBlock } from './block.js';
export { XCHACHA_KEY_BYTES, XCHACHA_OVERHEAD, xchachaEncrypt, xchachaDecrypt } from './xchacha.js';
export { sha256, blake2b256, timingSafeEqualBytes, deriveSubkey, workspaceKeyDigest } from './digest.js';
export {
  SIGNATURE_LENGTH,
  generateSigningKeyPair,
  signingPublicKey,
  signMessage,
  verifySignature,
  type SigningKeyPair,
} from './signing.js';
export { sodiumReady } from './sodium.js';
export { SEALED_BOX_OVERHEAD, boxPublicKey, generateBoxKeyPair, sealToPublicKey, openSealed, x25519SharedKey, type BoxKeyPair } from './box.js';
export {
  KDF_INTERACTIVE,
  KDF_MODERATE,
  newKdfSalt,
  checkKdfParams,
  deriveKeyFromPassword,
  deriveKeyFromPasswordIsolated,
  type KdfParams,
} from './password.js';
export { BlockCryptoPool, copyBytes } from './pool.js';
export {
  DEVICE_FILE_FORMAT,
  saveDeviceFile,
  loadDeviceFile,
  readDeviceFileHeader,
  type DeviceKeys,
  type DeviceFileHeader,
} from './device-file.js';
