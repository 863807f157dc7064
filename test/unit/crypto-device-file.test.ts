import t from 'tap';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BadInputError, CofferError, IntegrityError, WrongPasswordError } from '../../src/errors.js';
import {
  DEVICE_FILE_FORMAT,
  KDF_INTERACTIVE,
  generateBoxKeyPair,
  generateSigningKeyPair,
  loadDeviceFile,
  readDeviceFileHeader,
  saveDeviceFile,
  sodiumReady,
  type DeviceKeys,
} from '../../src/crypto/index.js';

const TINY = { opsLimit: 1, memLimit: 8 * 1024 * 1024 }; // keep tests fast
let dir = '';

t.before(async () => {
  await sodiumReady();
  dir = await mkdtemp(join(tmpdir(), 'coffer-devfile-'));
});
t.teardown(async () => {
  await rm(dir, { recursive: true, force: true });
});

function makeKeys(): DeviceKeys {
  const dev = generateSigningKeyPair();
  const user = generateBoxKeyPair();
  return {
    orgId: 'org-acme',
    deviceId: 'dev-1234',
    userId: 'usr-5678',
    userHandle: 'alice@acme.example',
    deviceLabel: 'Alice’s laptop',
    serverUrl: 'https://coffer.acme.example',
    profile: 'admin',
    signingKey: dev.secretKey,
    verifyKey: dev.publicKey,
    userSecretKey: user.secretKey,
    userPublicKey: user.publicKey,
    localKey: randomBytes(32),
    rootVerifyKey: generateSigningKeyPair().publicKey,
  };
}

let counter = 0;
async function saved(keys = makeKeys(), password = 'hunter2'): Promise<{ path: string; keys: DeviceKeys }> {
  const path = join(dir, `d${counter++}`, 'device.json');
  await saveDeviceFile(path, keys, password, TINY);
  return { path, keys };
}

async function rewrite(path: string, edit: (j: Record<string, unknown>) => void): Promise<void> {
  const j = JSON.parse(await readFile(path, 'utf8')) as Record<string, unknown>;
  edit(j);
  await writeFile(path, JSON.stringify(j));
}

t.test('round trip', async (t) => {
  const { path, keys } = await saved();
  const loaded = await loadDeviceFile(path, 'hunter2');
  t.same(loaded, keys, 'every field comes back');
  for (const k of ['signingKey', 'verifyKey', 'userSecretKey', 'userPublicKey', 'localKey', 'rootVerifyKey'] as const) {
    t.ok(Buffer.isBuffer(loaded[k]) && loaded[k].equals(keys[k]), `${k} is an equal Buffer`);
  }
  const raw = await readFile(path, 'utf8');
  t.notMatch(raw, keys.localKey.toString('base64'), 'no secret in clear');
  t.notMatch(raw, keys.signingKey.toString('base64'));
  t.notMatch(raw, keys.signingKey.toString('hex'));
});

t.test('file and directory permissions, atomic write leaves no temp files', async (t) => {
  const { path } = await saved();
  t.equal((await stat(path)).mode & 0o777, 0o600, 'file 0600');
  t.equal((await stat(join(path, '..'))).mode & 0o777, 0o700, 'created parent 0700');
  const keys2 = makeKeys();
  await saveDeviceFile(path, keys2, 'new password', TINY); // overwrite in place (password change)
  t.same(await loadDeviceFile(path, 'new password'), keys2);
  await t.rejects(loadDeviceFile(path, 'hunter2'), WrongPasswordError, 'old password no longer works');
  t.same(await readdir(join(path, '..')), ['device.json'], 'only the device file in the directory');
});

t.test('default KDF is the interactive preset', async (t) => {
  const path = join(dir, 'default-kdf', 'device.json');
  const keys = makeKeys();
  await saveDeviceFile(path, keys, 'pw');
  const j = JSON.parse(await readFile(path, 'utf8')) as { kdf: { algorithm: string; opsLimit: number; memLimit: number; salt: string } };
  t.equal(j.kdf.algorithm, 'argon2id13');
  t.equal(j.kdf.opsLimit, KDF_INTERACTIVE.opsLimit);
  t.equal(j.kdf.memLimit, KDF_INTERACTIVE.memLimit);
  t.equal(Buffer.from(j.kdf.salt, 'base64').length, 16);
  t.same(await loadDeviceFile(path, 'pw'), keys);
});

t.test('wrong password', async (t) => {
  const { path } = await saved();
  await t.rejects(loadDeviceFile(path, 'hunter3'), WrongPasswordError);
  await t.rejects(loadDeviceFile(path, ''), WrongPasswordError);
  const err = await loadDeviceFile(path, 'nope').catch((e: unknown) => e);
  t.equal((err as CofferError).code, 'wrong_password');
});

t.test('header readable without password', async (t) => {
  const { path, keys } = await saved();
  t.same(await readDeviceFileHeader(path), {
    orgId: keys.orgId,
    deviceId: keys.deviceId,
    userId: keys.userId,
    userHandle: keys.userHandle,
    deviceLabel: keys.deviceLabel,
    serverUrl: keys.serverUrl,
  });
  const j = JSON.parse(await readFile(path, 'utf8')) as Record<string, unknown>;
  t.equal(j.format, DEVICE_FILE_FORMAT);
  t.same(Object.keys(j).sort(), [
    'ciphertext', 'deviceId', 'deviceLabel', 'format', 'kdf', 'orgId', 'passwordCheck', 'serverUrl', 'userHandle', 'userId',
  ], 'exactly the documented top-level fields');
});

t.test('tampering with any header field is detected', async (t) => {
  for (const field of ['orgId', 'deviceId', 'userId', 'userHandle', 'deviceLabel', 'serverUrl'] as const) {
    const { path } = await saved();
    await rewrite(path, (j) => {
      j[field] = `${String(j[field])}x`;
    });
    await t.rejects(loadDeviceFile(path, 'hunter2'), IntegrityError, `${field} changed -> IntegrityError`);
  }
  const { path } = await saved();
  await rewrite(path, (j) => {
    const c = Buffer.from(String(j.ciphertext), 'base64');
    c[30] = (c[30] ?? 0) ^ 1;
    j.ciphertext = c.toString('base64');
  });
  await t.rejects(loadDeviceFile(path, 'hunter2'), IntegrityError, 'ciphertext bit flip -> IntegrityError');
  const other = await saved();
  await rewrite(other.path, (j) => {
    (j.kdf as { opsLimit: number }).opsLimit = 2;
  });
  // A changed KDF parameter derives another key: indistinguishable from a wrong password, still refused.
  await t.rejects(loadDeviceFile(other.path, 'hunter2'), WrongPasswordError, 'kdf change -> rejected');
});

t.test('swapping the encrypted part between two device files is detected', async (t) => {
  const a = await saved();
  const b = await saved({ ...makeKeys(), deviceId: 'dev-other' });
  const bj = JSON.parse(await readFile(b.path, 'utf8')) as Record<string, unknown>;
  await rewrite(a.path, (j) => {
    j.ciphertext = bj.ciphertext;
  });
  await t.rejects(loadDeviceFile(a.path, 'hunter2'), IntegrityError);
});

t.test('malformed files are BadInputError naming the problem', async (t) => {
  const { path } = await saved();
  const good = await readFile(path, 'utf8');
  const cases: Array<[string, (j: Record<string, unknown>) => void, RegExp]> = [
    ['missing field', (j) => delete j.userId, /"userId" is missing/],
    ['missing nested field', (j) => delete (j.kdf as Record<string, unknown>).salt, /"kdf\.salt" is missing/],
    ['extra field', (j) => (j.extra = 1), /unexpected field "extra"/],
    ['extra nested field', (j) => ((j.kdf as Record<string, unknown>).parallelism = 4), /unexpected field "kdf\.parallelism"/],
    ['wrong format', (j) => (j.format = 'coffer-device/2'), /"format"/],
    ['wrong type', (j) => (j.orgId = 42), /"orgId"/],
    ['bad base64', (j) => (j.ciphertext = '***'), /"ciphertext"/],
    ['short salt', (j) => ((j.kdf as Record<string, unknown>).salt = Buffer.alloc(8).toString('base64')), /"kdf\.salt" must decode to 16 bytes/],
    ['absurd memLimit (100 GiB)', (j) => ((j.kdf as Record<string, unknown>).memLimit = 100 * 1024 ** 3), /"kdf\.memLimit"/],
    ['absurd opsLimit', (j) => ((j.kdf as Record<string, unknown>).opsLimit = 1000), /"kdf\.opsLimit"/],
    ['other algorithm', (j) => ((j.kdf as Record<string, unknown>).algorithm = 'scrypt'), /"kdf\.algorithm"/],
  ];
  for (const [name, edit, message] of cases) {
    await writeFile(path, good);
    await rewrite(path, edit);
    const err = await loadDeviceFile(path, 'hunter2').catch((e: unknown) => e);
    t.ok(err instanceof BadInputError, `${name}: BadInputError`);
    t.match((err as Error).message, message, `${name}: message names the field`);
    await t.rejects(readDeviceFileHeader(path), BadInputError, `${name}: header read refuses too`);
  }
  await writeFile(path, good.slice(0, 40));
  await t.rejects(loadDeviceFile(path, 'hunter2'), { constructor: BadInputError, message: /not valid JSON/ }, 'truncated JSON');
  await writeFile(path, '[]');
  await t.rejects(loadDeviceFile(path, 'hunter2'), BadInputError, 'JSON array');
  await writeFile(path, 'null');
  await t.rejects(loadDeviceFile(path, 'hunter2'), BadInputError, 'JSON null');
  await writeFile(path, Buffer.alloc(2 * 1024 * 1024, 0x20));
  await t.rejects(loadDeviceFile(path, 'hunter2'), { constructor: BadInputError, message: /too large/ }, 'huge file refused before reading');
});

t.test('missing file -> not_found', async (t) => {
  const err = await loadDeviceFile(join(dir, 'nope', 'device.json'), 'pw').catch((e: unknown) => e);
  t.ok(err instanceof CofferError);
  t.equal((err as CofferError).code, 'not_found');
  const err2 = await readDeviceFileHeader(join(dir, 'nope.json')).catch((e: unknown) => e);
  t.equal((err2 as CofferError).code, 'not_found');
});

t.test('saveDeviceFile refuses inconsistent or malformed keys', async (t) => {
  const keys = makeKeys();
  await t.rejects(saveDeviceFile(join(dir, 'bad1.json'), { ...keys, verifyKey: generateSigningKeyPair().publicKey }, 'pw', TINY), BadInputError, 'verifyKey mismatch');
  await t.rejects(saveDeviceFile(join(dir, 'bad2.json'), { ...keys, userPublicKey: generateBoxKeyPair().publicKey }, 'pw', TINY), BadInputError, 'userPublicKey mismatch');
  await t.rejects(saveDeviceFile(join(dir, 'bad3.json'), { ...keys, localKey: Buffer.alloc(16) }, 'pw', TINY), { constructor: BadInputError, message: /localKey/ }, 'short localKey');
  await t.rejects(saveDeviceFile(join(dir, 'bad4.json'), { ...keys, orgId: '' }, 'pw', TINY), { constructor: BadInputError, message: /orgId/ }, 'empty orgId');
  await t.rejects(saveDeviceFile(join(dir, 'bad5.json'), { ...keys, profile: 'root' as DeviceKeys['profile'] }, 'pw', TINY), BadInputError, 'unknown profile');
  await t.rejects(saveDeviceFile(join(dir, 'bad6.json'), keys, 'pw', { opsLimit: 1, memLimit: 2 * 1024 ** 3 }), BadInputError, 'absurd KDF params');
  t.same((await readdir(dir)).filter((n) => n.startsWith('bad')), [], 'nothing written');
});
