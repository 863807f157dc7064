import t from 'tap';
import sodium from 'libsodium-wrappers-sumo';
import { randomBytes } from 'node:crypto';
import { BadInputError, IntegrityError } from '../../src/errors.js';
import { xchachaDecrypt, xchachaEncrypt } from '../../src/crypto/index.js';
import { xchachaEncryptWithNonce } from '../../src/crypto/xchacha.js';
import { sodiumReady } from '../../src/crypto/sodium.js';

const h = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

function flipBit(buf: Uint8Array, bit: number): Buffer {
  const out = Buffer.from(buf);
  out[bit >> 3] = (out[bit >> 3] ?? 0) ^ (1 << (bit & 7));
  return out;
}

// draft-irtf-cfrg-xchacha-03, appendix A.3.1 (AEAD_XChaCha20_Poly1305 test vector).
const A31 = {
  pt: Buffer.from(
    "Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.",
  ),
  aad: h('50515253c0c1c2c3c4c5c6c7'),
  key: h('808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f'),
  iv: h('404142434445464748494a4b4c4d4e4f5051525354555657'),
  ct: h(`bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb
         731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452
         2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9
         21f9664c97637da9768812f615c68b13b52e`),
  tag: h('c0875924c1c7987947deafd8780acf49'),
};

t.before(async () => {
  await sodium.ready;
});

t.test('draft-irtf-cfrg-xchacha A.3.1 known answer', async (t) => {
  const sealed = xchachaEncryptWithNonce(A31.key, A31.iv, A31.pt, A31.aad);
  t.equal(sealed.toString('hex'), Buffer.concat([A31.iv, A31.ct, A31.tag]).toString('hex'), 'nonce | ciphertext | tag');
  t.ok(xchachaDecrypt(A31.key, sealed, A31.aad).equals(A31.pt), 'decrypts');
  const ls = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(A31.pt, A31.aad, null, A31.iv, A31.key);
  t.equal(Buffer.from(ls).toString('hex'), Buffer.concat([A31.ct, A31.tag]).toString('hex'), 'libsodium agrees on the vector');
});

t.test('byte-identical to libsodium on random inputs (with/without AAD, empty message)', async (t) => {
  let same = 0;
  let cases = 0;
  for (const n of [0, 1, 15, 16, 63, 64, 65, 127, 128, 1000, 65536 + 5]) {
    for (const aad of [undefined, new Uint8Array(0), randomBytes(1), randomBytes(37)]) {
      const key = randomBytes(32);
      const nonce = randomBytes(24);
      const pt = randomBytes(n);
      const ours = xchachaEncryptWithNonce(key, nonce, pt, aad);
      const theirs = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(pt, aad ?? null, null, nonce, key);
      cases++;
      if (ours.subarray(24).equals(Buffer.from(theirs)) && ours.subarray(0, 24).equals(nonce)) same++;
      // and each side opens the other's output
      const fromSodium = Buffer.concat([nonce, theirs]);
      const a = xchachaDecrypt(key, fromSodium, aad);
      const b = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(null, ours.subarray(24), aad ?? null, nonce, key);
      if (!a.equals(pt) || !Buffer.from(b).equals(pt)) t.fail(`cross-decrypt failed at n=${n}`);
    }
  }
  t.equal(same, cases, `${cases} random cases byte-identical`);
});

t.test('round trip with random nonce', async (t) => {
  const key = randomBytes(32);
  const aad = Buffer.from('manifest v7');
  const pt = randomBytes(5000);
  const a = xchachaEncrypt(key, pt, aad);
  const b = xchachaEncrypt(key, pt, aad);
  t.equal(a.length, pt.length + 40);
  t.not(a.subarray(0, 24).toString('hex'), b.subarray(0, 24).toString('hex'), 'fresh nonce each call');
  t.ok(xchachaDecrypt(key, a, aad).equals(pt));
  t.ok(xchachaDecrypt(key, xchachaEncrypt(key, new Uint8Array(0))).length === 0, 'empty message without AAD');
  t.ok(xchachaDecrypt(key, xchachaEncrypt(key, pt), new Uint8Array(0)).equals(pt), 'absent AAD = empty AAD');
});

t.test('every single-bit flip of the sealed output and of the AAD is rejected', async (t) => {
  const key = randomBytes(32);
  const aad = Buffer.from('header!');
  const pt = Buffer.from('tiny secret');
  const sealed = xchachaEncrypt(key, pt, aad);
  let rejected = 0;
  const bits = sealed.length * 8;
  for (let i = 0; i < bits; i++) {
    try {
      xchachaDecrypt(key, flipBit(sealed, i), aad);
    } catch (err) {
      if (err instanceof IntegrityError) rejected++;
    }
  }
  t.equal(rejected, bits, `all ${bits} sealed bits`);
  let aadRejected = 0;
  for (let i = 0; i < aad.length * 8; i++) {
    try {
      xchachaDecrypt(key, sealed, flipBit(aad, i));
    } catch (err) {
      if (err instanceof IntegrityError) aadRejected++;
    }
  }
  t.equal(aadRejected, aad.length * 8, 'all AAD bits');
  t.ok(xchachaDecrypt(key, sealed, aad).equals(pt), 'the original still opens');
});

t.test('wrong key, missing/extra AAD, truncation, bad sizes', async (t) => {
  const key = randomBytes(32);
  const sealed = xchachaEncrypt(key, Buffer.from('hello'), Buffer.from('ad'));
  t.throws(() => xchachaDecrypt(randomBytes(32), sealed, Buffer.from('ad')), IntegrityError, 'wrong key');
  t.throws(() => xchachaDecrypt(key, sealed), IntegrityError, 'AAD missing');
  t.throws(() => xchachaDecrypt(key, xchachaEncrypt(key, Buffer.from('x')), Buffer.from('ad')), IntegrityError, 'AAD added');
  t.throws(() => xchachaDecrypt(key, sealed.subarray(0, 39)), IntegrityError, 'shorter than nonce + tag');
  t.throws(() => xchachaDecrypt(key, sealed.subarray(0, sealed.length - 1), Buffer.from('ad')), IntegrityError, 'truncated');
  t.throws(() => xchachaDecrypt(key.subarray(0, 31), sealed, Buffer.from('ad')), IntegrityError, 'short key on decrypt');
  t.throws(() => xchachaEncrypt(randomBytes(16), Buffer.from('x')), BadInputError, 'short key on encrypt');
  t.throws(() => xchachaEncryptWithNonce(key, randomBytes(12), Buffer.from('x')), BadInputError, '12-byte nonce refused');
  t.equal(xchachaDecrypt(key, sealed, Buffer.from('ad')).toString(), 'hello');
});

t.test('both implementations (libsodium up to 2 KiB, node:crypto above) give the standard output', async (t) => {
  await sodiumReady(); // so the small sizes take libsodium's path
  const key = randomBytes(32);
  for (const size of [0, 1, 100, 2047, 2048, 2049, 3000, 70_000]) {
    const pt = randomBytes(size);
    const nonce = randomBytes(24);
    const aad = size % 2 === 0 ? randomBytes(12) : undefined;
    const sealed = xchachaEncryptWithNonce(key, nonce, pt, aad);
    const reference = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(pt, aad ?? null, null, nonce, key);
    t.equal(sealed.subarray(24).toString('hex'), Buffer.from(reference).toString('hex'), `${size} bytes: same as libsodium`);
    t.ok(xchachaDecrypt(key, sealed, aad).equals(pt), `${size} bytes: opens`);
    t.throws(() => xchachaDecrypt(key, flipBit(sealed, 8 * 24 + 3), aad), IntegrityError, `${size} bytes: a flipped bit is an IntegrityError`);
    t.throws(() => xchachaDecrypt(randomBytes(32), sealed, aad), IntegrityError, `${size} bytes: another key is an IntegrityError`);
  }
});
