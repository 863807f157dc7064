import { sha256, signMessage, verifySignature } from '../crypto/index.js';

/**
 * Device-signature authentication: no passwords and no bearer secrets on the wire.
 * Header: `Authorization: Coffer-Ed25519 org=<org>,device=<id>,ts=<ms>,sig=<base64url>`
 * The signature covers method, path (with query), timestamp and the body's SHA-256.
 */
export const AUTH_SCHEME = 'Coffer-Ed25519';
export const CLOCK_WINDOW_MS = 5 * 60 * 1000;

export interface AuthClaims {
  orgId: string;
  deviceId: string;
  timestamp: number;
  signature: Uint8Array;
}

const EMPTY_BODY_DIGEST = sha256(new Uint8Array(0)).toString('hex');

/** `bodyDigest` may be given when the caller already has the body's SHA-256 (a block's digest). */
export function canonicalRequest(method: string, pathWithQuery: string, timestamp: number, body: Uint8Array | null, bodyDigest?: Uint8Array): Uint8Array {
  const digest = bodyDigest ? Buffer.from(bodyDigest).toString('hex') : body && body.length > 0 ? sha256(body).toString('hex') : EMPTY_BODY_DIGEST;
  return Buffer.from(`coffer-auth/1\n${method.toUpperCase()}\n${pathWithQuery}\n${timestamp}\n${digest}`, 'utf8');
}

export function buildAuthHeader(
  orgId: string,
  deviceId: string,
  signingKey: Uint8Array,
  method: string,
  pathWithQuery: string,
  body: Uint8Array | null,
  timestamp: number = Date.now(),
  bodyDigest?: Uint8Array,
): string {
  const sig = signMessage(signingKey, canonicalRequest(method, pathWithQuery, timestamp, body, bodyDigest));
  return `${AUTH_SCHEME} org=${orgId},device=${deviceId},ts=${timestamp},sig=${sig.toString('base64url')}`;
}

const HEADER_PATTERN = /^Coffer-Ed25519 org=([A-Za-z0-9_-]{1,64}),device=([0-9a-f]{32}),ts=(\d{1,16}),sig=([A-Za-z0-9_-]{86})$/;

/** Parse the header; null when it is absent or malformed (the caller answers 401). */
export function parseAuthHeader(header: string | undefined): AuthClaims | null {
  if (header === undefined) return null;
  const m = HEADER_PATTERN.exec(header);
  if (!m) return null;
  const signature = Buffer.from(m[4]!, 'base64url');
  if (signature.length !== 64) return null;
  return { orgId: m[1]!, deviceId: m[2]!, timestamp: Number(m[3]), signature };
}

export function verifyRequestSignature(
  claims: AuthClaims,
  verifyKey: Uint8Array,
  method: string,
  pathWithQuery: string,
  body: Uint8Array | null,
  /** The body's SHA-256 when the caller computed it already (the server keeps it for a block's digest). */
  bodyDigest?: Uint8Array,
): boolean {
  return verifySignature(verifyKey, canonicalRequest(method, pathWithQuery, claims.timestamp, body, bodyDigest), claims.signature);
}
