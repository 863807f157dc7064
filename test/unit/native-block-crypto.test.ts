import t from 'tap';
import { execFileSync } from 'node:child_process';
import { createCipheriv, createHash, randomBytes } from 'node:crypto';
import { IntegrityError } from '../../src/errors.js';
import { encryptBlockWithNonce, openBlockInto, sealBlockInto } from '../../src/crypto/block.js';
import { AUTH_FAILED, DIGEST_MISMATCH, OPENED, nativeBlockCrypto } from '../../src/crypto/native-block.js';

// `make build` (which `make test` runs first) builds the addon: a test run without it would only be
// testing the node:crypto fallback.
const loaded = nativeBlockCrypto();
if (loaded === null) throw new Error('native/build/Release/coffer_crypto.node is not built or does not load: run make build');
const native = loaded;

/** The reference: node:crypto's AES-256-GCM in the sealed layout, and its SHA-256. */
function reference(key: Buffer, nonce: Buffer, pt: Buffer): { sealed: Buffer; digest: Buffer } {
  const c = createCipheriv('aes-256-gcm', key, nonce, { authTagLength: 16 });
  const sealed = Buffer.concat([nonce, c.update(pt), c.final(), c.getAuthTag()]);
  return { sealed, digest: createHash('sha256').update(sealed).digest() };
}

function nativeSeal(key: Buffer, nonce: Buffer, pt: Uint8Array): { sealed: Buffer; digest: Buffer } {
  const sealed = Buffer.alloc(pt.byteLength + 28);
  nonce.copy(sealed);
  const digest = Buffer.alloc(32);
  native.seal(key, pt, sealed, digest);
  return { sealed, digest };
}

t.test('seal writes the same bytes and digest as node:crypto, at block-size edges', async (t) => {
  for (const n of [0, 1, 15, 16, 17, 4095, 65536, 512 * 1024 + 3]) {
    const key = randomBytes(32);
    const nonce = randomBytes(12);
    const pt = randomBytes(n);
    const want = reference(key, nonce, pt);
    const got = nativeSeal(key, nonce, pt);
    t.ok(got.sealed.equals(want.sealed), `${n} bytes: sealed layout`);
    t.ok(got.digest.equals(want.digest), `${n} bytes: digest`);
  }
});

t.test('seal into shared memory at an offset, from a view at an offset', async (t) => {
  const key = randomBytes(32);
  const nonce = randomBytes(12);
  const backing = new Uint8Array(new SharedArrayBuffer(3000));
  const pt = backing.subarray(10, 1010);
  pt.set(randomBytes(1000));
  const out = backing.subarray(1500, 1500 + 1028);
  out.set(nonce);
  const digest = new Uint8Array(32);
  native.seal(key, pt, out, digest);
  const want = reference(key, nonce, Buffer.from(pt));
  t.ok(Buffer.from(out).equals(want.sealed));
  t.ok(Buffer.from(digest).equals(want.digest));
});

t.test('open: plaintext on success; on a bad digest or tag, a code and an out of zeros', async (t) => {
  const key = randomBytes(32);
  const pt = randomBytes(70_000);
  const { sealed, digest } = reference(key, randomBytes(12), pt);
  const out = Buffer.alloc(pt.length, 0xaa);
  t.equal(native.open(key, sealed, digest, out), OPENED);
  t.ok(out.equals(pt), 'plaintext');

  const flipped = Buffer.from(sealed);
  flipped[100] = (flipped[100] ?? 0) ^ 1;
  out.fill(0xaa);
  t.equal(native.open(key, flipped, digest, out), DIGEST_MISMATCH, 'the old digest does not match');
  const rehashed = createHash('sha256').update(flipped).digest();
  t.equal(native.open(key, flipped, rehashed, out), AUTH_FAILED, 'a rewritten digest: AEAD catches it');
  t.ok(out.every((b) => b === 0), 'nothing unauthenticated left in out');

  const tagFlipped = Buffer.from(sealed);
  tagFlipped[tagFlipped.length - 1] = (tagFlipped[tagFlipped.length - 1] ?? 0) ^ 0x80;
  t.equal(native.open(key, tagFlipped, createHash('sha256').update(tagFlipped).digest(), out), AUTH_FAILED, 'tag flipped');
  t.equal(native.open(randomBytes(32), sealed, digest, out), AUTH_FAILED, 'wrong key');
  t.ok(out.every((b) => b === 0));
});

t.test('bad arguments throw instead of reading or writing out of bounds', async (t) => {
  const key = randomBytes(32);
  const pt = randomBytes(100);
  const digest = Buffer.alloc(32);
  t.throws(() => native.seal(key.subarray(0, 16), pt, Buffer.alloc(128), digest), RangeError, 'AES-128 key');
  t.throws(() => native.seal(key, pt, Buffer.alloc(127), digest), RangeError, 'out one byte short');
  t.throws(() => native.seal(key, pt, Buffer.alloc(129), digest), RangeError, 'out one byte long');
  t.throws(() => native.seal(key, pt, Buffer.alloc(128), Buffer.alloc(31)), RangeError, 'short digest');
  t.throws(() => native.seal(key, 'text' as unknown as Uint8Array, Buffer.alloc(32), digest), TypeError, 'a string');
  t.throws(() => native.seal(key, new Uint16Array(50) as unknown as Uint8Array, Buffer.alloc(128), digest), TypeError, 'not bytes');
  const shared = Buffer.alloc(300);
  t.throws(() => native.seal(key, shared.subarray(0, 100), shared.subarray(50, 178), digest), RangeError, 'overlapping');
  const { sealed, digest: d } = nativeSeal(key, randomBytes(12), pt);
  t.throws(() => native.open(key, sealed, d, Buffer.alloc(99)), RangeError, 'out short');
  t.throws(() => native.open(key, sealed.subarray(0, 27), d, Buffer.alloc(0)), RangeError, 'shorter than the overhead');
  t.throws(() => native.open(key, sealed, d.subarray(0, 16), Buffer.alloc(100)), RangeError, 'short digest');
  t.throws(() => native.open(key, sealed, d, sealed.subarray(10, 110)), RangeError, 'out overlapping the input');
});

t.test('block.ts: sealBlockInto and openBlockInto through the addon', async (t) => {
  const pt = randomBytes(200_000);
  const out = Buffer.alloc(pt.length + 28);
  const { key, digest } = sealBlockInto(pt, out);
  t.ok(createHash('sha256').update(out).digest().equals(digest), 'digest of what was written');
  const back = Buffer.alloc(pt.length);
  openBlockInto(key, out, digest, back);
  t.ok(back.equals(pt));
  out[5] = (out[5] ?? 0) ^ 1;
  back.fill(0xaa);
  t.throws(() => openBlockInto(key, out, digest, back), IntegrityError, 'digest mismatch');
  t.ok(back.every((b) => b === 0xaa), 'out untouched');
  t.throws(() => openBlockInto(key, out, createHash('sha256').update(out).digest(), back), IntegrityError, 'AEAD failure');
  t.ok(back.every((b) => b === 0), 'out zeroed');
});

t.test('the node:crypto fallback (COFFER_NATIVE_CRYPTO=0) writes the same bytes and opens what the addon sealed', async (t) => {
  const key = randomBytes(32);
  const nonce = randomBytes(12);
  const pt = randomBytes(100_000);
  const viaNative = encryptBlockWithNonce(key, nonce, pt);
  const { sealed, digest } = nativeSeal(key, nonce, pt);
  t.ok(viaNative.equals(sealed), 'block.ts (through the addon in this process) writes what the addon does');
  const script = `
    import { encryptBlockWithNonce, openBlock } from './src/crypto/block.ts';
    import { nativeBlockCrypto } from './src/crypto/native-block.ts';
    import { readFileSync } from 'node:fs';
    const [key, nonce, pt, sealed, digest] = JSON.parse(readFileSync(0, 'utf8')).map((s) => Buffer.from(s, 'base64'));
    const opened = openBlock(key, sealed, digest);
    process.stdout.write(JSON.stringify({ native: nativeBlockCrypto() !== null, sealed: encryptBlockWithNonce(key, nonce, pt).toString('base64'), opened: opened.equals(pt) }));
  `;
  const args = [key, nonce, pt, sealed, digest].map((b) => b.toString('base64'));
  const res = JSON.parse(
    execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      input: JSON.stringify(args),
      cwd: new URL('../..', import.meta.url).pathname,
      env: { ...process.env, COFFER_NATIVE_CRYPTO: '0' },
      encoding: 'utf8',
    }),
  ) as { native: boolean; sealed: string; opened: boolean };
  t.equal(res.native, false, 'the child runs without the addon');
  t.equal(res.sealed, sealed.toString('base64'), 'same sealed bytes');
  t.equal(res.opened, true, 'opens the addon-sealed block');
});
