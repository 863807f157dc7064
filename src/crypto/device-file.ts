/**
 * Device file: one device's keys at rest, encrypted with a key derived from the user's password.
 *
 * On disk (JSON, schema-checked on load):
 *   { format: 'coffer-device/1', orgId, deviceId, userId, userHandle, deviceLabel, serverUrl,
 *     kdf: { algorithm: 'argon2id13', opsLimit, memLimit, salt },       salt: base64, 16 bytes
 *     passwordCheck,                                                    base64, 16 bytes
 *     ciphertext }                                                      base64, xchacha sealed
 *
 * master = Argon2id(password, kdf). Two independent keys come from it by keyed BLAKE2b:
 * the encryption key, and a 16-byte password check stored in clear. The check tells a wrong
 * password (WrongPasswordError) from a modified file (IntegrityError) and gives an attacker nothing
 * new: testing a guess against it costs the same Argon2id run as testing it against the AEAD.
 * The public header (format, ids, labels, server URL, kdf) is the AEAD's associated data, so it can
 * be read without the password but not changed without detection. The secret part is msgpack
 * (binary fields, no base64 strings of secrets lingering in the JS heap).
 */
import { randomBytes } from 'node:crypto';
import { mkdir, open, readFile, rename, stat, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { decode, encode } from '@msgpack/msgpack';
import { blake2b } from '@noble/hashes/blake2.js';
import { z } from 'zod';
import { BadInputError, CofferError, IntegrityError, WrongPasswordError } from '../errors.js';
import { boxPublicKey } from './box.js';
import { timingSafeEqualBytes } from './digest.js';
import { deriveKeyFromPasswordIsolated, KDF_INTERACTIVE, KDF_MEM_MAX, KDF_MEM_MIN, KDF_OPS_MAX, KDF_OPS_MIN, KDF_SALT_BYTES, newKdfSalt, type KdfParams } from './password.js';
import { signingPublicKey } from './signing.js';
import { sodiumReady } from './sodium.js';
import { xchachaDecrypt, xchachaEncrypt } from './xchacha.js';

export const DEVICE_FILE_FORMAT = 'coffer-device/1';
const CHECK_BYTES = 16;
const MAX_FILE_BYTES = 1024 * 1024; // a real one is ~1 KiB; refuse to read anything huge

export interface DeviceKeys {
  orgId: string;
  deviceId: string;
  userId: string;
  userHandle: string;
  deviceLabel: string;
  serverUrl: string;
  profile: 'admin' | 'standard' | 'outsider';
  signingKey: Buffer; // device Ed25519 seed
  verifyKey: Buffer; // device Ed25519 public key
  userSecretKey: Buffer; // user X25519
  userPublicKey: Buffer;
  localKey: Buffer; // 32-byte key encrypting this device's local store
  rootVerifyKey: Buffer; // organization root Ed25519 public key
}

export interface DeviceFileHeader {
  orgId: string;
  deviceId: string;
  userId: string;
  userHandle: string;
  deviceLabel: string;
  serverUrl: string;
}

const HEADER_FIELDS = ['orgId', 'deviceId', 'userId', 'userHandle', 'deviceLabel', 'serverUrl'] as const;

const text = z.string().min(1).max(1024);
const b64 = (bytes?: { min?: number; exact?: number; max?: number }) =>
  z
    .base64()
    .refine((s) => {
      const n = Buffer.from(s, 'base64').byteLength;
      return (bytes?.exact === undefined || n === bytes.exact) && n >= (bytes?.min ?? 0) && n <= (bytes?.max ?? Infinity);
    }, bytes?.exact !== undefined ? `must decode to ${bytes.exact} bytes` : 'has a bad length');

const fileSchema = z.strictObject({
  format: z.literal(DEVICE_FILE_FORMAT),
  orgId: text,
  deviceId: text,
  userId: text,
  userHandle: text,
  deviceLabel: z.string().max(1024),
  serverUrl: text,
  kdf: z.strictObject({
    algorithm: z.literal('argon2id13'),
    opsLimit: z.int().min(KDF_OPS_MIN).max(KDF_OPS_MAX),
    memLimit: z.int().min(KDF_MEM_MIN).max(KDF_MEM_MAX),
    salt: b64({ exact: KDF_SALT_BYTES }),
  }),
  passwordCheck: b64({ exact: CHECK_BYTES }),
  ciphertext: b64({ min: 40, max: MAX_FILE_BYTES }),
});
type DeviceFile = z.infer<typeof fileSchema>;

const key32 = z.instanceof(Uint8Array).refine((b) => b.byteLength === 32, 'must be 32 bytes');
const secretSchema = z.strictObject({
  profile: z.enum(['admin', 'standard', 'outsider']),
  signingKey: key32,
  verifyKey: key32,
  userSecretKey: key32,
  userPublicKey: key32,
  localKey: key32,
  rootVerifyKey: key32,
});
const headerSchema = z.strictObject({
  orgId: text,
  deviceId: text,
  userId: text,
  userHandle: text,
  deviceLabel: z.string().max(1024),
  serverUrl: text,
});

/** First zod issue as one readable sentence naming the field. */
function describeIssue(err: z.ZodError, what: string): string {
  const issue = err.issues[0];
  if (issue === undefined) return `invalid ${what}`;
  const at = issue.path.map(String).join('.');
  if (issue.code === 'unrecognized_keys') {
    const keys = issue.keys.map((k) => (at === '' ? k : `${at}.${k}`));
    return `invalid ${what}: unexpected field ${keys.map((k) => `"${k}"`).join(', ')}`;
  }
  return `invalid ${what}: field "${at === '' ? '(root)' : at}" ${issue.message}`;
}

function parseWith<T>(schema: z.ZodType<T>, value: unknown, what: string): T {
  const r = schema.safeParse(value, {
    error: (iss) => (iss.code === 'invalid_type' && iss.input === undefined ? 'is missing' : undefined),
  });
  if (!r.success) throw new BadInputError(describeIssue(r.error, what));
  return r.data;
}

/** Canonical JSON (sorted keys, strings and integers only) of everything outside the ciphertext. */
function associatedData(f: Omit<DeviceFile, 'ciphertext' | 'passwordCheck'>): Buffer {
  const canon = (v: unknown): unknown =>
    v !== null && typeof v === 'object'
      ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, canon((v as Record<string, unknown>)[k])]))
      : v;
  const header = {
    format: f.format,
    ...Object.fromEntries(HEADER_FIELDS.map((k) => [k, f[k]])),
    kdf: f.kdf,
  };
  return Buffer.from(JSON.stringify(canon(header)), 'utf8');
}

function subkeys(master: Uint8Array): { encKey: Buffer; check: Buffer } {
  const encKey = Buffer.from(blake2b(Buffer.from('coffer-device/1 encryption key'), { key: master, dkLen: 32 }));
  const check = Buffer.from(blake2b(Buffer.from('coffer-device/1 password check'), { key: master, dkLen: CHECK_BYTES }));
  return { encKey, check };
}

function checkKeys(keys: DeviceKeys, onError: (msg: string) => Error): void {
  if (!signingPublicKey(keys.signingKey).equals(keys.verifyKey)) throw onError('verifyKey does not match signingKey');
  if (!boxPublicKey(keys.userSecretKey).equals(keys.userPublicKey)) throw onError('userPublicKey does not match userSecretKey');
}

async function readJson(path: string): Promise<unknown> {
  let raw: string;
  try {
    const st = await stat(path);
    if (!st.isFile()) throw new BadInputError(`device file is not a regular file: ${path}`);
    if (st.size > MAX_FILE_BYTES) throw new BadInputError(`device file is too large: ${path}`);
    raw = await readFile(path, 'utf8');
  } catch (err) {
    if (err instanceof CofferError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') throw new CofferError('not_found', `device file not found: ${path}`);
    throw new CofferError('internal', `cannot read device file ${path}: ${code ?? String(err)}`);
  }
  try {
    return JSON.parse(raw) as unknown;
  } catch {
    throw new BadInputError(`device file is not valid JSON: ${path}`);
  }
}

async function readValidated(path: string): Promise<DeviceFile> {
  return parseWith(fileSchema, await readJson(path), 'device file');
}

/** Atomic replace: private temp file in the same directory, fsync, rename, fsync the directory. */
async function writeFileAtomic(path: string, data: string): Promise<void> {
  const dir = dirname(path);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const tmp = join(dir, `.${basename(path)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  try {
    const fh = await open(tmp, 'wx', 0o600);
    try {
      await fh.writeFile(data, 'utf8');
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  try {
    const dh = await open(dir, 'r');
    try {
      await dh.sync(); // makes the rename itself durable
    } finally {
      await dh.close();
    }
  } catch {
    // some filesystems refuse fsync on directories: the rename is still atomic
  }
}

export async function saveDeviceFile(
  path: string,
  keys: DeviceKeys,
  password: string,
  kdf: Omit<KdfParams, 'salt'> = KDF_INTERACTIVE,
): Promise<void> {
  const header = parseWith(headerSchema, Object.fromEntries(HEADER_FIELDS.map((k) => [k, keys[k]])), 'device keys');
  const secret = parseWith(
    secretSchema,
    {
      profile: keys.profile,
      signingKey: keys.signingKey,
      verifyKey: keys.verifyKey,
      userSecretKey: keys.userSecretKey,
      userPublicKey: keys.userPublicKey,
      localKey: keys.localKey,
      rootVerifyKey: keys.rootVerifyKey,
    },
    'device keys',
  );
  await sodiumReady();
  checkKeys(keys, (msg) => new BadInputError(`invalid device keys: ${msg}`));

  const salt = newKdfSalt();
  const master = await deriveKeyFromPasswordIsolated(password, { opsLimit: kdf.opsLimit, memLimit: kdf.memLimit, salt });
  const { encKey, check } = subkeys(master);
  master.fill(0);
  const file: Omit<DeviceFile, 'ciphertext' | 'passwordCheck'> = {
    format: DEVICE_FILE_FORMAT,
    ...header,
    kdf: { algorithm: 'argon2id13', opsLimit: kdf.opsLimit, memLimit: kdf.memLimit, salt: salt.toString('base64') },
  };
  const plain = encode(secret);
  const sealed = xchachaEncrypt(encKey, plain, associatedData(file));
  plain.fill(0);
  encKey.fill(0);
  const out: DeviceFile = { ...file, passwordCheck: check.toString('base64'), ciphertext: sealed.toString('base64') };
  await writeFileAtomic(path, JSON.stringify(out, null, 2) + '\n');
}

/** Wrong password -> WrongPasswordError; malformed -> BadInputError; modified -> IntegrityError; missing -> not_found. */
export async function loadDeviceFile(path: string, password: string): Promise<DeviceKeys> {
  const file = await readValidated(path);
  await sodiumReady();
  const salt = Buffer.from(file.kdf.salt, 'base64');
  const master = await deriveKeyFromPasswordIsolated(password, { opsLimit: file.kdf.opsLimit, memLimit: file.kdf.memLimit, salt });
  const { encKey, check } = subkeys(master);
  master.fill(0);
  if (!timingSafeEqualBytes(check, Buffer.from(file.passwordCheck, 'base64'))) {
    encKey.fill(0);
    throw new WrongPasswordError();
  }
  let plain: Buffer;
  try {
    plain = xchachaDecrypt(encKey, Buffer.from(file.ciphertext, 'base64'), associatedData(file));
  } catch {
    throw new IntegrityError(`device file was modified: ${path}`);
  } finally {
    encKey.fill(0);
  }
  let decoded: unknown;
  try {
    decoded = decode(plain);
  } catch {
    throw new IntegrityError(`device file secret part is not decodable: ${path}`);
  }
  let secret: z.infer<typeof secretSchema>;
  try {
    secret = parseWith(secretSchema, decoded, 'device file secret part');
  } catch (err) {
    throw new IntegrityError(err instanceof Error ? err.message : 'invalid device file secret part');
  }
  const copy = (u8: Uint8Array): Buffer => Buffer.from(u8); // own memory, not views into `plain`
  const keys: DeviceKeys = {
    orgId: file.orgId,
    deviceId: file.deviceId,
    userId: file.userId,
    userHandle: file.userHandle,
    deviceLabel: file.deviceLabel,
    serverUrl: file.serverUrl,
    profile: secret.profile,
    signingKey: copy(secret.signingKey),
    verifyKey: copy(secret.verifyKey),
    userSecretKey: copy(secret.userSecretKey),
    userPublicKey: copy(secret.userPublicKey),
    localKey: copy(secret.localKey),
    rootVerifyKey: copy(secret.rootVerifyKey),
  };
  plain.fill(0);
  checkKeys(keys, (msg) => new IntegrityError(`device file is inconsistent: ${msg}`));
  return keys;
}

/** The public part, without the password (e.g. to list devices or prefill a login prompt). */
export async function readDeviceFileHeader(path: string): Promise<DeviceFileHeader> {
  const f = await readValidated(path);
  return {
    orgId: f.orgId,
    deviceId: f.deviceId,
    userId: f.userId,
    userHandle: f.userHandle,
    deviceLabel: f.deviceLabel,
    serverUrl: f.serverUrl,
  };
}
