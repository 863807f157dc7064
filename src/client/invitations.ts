import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import {
  deriveSubkey,
  generateBoxKeyPair,
  generateSigningKeyPair,
  saveDeviceFile,
  sha256,
  sodiumReady,
  timingSafeEqualBytes,
  x25519SharedKey,
  xchachaDecrypt,
  xchachaEncrypt,
  type DeviceKeys,
} from '../crypto/index.js';
import { CofferError, IntegrityError } from '../errors.js';
import { HandleSchema, PROFILES, signCertificate } from '../model/certificates.js';
import { decodeWith, encode } from '../model/codec.js';
import { IdSchema, newId } from '../model/ids.js';
import type { InvitationStateBody } from '../protocol/schemas.js';
import { ServerConnection } from './connection.js';

/**
 * Enrolment of a new user or device, with a short authentication string (SAS) compared by the two
 * people. Claimer and greeter run an X25519 exchange through the server; the claimer commits to its
 * nonce before seeing the greeter's, so a server that swaps keys cannot grind a matching SAS: the two
 * screens then show different codes and the people stop. Keys and certificates travel only sealed
 * with the exchange's shared key.
 */
const SAS_ALPHABET = 'ABCDEFGHJKLMNPQRSTUVWXYZ23456789'; // 32 symbols, no 0/O/1/I
export const SAS_LENGTH = 6;
const POLL_MS = 200;

const Key32 = z.custom<Uint8Array>((v) => v instanceof Uint8Array && v.length === 32, 'must be 32 bytes');
const ClaimerPayload = z.strictObject({ verifyKey: Key32, label: z.string().min(1).max(128), userPublicKey: Key32.optional() });
const GreeterPayload = z.strictObject({
  userId: IdSchema,
  handle: HandleSchema,
  profile: z.enum(PROFILES),
  deviceId: IdSchema,
  rootVerifyKey: Key32,
  userSecretKey: Key32.optional(),
  userPublicKey: Key32.optional(),
});

function sasOf(shared: Uint8Array, claimerKey: Uint8Array, greeterKey: Uint8Array, claimerNonce: Uint8Array, greeterNonce: Uint8Array): string {
  const digest = deriveSubkey(shared, `coffer-sas/1|${Buffer.concat([claimerKey, greeterKey, claimerNonce, greeterNonce]).toString('hex')}`);
  let bits = 0n;
  for (const b of digest.subarray(0, 8)) bits = (bits << 8n) | BigInt(b);
  let out = '';
  for (let i = 0; i < SAS_LENGTH; i++) out += SAS_ALPHABET[Number((bits >> BigInt(5 * i)) & 31n)];
  return out;
}

const fromB64 = (s: string | null): Buffer | null => (s === null ? null : Buffer.from(s, 'base64'));
const b64 = (b: Uint8Array) => Buffer.from(b).toString('base64');

async function waitFor<T>(poll: () => Promise<InvitationStateBody>, pick: (s: InvitationStateBody) => T | null, timeoutMs: number, what: string): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const state = await poll();
    if (state.status === 'cancelled') throw new CofferError('forbidden', 'the invitation was cancelled');
    const value = pick(state);
    if (value !== null) return value;
    if (Date.now() > deadline) throw new CofferError('busy', `gave up waiting for ${what}`);
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

/** Certificates this process is signing and sending, one at a time (see certifyInOrder). */
let certifying: Promise<unknown> = Promise.resolve();
const CERTIFY_TRIES = 3;
/** Before signing again: another device's certificate may carry a time a little ahead of ours (clock skew). */
const CERTIFY_RETRY_MS = 150;

/**
 * Signs (with the current time) and sends an enrolment's certificates. The server takes an
 * organization's certificates in timestamp order only: two greetings finished at the same moment
 * could send the later-signed one first, and the other was refused ("certificate older than the
 * last one"; seen in test/e2e/scaleout.test.ts). So this process sends them one at a time, and
 * signs again with the current time when the server still refuses one as a conflict (another
 * device's certificate came in between, its clock maybe a little ahead), 150 then 300 ms later: a
 * conflict of another kind (a handle taken) is answered the same each time and reaches the caller.
 */
function certifyInOrder(submit: (timestamp: number) => Promise<void>): Promise<void> {
  const attempt = async (): Promise<void> => {
    for (let tries = 1; ; tries++) {
      try {
        return await submit(Date.now());
      } catch (err) {
        if (tries >= CERTIFY_TRIES || !(err instanceof CofferError && err.code === 'conflict')) throw err;
        await new Promise((r) => setTimeout(r, CERTIFY_RETRY_MS * tries));
      }
    }
  };
  const turn = certifying.then(attempt, attempt);
  certifying = turn.catch(() => undefined);
  return turn;
}

export interface GreetInProgress {
  sas: string;
  type: 'user' | 'device';
  handle: string | null;
  /** After the people confirmed the SAS: certify the claimer and hand over what it needs. */
  finish(): Promise<{ userId: string; deviceId: string }>;
}

/** The greeter's side; resolves once the SAS can be shown. */
export async function greet(device: DeviceKeys, conn: ServerConnection, invitationId: string, timeoutMs = 600_000): Promise<GreetInProgress> {
  await sodiumReady();
  const poll = () => conn.getInvitation(invitationId);
  const first = await waitFor(poll, (s) => (s.claimerPublicKey && s.claimerCommitment ? s : null), timeoutMs, 'the claimer to start');
  const claimerKey = fromB64(first.claimerPublicKey)!;
  const commitment = fromB64(first.claimerCommitment)!;
  const eph = generateBoxKeyPair();
  const greeterNonce = randomBytes(32);
  await conn.greeterStep(invitationId, { step: 'keys', publicKey: b64(eph.publicKey), nonce: b64(greeterNonce) });
  const claimerNonce = fromB64(await waitFor(poll, (s) => s.claimerNonce, timeoutMs, 'the claimer'))!;
  if (!timingSafeEqualBytes(sha256(claimerNonce), commitment)) throw new IntegrityError('the claimer nonce does not match its commitment: enrolment refused');
  const shared = x25519SharedKey(eph.secretKey, eph.publicKey, claimerKey, false);
  const sas = sasOf(shared, claimerKey, eph.publicKey, claimerNonce, greeterNonce);
  return {
    sas,
    type: first.type,
    handle: first.handle,
    finish: async () => {
      const sealed = fromB64(await waitFor(poll, (s) => s.claimerPayload, timeoutMs, 'the claimer to confirm'))!;
      let payload: z.infer<typeof ClaimerPayload>;
      try {
        payload = decodeWith(ClaimerPayload, xchachaDecrypt(deriveSubkey(shared, 'coffer-invite/1|claimer'), sealed), 'claimer payload');
      } catch {
        throw new IntegrityError('the claimer payload does not open with the exchanged key (keys swapped in transit?): enrolment refused');
      }
      const deviceId = newId();
      let reply: z.infer<typeof GreeterPayload>;
      if (first.type === 'user') {
        const { userPublicKey } = payload;
        const handle = first.handle;
        if (!userPublicKey || !handle) throw new CofferError('bad_request', 'a user invitation needs the new user public key and a handle');
        const userId = newId();
        await certifyInOrder(async (timestamp) => {
          const userCert = signCertificate({ type: 'user', userId, handle, publicKey: userPublicKey, profile: 'standard', timestamp, author: device.deviceId }, device.signingKey);
          const deviceCert = signCertificate({ type: 'device', deviceId, userId, label: payload.label, verifyKey: payload.verifyKey, timestamp, author: device.deviceId }, device.signingKey);
          await conn.createUser(userCert, deviceCert);
        });
        reply = { userId, handle, profile: 'standard', deviceId, rootVerifyKey: device.rootVerifyKey };
      } else {
        await certifyInOrder(async (timestamp) => {
          const deviceCert = signCertificate(
            { type: 'device', deviceId, userId: device.userId, label: payload.label, verifyKey: payload.verifyKey, timestamp, author: device.deviceId },
            device.signingKey,
          );
          await conn.createDevice(deviceCert);
        });
        reply = {
          userId: device.userId,
          handle: device.userHandle,
          profile: device.profile,
          deviceId,
          rootVerifyKey: device.rootVerifyKey,
          userSecretKey: device.userSecretKey,
          userPublicKey: device.userPublicKey,
        };
      }
      await conn.greeterStep(invitationId, { step: 'payload', payload: b64(xchachaEncrypt(deriveSubkey(shared, 'coffer-invite/1|greeter'), encode(reply))) });
      return { userId: reply.userId, deviceId };
    },
  };
}

export interface ClaimInProgress {
  sas: string;
  type: 'user' | 'device';
  handle: string | null;
  /** After the people confirmed the SAS: send our keys, receive the certified identity, write the device file. */
  finish(opts: { password: string; deviceFile: string; label: string }): Promise<DeviceKeys>;
}

/** The claimer's side (anonymous: it only has the invitation token). */
export async function claim(serverUrl: string, orgId: string, token: string, timeoutMs = 600_000): Promise<ClaimInProgress> {
  await sodiumReady();
  const conn = new ServerConnection(serverUrl, null);
  const poll = () => conn.claimStep(orgId, { step: 'poll', token });
  try {
    const info = await poll();
    const eph = generateBoxKeyPair();
    const claimerNonce = randomBytes(32);
    await conn.claimStep(orgId, { step: 'start', token, publicKey: b64(eph.publicKey), commitment: b64(sha256(claimerNonce)) });
    const g = await waitFor(poll, (s) => (s.greeterPublicKey && s.greeterNonce ? s : null), timeoutMs, 'the greeter');
    const greeterKey = fromB64(g.greeterPublicKey)!;
    const greeterNonce = fromB64(g.greeterNonce)!;
    await conn.claimStep(orgId, { step: 'reveal', token, nonce: b64(claimerNonce) });
    const shared = x25519SharedKey(eph.secretKey, eph.publicKey, greeterKey, true);
    const sas = sasOf(shared, eph.publicKey, greeterKey, claimerNonce, greeterNonce);
    return {
      sas,
      type: info.type,
      handle: info.handle,
      finish: async ({ password, deviceFile, label }) => {
        const signing = generateSigningKeyPair();
        const userBox = info.type === 'user' ? generateBoxKeyPair() : null;
        const payload = { verifyKey: signing.publicKey, label, ...(userBox && { userPublicKey: userBox.publicKey }) };
        await conn.claimStep(orgId, { step: 'payload', token, payload: b64(xchachaEncrypt(deriveSubkey(shared, 'coffer-invite/1|claimer'), encode(payload))) });
        const sealed = fromB64(await waitFor(poll, (s) => s.greeterPayload, timeoutMs, 'the greeter to confirm'))!;
        let reply: z.infer<typeof GreeterPayload>;
        try {
          reply = decodeWith(GreeterPayload, xchachaDecrypt(deriveSubkey(shared, 'coffer-invite/1|greeter'), sealed), 'greeter payload');
        } catch {
          throw new IntegrityError('the greeter payload does not open with the exchanged key (keys swapped in transit?): enrolment refused');
        }
        const userSecretKey = userBox?.secretKey ?? reply.userSecretKey;
        const userPublicKey = userBox?.publicKey ?? reply.userPublicKey;
        if (!userSecretKey || !userPublicKey) throw new IntegrityError('the greeter did not send the user keys');
        const keys: DeviceKeys = {
          orgId,
          deviceId: reply.deviceId,
          userId: reply.userId,
          userHandle: reply.handle,
          deviceLabel: label,
          serverUrl,
          profile: reply.profile,
          signingKey: signing.secretKey,
          verifyKey: signing.publicKey,
          userSecretKey: Buffer.from(userSecretKey),
          userPublicKey: Buffer.from(userPublicKey),
          localKey: randomBytes(32),
          rootVerifyKey: Buffer.from(reply.rootVerifyKey),
        };
        await saveDeviceFile(deviceFile, keys, password);
        conn.close();
        return keys;
      },
    };
  } catch (err) {
    conn.close();
    throw err;
  }
}

/** `coffer claim` takes one string: `<server URL>/<org>/<token>` (what `coffer invite` prints). */
export function parseInvitationAddress(address: string): { serverUrl: string; orgId: string; token: string } {
  let url: URL;
  try {
    url = new URL(address);
  } catch {
    throw new CofferError('bad_request', 'invitation address must look like http://host:port/<org>/<token>');
  }
  const parts = url.pathname.split('/').filter(Boolean);
  const token = parts.pop();
  const orgId = parts.pop();
  if (!token || !orgId) throw new CofferError('bad_request', 'invitation address must look like http://host:port/<org>/<token>');
  url.pathname = `/${parts.join('/')}`;
  return { serverUrl: url.toString().replace(/\/+$/, ''), orgId, token };
}

export function invitationAddress(serverUrl: string, orgId: string, token: string): string {
  return `${serverUrl.replace(/\/+$/, '')}/${orgId}/${token}`;
}
