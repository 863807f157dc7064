import t from 'tap';
import { randomBytes } from 'node:crypto';
import { BadInputError, IntegrityError } from '../../src/errors.js';
import {
  BLOCK_KEY_BYTES,
  BLOCK_OVERHEAD,
  decryptBlock,
  encryptBlock,
  newBlockKey,
  openBlock,
  sealBlock,
  sha256,
} from '../../src/crypto/index.js';
import { encryptBlockWithNonce } from '../../src/crypto/block.js';

const h = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

function flipBit(buf: Uint8Array, bit: number): Buffer {
  const out = Buffer.from(buf);
  out[bit >> 3] = (out[bit >> 3] ?? 0) ^ (1 << (bit & 7));
  return out;
}

// McGrew & Viega, "The Galois/Counter Mode of Operation", test cases 13-15 (the NIST GCM
// validation vectors for AES-256 with a 96-bit IV).
const VECTORS = [
  {
    name: 'test case 14 (zero key, one zero block)',
    key: h('00'.repeat(32)),
    iv: h('00'.repeat(12)),
    pt: h('00'.repeat(16)),
    ct: h('cea7403d4d606b6e074ec5d3baf39d18'),
    tag: h('d0d1c8a799996bf0265b98b5d48ab919'),
  },
  {
    name: 'test case 13 (empty plaintext)',
    key: h('00'.repeat(32)),
    iv: h('00'.repeat(12)),
    pt: Buffer.alloc(0),
    ct: Buffer.alloc(0),
    tag: h('530f8afbc74536b9a963b4f1c4cb738b'),
  },
  {
    name: 'test case 15 (64-byte plaintext)',
    key: h('feffe9928665731c6d6a8f9467308308 feffe9928665731c6d6a8f9467308308'),
    iv: h('cafebabefacedbaddecaf888'),
    pt: h(`d9313225f88406e5a55909c5aff5269a 86a7a9531534f7da2e4c303d8a318a72
           1c3c0c95956809532fcf0e2449a6b525 b16aedf5aa0de657ba637b391aafd255`),
    ct: h(`522dc1f099567d07f47f37a32a84427d 643a8cdcbfe5c0c97598a2bd2555d1aa
           8cb08e48590dbb3da7b08b1056828838 c5f61e6393ba7a0abcc9f662898015ad`),
    tag: h('b094dac5d93471bdec1a502270e3cc6c'),
  },
];

t.test('AES-256-GCM known answers', async (t) => {
  for (const v of VECTORS) {
    const sealed = encryptBlockWithNonce(v.key, v.iv, v.pt);
    t.equal(sealed.toString('hex'), Buffer.concat([v.iv, v.ct, v.tag]).toString('hex'), `${v.name}: encrypt, layout nonce|ct|tag`);
    t.equal(decryptBlock(v.key, Buffer.concat([v.iv, v.ct, v.tag])).toString('hex'), v.pt.toString('hex'), `${v.name}: decrypt`);
  }
});

t.test('constants and key generation', async (t) => {
  t.equal(BLOCK_KEY_BYTES, 32);
  t.equal(BLOCK_OVERHEAD, 28);
  const a = newBlockKey();
  const b = newBlockKey();
  t.equal(a.length, 32);
  t.not(a.toString('hex'), b.toString('hex'), 'fresh random keys');
});

t.test('round trip at several sizes', async (t) => {
  for (const n of [0, 1, 15, 16, 17, 4096, 512 * 1024, 512 * 1024 + 3]) {
    const key = newBlockKey();
    const pt = randomBytes(n);
    const sealed = encryptBlock(key, pt);
    t.equal(sealed.length, n + BLOCK_OVERHEAD, `size ${n}: overhead`);
    t.ok(decryptBlock(key, sealed).equals(pt), `size ${n}: round trip`);
  }
});

t.test('random nonces: same key and plaintext give different ciphertexts', async (t) => {
  const key = newBlockKey();
  const pt = Buffer.from('same plaintext');
  const a = encryptBlock(key, pt);
  const b = encryptBlock(key, pt);
  t.not(a.subarray(0, 12).toString('hex'), b.subarray(0, 12).toString('hex'));
  t.not(a.toString('hex'), b.toString('hex'));
});

t.test('sealBlock / openBlock', async (t) => {
  const pt = randomBytes(100_000);
  const b = sealBlock(pt);
  t.equal(b.key.length, 32);
  t.equal(b.ciphertext.length, pt.length + BLOCK_OVERHEAD);
  t.ok(b.digest.equals(sha256(b.ciphertext)), 'digest = sha256(ciphertext)');
  t.ok(openBlock(b.key, b.ciphertext, b.digest).equals(pt));
  const b2 = sealBlock(pt);
  t.not(b2.key.toString('hex'), b.key.toString('hex'), 'a fresh key per block');
  t.ok(decryptBlock(b.key, b.ciphertext).equals(pt), 'ciphertext is the plain sealed layout');
});

t.test('every single-bit flip of a sealed block is rejected', async (t) => {
  const key = newBlockKey();
  const pt = Buffer.from('sixteen byte msg');
  const sealed = encryptBlock(key, pt);
  const bits = sealed.length * 8; // 12 nonce + 16 ciphertext + 16 tag = 352 bits
  let rejected = 0;
  for (let i = 0; i < bits; i++) {
    try {
      decryptBlock(key, flipBit(sealed, i));
    } catch (err) {
      if (err instanceof IntegrityError) rejected++;
    }
  }
  t.equal(rejected, bits, `all ${bits} flipped bits rejected with IntegrityError`);
  t.ok(decryptBlock(key, sealed).equals(pt), 'the original still opens');
});

t.test('bit flips through openBlock: digest catches them, AEAD catches them with a matching digest', async (t) => {
  const b = sealBlock(Buffer.from('a small block of content'));
  const bits = b.ciphertext.length * 8;
  let digestRejects = 0;
  let aeadRejects = 0;
  for (let i = 0; i < bits; i++) {
    const bad = flipBit(b.ciphertext, i);
    try {
      openBlock(b.key, bad, b.digest);
    } catch (err) {
      if (err instanceof IntegrityError && /digest/.test(err.message)) digestRejects++;
    }
    try {
      openBlock(b.key, bad, sha256(bad)); // attacker also rewrote the digest
    } catch (err) {
      if (err instanceof IntegrityError && !/digest/.test(err.message)) aeadRejects++;
    }
  }
  t.equal(digestRejects, bits, 'digest mismatch for every flipped bit');
  t.equal(aeadRejects, bits, 'AEAD rejects every flipped bit even with a recomputed digest');
  let digestBitRejects = 0;
  for (let i = 0; i < 256; i++) {
    try {
      openBlock(b.key, b.ciphertext, flipBit(b.digest, i));
    } catch (err) {
      if (err instanceof IntegrityError) digestBitRejects++;
    }
  }
  t.equal(digestBitRejects, 256, 'every flipped bit of the expected digest rejected');
});

t.test('wrong key, truncation and bad sizes', async (t) => {
  const b = sealBlock(randomBytes(1000));
  t.throws(() => decryptBlock(newBlockKey(), b.ciphertext), IntegrityError, 'wrong key');
  t.throws(() => openBlock(newBlockKey(), b.ciphertext, b.digest), IntegrityError, 'wrong key via openBlock');
  t.throws(() => decryptBlock(b.key, b.ciphertext.subarray(0, b.ciphertext.length - 1)), IntegrityError, 'truncated');
  t.throws(() => decryptBlock(b.key, b.ciphertext.subarray(0, 27)), IntegrityError, 'shorter than the overhead');
  t.throws(() => decryptBlock(b.key, Buffer.concat([b.ciphertext, Buffer.from([0])])), IntegrityError, 'extended');
  t.throws(() => decryptBlock(b.key.subarray(0, 16), b.ciphertext), IntegrityError, 'short key on decrypt');
  t.throws(() => openBlock(b.key, b.ciphertext, b.digest.subarray(0, 16)), IntegrityError, 'short digest');
  t.throws(() => encryptBlock(Buffer.alloc(16), Buffer.from('x')), BadInputError, 'AES-128 key refused on encrypt');
  t.throws(() => encryptBlockWithNonce(newBlockKey(), Buffer.alloc(16), Buffer.from('x')), BadInputError, 'bad nonce size');
  t.ok(openBlock(b.key, b.ciphertext, b.digest).length === 1000, 'original still fine');
});

t.test('Uint8Array views at an offset work as inputs', async (t) => {
  const backing = new Uint8Array(4096);
  const pt = backing.subarray(100, 1100);
  pt.fill(42);
  const key = newBlockKey();
  const sealed = encryptBlock(new Uint8Array(key), pt);
  const wrapped = new Uint8Array(sealed.length + 7);
  wrapped.set(sealed, 7);
  t.ok(decryptBlock(key, wrapped.subarray(7)).equals(Buffer.from(pt)));
});
