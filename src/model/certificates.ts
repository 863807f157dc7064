import { z } from 'zod';
import { signMessage, verifySignature } from '../crypto/index.js';
import { IntegrityError } from '../errors.js';
import { decodeWith, encode } from './codec.js';
import { IdSchema, type DeviceId } from './ids.js';

/**
 * Certificates: signed, timestamped statements that grant trust. The first user and device are
 * signed by the organization root key (author 'root'); later ones by an admin device. The server
 * checks and orders them; every client verifies them itself.
 */
const Key32 = z.custom<Uint8Array>((v) => v instanceof Uint8Array && v.length === 32, 'must be 32 bytes');
const Author = z.union([z.literal('root'), IdSchema]);
const Timestamp = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);
export const PROFILES = ['admin', 'standard', 'outsider'] as const;
export type Profile = (typeof PROFILES)[number];
export const HandleSchema = z.string().min(1).max(254).regex(/^[^\s\u0000-\u001f]+$/, 'no spaces or control characters');

export const UserCertificateSchema = z.strictObject({
  type: z.literal('user'),
  userId: IdSchema,
  handle: HandleSchema,
  publicKey: Key32,
  profile: z.enum(PROFILES),
  timestamp: Timestamp,
  author: Author,
});
export const DeviceCertificateSchema = z.strictObject({
  type: z.literal('device'),
  deviceId: IdSchema,
  userId: IdSchema,
  label: z.string().min(1).max(128),
  verifyKey: Key32,
  timestamp: Timestamp,
  author: Author,
});
/** A revoked user's devices are refused from then on; workspaces they could read get new keys. */
export const RevokedUserCertificateSchema = z.strictObject({
  type: z.literal('revoked'),
  userId: IdSchema,
  timestamp: Timestamp,
  author: IdSchema,
});
/** A member's role on a workspace (null: removed). The first one of a realm is its creator making itself owner. */
export const RealmRoleCertificateSchema = z.strictObject({
  type: z.literal('realm_role'),
  realmId: IdSchema,
  userId: IdSchema,
  role: z.enum(['reader', 'contributor', 'manager', 'owner']).nullable(),
  timestamp: Timestamp,
  author: IdSchema,
});
export type RealmRoleCertificate = z.infer<typeof RealmRoleCertificateSchema>;
/**
 * A workspace key: its index and a digest of it, signed by an owner. Clients only use keys that match a
 * certified digest, so a server cannot slip in a key of its own (sealed to members' public keys).
 */
export const RealmKeyCertificateSchema = z.strictObject({
  type: z.literal('realm_key'),
  realmId: IdSchema,
  keyIndex: z.number().int().min(1).max(2 ** 31),
  keyDigest: Key32,
  timestamp: Timestamp,
  author: IdSchema,
});

/** Groups (beyond Parsec, as in Psono): created and filled by admins, shared like users. */
export const GroupCertificateSchema = z.strictObject({
  type: z.literal('group'),
  groupId: IdSchema,
  name: z.string().min(1).max(128),
  timestamp: Timestamp,
  author: IdSchema,
});
export const GroupMemberCertificateSchema = z.strictObject({
  type: z.literal('group_member'),
  groupId: IdSchema,
  userId: IdSchema,
  member: z.boolean(),
  timestamp: Timestamp,
  author: IdSchema,
});
export const RealmGroupRoleCertificateSchema = z.strictObject({
  type: z.literal('realm_group_role'),
  realmId: IdSchema,
  groupId: IdSchema,
  role: z.enum(['reader', 'contributor', 'manager', 'owner']).nullable(),
  timestamp: Timestamp,
  author: IdSchema,
});
export type RealmGroupRoleCertificate = z.infer<typeof RealmGroupRoleCertificateSchema>;
export const CertificateSchema = z.discriminatedUnion('type', [
  UserCertificateSchema,
  DeviceCertificateSchema,
  RevokedUserCertificateSchema,
  RealmRoleCertificateSchema,
  GroupCertificateSchema,
  GroupMemberCertificateSchema,
  RealmGroupRoleCertificateSchema,
  RealmKeyCertificateSchema,
]);
export type RevokedUserCertificate = z.infer<typeof RevokedUserCertificateSchema>;
export type UserCertificate = z.infer<typeof UserCertificateSchema>;
export type DeviceCertificate = z.infer<typeof DeviceCertificateSchema>;
export type Certificate = z.infer<typeof CertificateSchema>;

const SignedSchema = z.strictObject({ payload: z.instanceof(Uint8Array), signature: z.instanceof(Uint8Array) });

export function signCertificate(cert: Certificate, signingKey: Uint8Array): Uint8Array {
  const payload = encode(cert);
  return encode({ payload, signature: signMessage(signingKey, payload) });
}

/** Decode without verifying, to learn the author (then call verifyCertificate with its key). */
export function peekCertificate(bytes: Uint8Array): Certificate {
  const signed = decodeWith(SignedSchema, bytes, 'signed certificate');
  return decodeWith(CertificateSchema, signed.payload, 'certificate');
}

/** Verify the signature with the author's key: IntegrityError when it does not match. */
export function verifyCertificate(bytes: Uint8Array, verifyKeyOf: (author: 'root' | DeviceId) => Uint8Array | undefined): Certificate {
  const signed = decodeWith(SignedSchema, bytes, 'signed certificate');
  const cert = decodeWith(CertificateSchema, signed.payload, 'certificate');
  const key = verifyKeyOf(cert.author);
  if (!key) throw new IntegrityError(`certificate signed by unknown author ${cert.author}`);
  if (!verifySignature(key, signed.payload, signed.signature)) {
    throw new IntegrityError(`certificate signature does not verify (author ${cert.author})`);
  }
  return cert;
}
