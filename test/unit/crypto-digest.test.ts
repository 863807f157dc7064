import t from 'tap';
import sodium from 'libsodium-wrappers-sumo';
import { randomBytes } from 'node:crypto';
import { blake2b256, sha256, timingSafeEqualBytes } from '../../src/crypto/index.js';

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

t.test('SHA-256 known answers (FIPS 180-2)', async (t) => {
  t.equal(hex(sha256(Buffer.from('abc'))), 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
  t.equal(hex(sha256(new Uint8Array(0))), 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  t.equal(
    hex(sha256(Buffer.from('abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq'))),
    '248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1',
  );
  t.ok(Buffer.isBuffer(sha256(Buffer.from('x'))));
});

t.test('BLAKE2b-256 known answer and libsodium cross-check', async (t) => {
  t.equal(hex(blake2b256(Buffer.from('abc'))), 'bddd813c634239723171ef3fee98579b94964e3bb1cb3e427262c8c068d52319');
  await sodium.ready;
  for (const n of [0, 1, 127, 128, 129, 4096]) {
    const data = randomBytes(n);
    t.equal(hex(blake2b256(data)), hex(sodium.crypto_generichash(32, data, null)), `length ${n}`);
  }
});

t.test('timingSafeEqualBytes', async (t) => {
  const a = randomBytes(32);
  t.equal(timingSafeEqualBytes(a, Buffer.from(a)), true);
  t.equal(timingSafeEqualBytes(a, new Uint8Array(a)), true, 'Buffer vs Uint8Array');
  const b = Buffer.from(a);
  b[31] = (b[31] ?? 0) ^ 1;
  t.equal(timingSafeEqualBytes(a, b), false);
  t.equal(timingSafeEqualBytes(a, a.subarray(0, 31)), false, 'length mismatch is false, not a throw');
  t.equal(timingSafeEqualBytes(new Uint8Array(0), new Uint8Array(0)), true);
});
