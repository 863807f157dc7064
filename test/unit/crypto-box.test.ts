import t from 'tap';
import sodium from 'libsodium-wrappers-sumo';
import { randomBytes } from 'node:crypto';
import { BadInputError, IntegrityError } from '../../src/errors.js';
import { boxPublicKey, generateBoxKeyPair, openSealed, sealToPublicKey, sodiumReady } from '../../src/crypto/index.js';

function flipBit(buf: Uint8Array, bit: number): Buffer {
  const out = Buffer.from(buf);
  out[bit >> 3] = (out[bit >> 3] ?? 0) ^ (1 << (bit & 7));
  return out;
}

t.before(async () => {
  await sodiumReady();
  await sodiumReady(); // idempotent
  await sodium.ready;
});

t.test('key pairs', async (t) => {
  const kp = generateBoxKeyPair();
  t.equal(kp.publicKey.length, 32);
  t.equal(kp.secretKey.length, 32);
  t.ok(Buffer.from(sodium.crypto_scalarmult_base(kp.secretKey)).equals(kp.publicKey), 'public = X25519 base-point multiple');
  t.ok(boxPublicKey(kp.secretKey).equals(kp.publicKey));
  // RFC 7748 section 6.1: Alice's key pair.
  const alice = Buffer.from('77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a', 'hex');
  t.equal(boxPublicKey(alice).toString('hex'), '8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a', 'RFC 7748 vector');
  t.not(generateBoxKeyPair().secretKey.toString('hex'), kp.secretKey.toString('hex'));
});

t.test('sealed box round trip (also interoperable with libsodium directly)', async (t) => {
  const kp = generateBoxKeyPair();
  for (const n of [0, 1, 32, 1000]) {
    const msg = randomBytes(n);
    const sealed = sealToPublicKey(msg, kp.publicKey);
    t.equal(sealed.length, n + 48, `size ${n}: overhead 48`);
    t.ok(openSealed(sealed, kp.publicKey, kp.secretKey).equals(msg), `size ${n}: round trip`);
  }
  const msg = randomBytes(32);
  const fromSodium = sodium.crypto_box_seal(msg, kp.publicKey);
  t.ok(openSealed(fromSodium, kp.publicKey, kp.secretKey).equals(msg), 'opens libsodium output');
  const a = sealToPublicKey(msg, kp.publicKey);
  const b = sealToPublicKey(msg, kp.publicKey);
  t.not(a.toString('hex'), b.toString('hex'), 'fresh ephemeral key per seal');
});

t.test('every single-bit flip of a sealed box is rejected', async (t) => {
  const kp = generateBoxKeyPair();
  const sealed = sealToPublicKey(randomBytes(32), kp.publicKey); // e.g. a workspace key
  let rejected = 0;
  const bits = sealed.length * 8;
  for (let i = 0; i < bits; i++) {
    try {
      openSealed(flipBit(sealed, i), kp.publicKey, kp.secretKey);
    } catch (err) {
      if (err instanceof IntegrityError) rejected++;
    }
  }
  t.equal(rejected, bits, `all ${bits} bits`);
});

t.test('wrong keys and malformed input', async (t) => {
  const kp = generateBoxKeyPair();
  const other = generateBoxKeyPair();
  const sealed = sealToPublicKey(Buffer.from('workspace key'), kp.publicKey);
  t.throws(() => openSealed(sealed, other.publicKey, other.secretKey), IntegrityError, 'another recipient');
  t.throws(() => openSealed(sealed, kp.publicKey, other.secretKey), IntegrityError, 'wrong secret key');
  t.throws(() => openSealed(sealed, other.publicKey, kp.secretKey), IntegrityError, 'wrong public key');
  t.throws(() => openSealed(sealed.subarray(0, 47), kp.publicKey, kp.secretKey), IntegrityError, 'too short');
  t.throws(() => openSealed(sealed.subarray(0, sealed.length - 1), kp.publicKey, kp.secretKey), IntegrityError, 'truncated');
  t.throws(() => sealToPublicKey(Buffer.from('x'), Buffer.alloc(31)), BadInputError, 'short public key');
  t.throws(() => openSealed(sealed, kp.publicKey, Buffer.alloc(16)), BadInputError, 'short secret key');
  t.throws(() => sealToPublicKey(Buffer.alloc(1024 * 1024 + 1), kp.publicKey), BadInputError, 'bulk data refused');
  t.equal(openSealed(sealed, kp.publicKey, kp.secretKey).toString(), 'workspace key');
});
