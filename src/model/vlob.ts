/**
 * The vlob envelope of a manifest: signed by the author device, then encrypted with the workspace
 * key. The AAD and the signed payload both bind realm, vlob id and version, so the server cannot
 * serve another file's or another version's blob in place of the one asked for.
 */
import { z } from 'zod';
import { signMessage, verifySignature, xchachaDecrypt, xchachaEncrypt } from '../crypto/index.js';
import { BadInputError, IntegrityError } from '../errors.js';
import { decode, encode, parseWith } from './codec.js';
import { IdSchema, type DeviceId, type RealmId } from './ids.js';
import { parseManifest, type Manifest } from './manifests.js';

export interface VlobContext {
  realmId: RealmId;
  vlobId: string;
  version: number;
  keyIndex: number;
}
export interface VlobAuthor {
  deviceId: DeviceId;
  timestamp: number;
}
export interface OpenedVlob {
  manifest: Manifest;
  author: DeviceId;
  timestamp: number;
}

const SafeUint = z.number().int().nonnegative();
const ContextSchema = z.strictObject({
  realmId: IdSchema,
  vlobId: IdSchema,
  version: z.number().int().min(1),
  keyIndex: SafeUint,
});
const AuthorSchema = z.strictObject({ deviceId: IdSchema, timestamp: SafeUint });
const SignedSchema = z.strictObject({
  payload: z.instanceof(Uint8Array),
  signature: z.custom<Uint8Array>((v) => v instanceof Uint8Array && v.byteLength === 64, 'must be 64 bytes'),
});
const PayloadSchema = z.strictObject({
  v: z.literal(1),
  realmId: IdSchema,
  vlobId: IdSchema,
  version: z.number().int().min(1),
  author: IdSchema,
  timestamp: SafeUint,
  manifest: z.unknown(), // checked separately: a bad manifest under a valid signature is reported as such
});

function vlobAad(ctx: VlobContext): Uint8Array {
  return Buffer.from(`coffer-vlob/1|${ctx.realmId}|${ctx.vlobId}|${ctx.version}|${ctx.keyIndex}`, 'utf8');
}

function reason(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

export function sealVlob(
  manifest: Manifest,
  ctx: VlobContext,
  author: VlobAuthor,
  signingKey: Uint8Array,
  workspaceKey: Uint8Array,
): Uint8Array {
  const c = parseWith(ContextSchema, ctx, 'vlob context');
  const a = parseWith(AuthorSchema, author, 'vlob author');
  const m = parseManifest(manifest);
  if (m.id !== c.vlobId) throw new BadInputError(`manifest id ${m.id} does not match vlob id ${c.vlobId}`);
  const payload = encode({
    v: 1,
    realmId: c.realmId,
    vlobId: c.vlobId,
    version: c.version,
    author: a.deviceId,
    timestamp: a.timestamp,
    manifest: m,
  });
  const signed = encode({ payload, signature: new Uint8Array(signMessage(signingKey, payload)) });
  return new Uint8Array(xchachaEncrypt(workspaceKey, signed, vlobAad(c)));
}

export function openVlob(
  blob: Uint8Array,
  ctx: VlobContext,
  workspaceKey: Uint8Array,
  verifyKeyOf: (deviceId: DeviceId) => Uint8Array | undefined,
): OpenedVlob {
  const c = parseWith(ContextSchema, ctx, 'vlob context'); // caller's mistake, not tampering
  const where = `vlob ${c.vlobId} v${c.version}`;

  let signed: Uint8Array;
  try {
    signed = xchachaDecrypt(workspaceKey, blob, vlobAad(c));
  } catch {
    throw new IntegrityError(
      `${where}: decryption failed (wrong workspace key or key index, a blob of another vlob or version, or tampered bytes)`,
    );
  }

  let payloadBytes: Uint8Array;
  let signature: Uint8Array;
  try {
    ({ payload: payloadBytes, signature } = parseWith(SignedSchema, decode(signed), 'signed vlob'));
  } catch (err) {
    throw new IntegrityError(`${where}: malformed signed envelope: ${reason(err)}`);
  }
  let payload: z.output<typeof PayloadSchema>;
  try {
    payload = parseWith(PayloadSchema, decode(payloadBytes), 'vlob payload');
  } catch (err) {
    throw new IntegrityError(`${where}: malformed payload: ${reason(err)}`);
  }

  const verifyKey = verifyKeyOf(payload.author);
  if (verifyKey === undefined) throw new IntegrityError(`${where}: signed by unknown device ${payload.author}`);
  let valid: boolean;
  try {
    valid = verifySignature(verifyKey, payloadBytes, signature);
  } catch {
    valid = false;
  }
  if (!valid) throw new IntegrityError(`${where}: bad signature for author device ${payload.author}`);

  // The AAD already binds these; checking the signed copy too keeps the guarantee from
  // resting on the encryption layer alone.
  if (payload.realmId !== c.realmId || payload.vlobId !== c.vlobId || payload.version !== c.version) {
    throw new IntegrityError(
      `${where}: signed content is realm ${payload.realmId} vlob ${payload.vlobId} v${payload.version}, not the one requested`,
    );
  }

  let manifest: Manifest;
  try {
    manifest = parseManifest(payload.manifest);
  } catch (err) {
    throw new IntegrityError(`${where}: device ${payload.author} signed an invalid manifest: ${reason(err)}`);
  }
  if (manifest.id !== c.vlobId) {
    throw new IntegrityError(`${where}: holds manifest ${manifest.id}, not ${c.vlobId}`);
  }
  return { manifest, author: payload.author, timestamp: payload.timestamp };
}
