import t from 'tap';
import sodium from 'libsodium-wrappers-sumo';
import { randomBytes } from 'node:crypto';
import { BadInputError } from '../../src/errors.js';
import { generateSigningKeyPair, signingPublicKey, signMessage, verifySignature } from '../../src/crypto/index.js';

const h = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

function flipBit(buf: Uint8Array, bit: number): Buffer {
  const out = Buffer.from(buf);
  out[bit >> 3] = (out[bit >> 3] ?? 0) ^ (1 << (bit & 7));
  return out;
}

// RFC 8032 section 7.1, TEST 1 and TEST 2.
const RFC8032 = [
  {
    name: 'TEST 1',
    secret: h('9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60'),
    public: h('d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a'),
    message: Buffer.alloc(0),
    signature: h(`e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b`),
  },
  {
    name: 'TEST 2',
    secret: h('4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb'),
    public: h('3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c'),
    message: h('72'),
    signature: h(`92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00`),
  },
];

t.test('RFC 8032 known answers', async (t) => {
  for (const v of RFC8032) {
    t.equal(signingPublicKey(v.secret).toString('hex'), v.public.toString('hex'), `${v.name}: public key`);
    t.equal(signMessage(v.secret, v.message).toString('hex'), v.signature.toString('hex'), `${v.name}: signature`);
    t.equal(verifySignature(v.public, v.message, v.signature), true, `${v.name}: verifies`);
  }
});

t.test('key generation, round trip and libsodium cross-check', async (t) => {
  await sodium.ready;
  const kp = generateSigningKeyPair();
  t.equal(kp.publicKey.length, 32);
  t.equal(kp.secretKey.length, 32);
  t.ok(signingPublicKey(kp.secretKey).equals(kp.publicKey));
  const msg = randomBytes(300);
  const sig = signMessage(kp.secretKey, msg);
  t.equal(sig.length, 64);
  t.equal(verifySignature(kp.publicKey, msg, sig), true);
  const ls = sodium.crypto_sign_seed_keypair(kp.secretKey);
  t.ok(Buffer.from(ls.publicKey).equals(kp.publicKey), 'same public key as libsodium from the seed');
  t.ok(Buffer.from(sodium.crypto_sign_detached(msg, ls.privateKey)).equals(sig), 'same (deterministic) signature as libsodium');
  t.not(generateSigningKeyPair().secretKey.toString('hex'), kp.secretKey.toString('hex'), 'fresh keys');
});

t.test('every single-bit flip of a signature is rejected; so are message flips', async (t) => {
  const kp = generateSigningKeyPair();
  const msg = Buffer.from('vlob 42 version 7');
  const sig = signMessage(kp.secretKey, msg);
  let sigRejects = 0;
  for (let i = 0; i < 512; i++) if (!verifySignature(kp.publicKey, msg, flipBit(sig, i))) sigRejects++;
  t.equal(sigRejects, 512, 'all 512 signature bits');
  let msgRejects = 0;
  for (let i = 0; i < msg.length * 8; i++) if (!verifySignature(kp.publicKey, flipBit(msg, i), sig)) msgRejects++;
  t.equal(msgRejects, msg.length * 8, 'all message bits');
  let keyRejects = 0;
  for (let i = 0; i < 256; i++) if (!verifySignature(flipBit(kp.publicKey, i), msg, sig)) keyRejects++;
  t.equal(keyRejects, 256, 'all public-key bits');
  t.equal(verifySignature(generateSigningKeyPair().publicKey, msg, sig), false, 'another key');
  t.equal(verifySignature(kp.publicKey, msg, sig), true, 'original still verifies');
});

t.test('malformed inputs return false, never throw', async (t) => {
  const kp = generateSigningKeyPair();
  const msg = Buffer.from('m');
  const sig = signMessage(kp.secretKey, msg);
  const cases: Array<[string, Uint8Array, Uint8Array]> = [
    ['empty key', new Uint8Array(0), sig],
    ['short key', kp.publicKey.subarray(0, 31), sig],
    ['long key', Buffer.concat([kp.publicKey, Buffer.alloc(1)]), sig],
    ['empty signature', kp.publicKey, new Uint8Array(0)],
    ['short signature', kp.publicKey, sig.subarray(0, 63)],
    ['long signature', kp.publicKey, Buffer.concat([sig, Buffer.alloc(1)])],
    ['all-zero key and signature', Buffer.alloc(32), Buffer.alloc(64)],
    ['all-0xff key (not a point)', Buffer.alloc(32, 0xff), sig],
  ];
  for (const [name, key, s] of cases) {
    let result: boolean | string;
    try {
      result = verifySignature(key, msg, s);
    } catch (err) {
      result = `threw ${String(err)}`;
    }
    t.equal(result, false, name);
  }
  t.throws(() => signMessage(Buffer.alloc(31), msg), BadInputError, 'signing with a bad secret key is a BadInputError');
});

t.test('key caches do not mix up keys', async (t) => {
  const pairs = Array.from({ length: 80 }, () => generateSigningKeyPair()); // more than the private cache holds
  const msg = Buffer.from('same message');
  const sigs = pairs.map((p) => signMessage(p.secretKey, msg));
  let ok = 0;
  for (let i = 0; i < pairs.length; i++) {
    const p = pairs[i]!;
    const other = pairs[(i + 1) % pairs.length]!;
    if (verifySignature(p.publicKey, msg, sigs[i]!) && !verifySignature(other.publicKey, msg, sigs[i]!)) ok++;
    if (!signMessage(p.secretKey, msg).equals(sigs[i]!)) t.fail('signature changed after cache eviction');
  }
  t.equal(ok, pairs.length);
});
