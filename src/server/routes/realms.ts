import type { FastifyInstance } from 'fastify';
import { CofferError } from '../../errors.js';
import { parseWith } from '../../model/codec.js';
import { CreateRealmRequest, ROLE_RANK, RotateKeyRequest, ROUTES, SetRoleRequest, type Role } from '../../protocol/schemas.js';
import { requireRole } from '../auth.js';
import type { Caller } from '../context.js';
import type { RouteContext } from '../app.js';
import { callerCertificate } from './certificates.js';
import { b64, fromB64, OrgParams, params, RealmParams, RoleParams } from './params.js';

/** The role certificate must be signed by the caller and state exactly what the request does. */
async function roleCertificate(ctx: RouteContext, caller: Caller, text: string, expected: { realmId: string; userId: string; role: Role | null }) {
  const c = await callerCertificate(ctx, caller, text);
  if (c.cert.type !== 'realm_role' || c.cert.realmId !== expected.realmId || c.cert.userId !== expected.userId || c.cert.role !== expected.role) {
    throw new CofferError('bad_request', 'the role certificate does not state this change');
  }
  return c;
}

async function keyCertificate(ctx: RouteContext, caller: Caller, text: string, realmId: string, keyIndex: number) {
  const c = await callerCertificate(ctx, caller, text);
  if (c.cert.type !== 'realm_key' || c.cert.realmId !== realmId || c.cert.keyIndex !== keyIndex) throw new CofferError('bad_request', 'the key certificate does not state this key');
  return c;
}

export function registerRealmRoutes(app: FastifyInstance, ctx: RouteContext): void {
  // Creating a realm makes the caller its owner; the workspace key arrives sealed to the caller's own public key.
  app.post(ROUTES.realms, async (req, reply) => {
    const { org } = params(OrgParams, req.params);
    const caller = await ctx.caller(req, org);
    const body = parseWith(CreateRealmRequest, req.body, 'request body');
    const sealed = fromB64(body.sealedKey);
    if (sealed.length < 48 || sealed.length > 1024) throw new CofferError('bad_request', 'sealedKey has an impossible size');
    const cert = await roleCertificate(ctx, caller, body.roleCertificate, { realmId: body.realmId, userId: caller.userId, role: 'owner' });
    if (body.keyIndex !== 1) throw new CofferError('bad_request', 'a new workspace starts with key 1');
    const keyCert = await keyCertificate(ctx, caller, body.keyCertificate, body.realmId, 1);
    if (!(await ctx.metadata.createRealm(org, body.realmId, caller.userId, body.keyIndex, sealed, ctx.now(), [cert, keyCert]))) {
      throw new CofferError('exists', 'a workspace with this id already exists');
    }
    return reply.status(201).send({ realmId: body.realmId, role: 'owner' });
  });

  // Owner grants any role; manager grants reader/contributor to non-owners. The keys arrive sealed to the member.
  app.put(ROUTES.role, async (req) => {
    const p = params(RoleParams, req.params);
    const caller = await ctx.caller(req, p.org);
    const myRole = await requireRole(ctx, caller, p.realm, 'manager');
    const body = parseWith(SetRoleRequest, req.body, 'request body');
    const target = await ctx.metadata.getUser(p.org, p.user);
    if (!target) throw new CofferError('not_found', 'unknown user');
    if (target.revokedAt !== null) throw new CofferError('forbidden', 'this user has been revoked');
    const current = await ctx.metadata.getRole(p.org, p.realm, p.user);
    if (myRole !== 'owner') {
      const touchesHigh = (r: Role | null) => r !== null && ROLE_RANK[r] >= ROLE_RANK.manager;
      if (touchesHigh(body.role) || touchesHigh(current)) throw new CofferError('forbidden', 'only an owner can grant or change manager and owner roles');
    }
    if (target.profile === 'outsider' && body.role !== null && ROLE_RANK[body.role] >= ROLE_RANK.manager) {
      throw new CofferError('forbidden', 'an outsider cannot be manager or owner');
    }
    if (body.role !== null && body.keys.length === 0) throw new CofferError('bad_request', 'granting a role needs the workspace keys sealed to the member');
    const cert = await roleCertificate(ctx, caller, body.certificate, { realmId: p.realm, userId: p.user, role: body.role });
    await ctx.metadata.setRole(p.org, p.realm, p.user, body.role, body.keys.map((k) => ({ keyIndex: k.keyIndex, sealedKey: fromB64(k.sealedKey) })), cert);
    ctx.publish(p.org, { type: 'role', realmId: p.realm, userId: p.user, role: body.role });
    return { realmId: p.realm, userId: p.user, role: body.role };
  });

  // Key rotation (after a revocation): an owner adds the next key, sealed to every current member.
  app.post(ROUTES.realmKeys, async (req, reply) => {
    const p = params(RealmParams, req.params);
    const caller = await ctx.caller(req, p.org);
    await requireRole(ctx, caller, p.realm, 'owner');
    const body = parseWith(RotateKeyRequest, req.body, 'request body');
    const members = new Set((await ctx.metadata.listMembers(p.org, p.realm)).map((m) => m.userId));
    const given = new Set(body.keys.map((k) => k.userId));
    if (given.size !== body.keys.length || given.size !== members.size || [...members].some((m) => !given.has(m))) {
      throw new CofferError('bad_request', 'the new key must be sealed to exactly the current members');
    }
    const keys = body.keys.map((k) => ({ userId: k.userId, sealedKey: fromB64(k.sealedKey) }));
    const cert = await keyCertificate(ctx, caller, body.certificate, p.realm, body.keyIndex);
    if (!(await ctx.metadata.addRealmKey(p.org, p.realm, body.keyIndex, keys, cert))) {
      throw new CofferError('conflict', 'another key was added meanwhile: reload and retry');
    }
    ctx.publish(p.org, { type: 'keys', realmId: p.realm, keyIndex: body.keyIndex });
    return reply.status(201).send({ realmId: p.realm, keyIndex: body.keyIndex });
  });

  app.get(ROUTES.members, async (req) => {
    const p = params(RealmParams, req.params);
    const caller = await ctx.caller(req, p.org);
    await requireRole(ctx, caller, p.realm, 'reader');
    return { members: await ctx.metadata.listMembers(p.org, p.realm) };
  });

  app.get(ROUTES.realms, async (req) => {
    const { org } = params(OrgParams, req.params);
    const caller = await ctx.caller(req, org);
    const realms = await ctx.metadata.listRealms(org, caller.userId);
    return {
      realms: realms.map((r) => ({
        realmId: r.realmId,
        role: r.role,
        keys: r.keys.map((k) => ({ keyIndex: k.keyIndex, sealedKey: b64(k.sealedKey) })),
        rotationNeeded: r.rotationNeeded,
        keysMissing: r.keysMissing,
      })),
    };
  });
}
