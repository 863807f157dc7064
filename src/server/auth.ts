import type { FastifyRequest } from 'fastify';
import { sha256 } from '../crypto/index.js';
import { CofferError } from '../errors.js';
import { CLOCK_WINDOW_MS, parseAuthHeader, verifyRequestSignature } from '../protocol/auth.js';
import { ROLE_RANK, type Role } from '../protocol/schemas.js';
import type { Caller, ServerContext } from './context.js';

/** Checks the device signature header against the device's certified verify key. */
export async function authenticate(ctx: ServerContext, req: FastifyRequest, pathOrgId: string): Promise<Caller> {
  const claims = parseAuthHeader(req.headers.authorization);
  if (!claims) throw new CofferError('unauthorized', 'missing or malformed Authorization header (Coffer-Ed25519 device signature expected)');
  if (Math.abs(ctx.now() - claims.timestamp) > CLOCK_WINDOW_MS) {
    throw new CofferError('unauthorized', 'request timestamp outside the allowed clock window (±5 min): check the clock or a replay');
  }
  if (claims.orgId !== pathOrgId) throw new CofferError('forbidden', 'authenticated for another organization');
  const device = await ctx.metadata.getDevice(claims.orgId, claims.deviceId);
  if (!device) throw new CofferError('unauthorized', 'unknown device for this organization');
  // Hashed once: a block's PUT stores this digest too (a block is hashed on the event loop).
  req.rawBodyDigest = req.rawBody !== null && req.rawBody.length > 0 ? sha256(req.rawBody) : null;
  if (!verifyRequestSignature(claims, device.verifyKey, req.method, req.url, req.rawBody, req.rawBodyDigest ?? undefined)) {
    throw new CofferError('unauthorized', 'bad request signature');
  }
  if (device.userRevokedAt !== null) throw new CofferError('forbidden', 'this user has been revoked');
  return { orgId: claims.orgId, deviceId: claims.deviceId, userId: device.userId };
}

export async function requireRole(ctx: ServerContext, caller: Caller, realmId: string, minimum: Role): Promise<Role> {
  const role = await ctx.metadata.getRole(caller.orgId, realmId, caller.userId);
  if (role === null) {
    const exists = await ctx.metadata.realmExists(caller.orgId, realmId);
    throw exists ? new CofferError('forbidden', 'not a member of this workspace') : new CofferError('not_found', 'no such workspace');
  }
  if (ROLE_RANK[role] < ROLE_RANK[minimum]) throw new CofferError('forbidden', `role ${role} cannot do this (needs ${minimum})`);
  return role;
}
