import t from 'tap';
import sodium from 'libsodium-wrappers-sumo';
import { argon2id } from '@noble/hashes/argon2.js';
import { BadInputError } from '../../src/errors.js';
import {
  KDF_INTERACTIVE,
  KDF_MODERATE,
  deriveKeyFromPassword,
  deriveKeyFromPasswordIsolated,
  newKdfSalt,
  sodiumReady,
} from '../../src/crypto/index.js';

const TINY = { opsLimit: 1, memLimit: 8 * 1024 * 1024 };

t.before(async () => {
  await sodiumReady();
  await sodium.ready;
});

t.test('presets match libsodium Argon2id limits', async (t) => {
  t.same(KDF_INTERACTIVE, { opsLimit: sodium.crypto_pwhash_OPSLIMIT_INTERACTIVE, memLimit: sodium.crypto_pwhash_MEMLIMIT_INTERACTIVE });
  t.same(KDF_MODERATE, { opsLimit: sodium.crypto_pwhash_OPSLIMIT_MODERATE, memLimit: sodium.crypto_pwhash_MEMLIMIT_MODERATE });
  t.ok(Object.isFrozen(KDF_INTERACTIVE), 'presets cannot be changed by accident');
});

t.test('deterministic per salt, different across salts and passwords', async (t) => {
  const salt = newKdfSalt();
  t.equal(salt.length, 16);
  t.not(newKdfSalt().toString('hex'), salt.toString('hex'));
  const a = deriveKeyFromPassword('correct horse', { ...TINY, salt });
  const b = deriveKeyFromPassword('correct horse', { ...TINY, salt: Buffer.from(salt) });
  t.equal(a.length, 32);
  t.equal(a.toString('hex'), b.toString('hex'), 'same password + salt + params = same key');
  t.not(deriveKeyFromPassword('correct horse', { ...TINY, salt: newKdfSalt() }).toString('hex'), a.toString('hex'), 'other salt');
  t.not(deriveKeyFromPassword('correct horsE', { ...TINY, salt }).toString('hex'), a.toString('hex'), 'other password');
  t.not(deriveKeyFromPassword('correct horse', { opsLimit: 2, memLimit: TINY.memLimit, salt }).toString('hex'), a.toString('hex'), 'other opsLimit');
});

t.test('is really Argon2id v1.3 (cross-check with @noble/hashes) and Unicode-normalised', async (t) => {
  const salt = newKdfSalt();
  const ours = deriveKeyFromPassword('pässwörd', { ...TINY, salt });
  const ref = argon2id(Buffer.from('pässwörd'.normalize('NFC')), salt, { t: 1, m: TINY.memLimit / 1024, p: 1, dkLen: 32, version: 0x13 });
  t.equal(ours.toString('hex'), Buffer.from(ref).toString('hex'), 'same as an independent Argon2id implementation');
  const decomposed = 'pa\u0308sswo\u0308rd';
  t.equal(deriveKeyFromPassword(decomposed, { ...TINY, salt }).toString('hex'), ours.toString('hex'), 'NFD and NFC give the same key');
});

t.test('parameter bounds are enforced', async (t) => {
  const salt = newKdfSalt();
  const bad: Array<[string, { opsLimit: number; memLimit: number; salt: Uint8Array }]> = [
    ['opsLimit 0', { opsLimit: 0, memLimit: TINY.memLimit, salt }],
    ['opsLimit 21', { opsLimit: 21, memLimit: TINY.memLimit, salt }],
    ['opsLimit 1.5', { opsLimit: 1.5, memLimit: TINY.memLimit, salt }],
    ['opsLimit NaN', { opsLimit: Number.NaN, memLimit: TINY.memLimit, salt }],
    ['memLimit 1 GiB + 1', { opsLimit: 1, memLimit: 1024 ** 3 + 1, salt }],
    ['memLimit 100 GiB', { opsLimit: 1, memLimit: 100 * 1024 ** 3, salt }],
    ['memLimit below the Argon2 minimum', { opsLimit: 1, memLimit: 4096, salt }],
    ['memLimit negative', { opsLimit: 1, memLimit: -1, salt }],
    ['salt 15 bytes', { opsLimit: 1, memLimit: TINY.memLimit, salt: salt.subarray(0, 15) }],
    ['salt 17 bytes', { opsLimit: 1, memLimit: TINY.memLimit, salt: Buffer.concat([salt, Buffer.alloc(1)]) }],
  ];
  for (const [name, params] of bad) t.throws(() => deriveKeyFromPassword('pw', params), BadInputError, name);
  await t.rejects(deriveKeyFromPasswordIsolated('pw', { opsLimit: 99, memLimit: TINY.memLimit, salt }), BadInputError, 'isolated variant checks too');
  t.equal(deriveKeyFromPassword('pw', { opsLimit: 20, memLimit: 8192, salt }).length, 32, 'upper ops bound itself is accepted');
});

t.test('isolated (worker) derivation gives the same key', async (t) => {
  const params = { ...TINY, salt: newKdfSalt() };
  const inWorker = await deriveKeyFromPasswordIsolated('secret', params);
  t.equal(inWorker.toString('hex'), deriveKeyFromPassword('secret', params).toString('hex'));
});
