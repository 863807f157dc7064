import type { FastifyInstance, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { CofferError } from '../../errors.js';
import { parseWith } from '../../model/codec.js';
import { IdSchema } from '../../model/ids.js';
import { CertificateRequest, MemberKeysRequest, OrgIdSchema, ROLE_RANK, ROUTES, SetGroupRoleRequest, type Role } from '../../protocol/schemas.js';
import type { RouteContext } from '../app.js';
import { requireRole } from '../auth.js';
import type { Caller } from '../context.js';
import { callerCertificate } from './certificates.js';
import { fromB64, OrgParams, params, RealmParams } from './params.js';

const GroupParams = z.strictObject({ org: OrgIdSchema, group: IdSchema });
const GroupRoleParams = z.strictObject({ org: OrgIdSchema, realm: IdSchema, group: IdSchema });

async function requireAdmin(ctx: RouteContext, req: FastifyRequest, org: string): Promise<Caller> {
  const caller = await ctx.caller(req, org);
  const me = await ctx.metadata.getUser(org, caller.userId);
  if (me?.profile !== 'admin') throw new CofferError('forbidden', 'only an admin can manage groups');
  return caller;
}

async function announce(ctx: RouteContext, org: string): Promise<void> {
  const last = (await ctx.metadata.listCertificates(org, 0)).at(-1);
  if (last) ctx.publish(org, { type: 'certificate', index: last.index });
}

/** Groups (as in Psono): admins create them and manage members; owners and managers share workspaces with them. */
export function registerGroupRoutes(app: FastifyInstance, ctx: RouteContext): void {
  app.post(ROUTES.groups, async (req, reply) => {
    const { org } = params(OrgParams, req.params);
    const caller = await requireAdmin(ctx, req, org);
    const body = parseWith(CertificateRequest, req.body, 'request body');
    const c = await callerCertificate(ctx, caller, body.certificate);
    if (c.cert.type !== 'group') throw new CofferError('bad_request', 'expected a group certificate');
    if (!(await ctx.metadata.createGroup(org, c.cert.groupId, c))) throw new CofferError('exists', 'a group with this id already exists');
    await announce(ctx, org);
    return reply.status(201).send({ groupId: c.cert.groupId });
  });

  app.post(ROUTES.groupMembers, async (req) => {
    const p = params(GroupParams, req.params);
    const caller = await requireAdmin(ctx, req, p.org);
    const body = parseWith(CertificateRequest, req.body, 'request body');
    const c = await callerCertificate(ctx, caller, body.certificate);
    if (c.cert.type !== 'group_member' || c.cert.groupId !== p.group) throw new CofferError('bad_request', 'expected a membership certificate for this group');
    if (!(await ctx.metadata.groupExists(p.org, p.group))) throw new CofferError('not_found', 'unknown group');
    const user = await ctx.metadata.getUser(p.org, c.cert.userId);
    if (!user) throw new CofferError('not_found', 'unknown user');
    if (c.cert.member && user.revokedAt !== null) throw new CofferError('forbidden', 'this user has been revoked');
    await ctx.metadata.setGroupMember(p.org, p.group, c.cert.userId, c.cert.member, c);
    await announce(ctx, p.org);
    return { groupId: p.group, userId: c.cert.userId, member: c.cert.member };
  });

  app.put(ROUTES.groupRole, async (req) => {
    const p = params(GroupRoleParams, req.params);
    const caller = await ctx.caller(req, p.org);
    const myRole = await requireRole(ctx, caller, p.realm, 'manager');
    const body = parseWith(SetGroupRoleRequest, req.body, 'request body');
    const c = await callerCertificate(ctx, caller, body.certificate);
    if (c.cert.type !== 'realm_group_role' || c.cert.realmId !== p.realm || c.cert.groupId !== p.group || c.cert.role !== body.role) {
      throw new CofferError('bad_request', 'the certificate does not state this change');
    }
    if (!(await ctx.metadata.groupExists(p.org, p.group))) throw new CofferError('not_found', 'unknown group');
    const current = await ctx.metadata.getGroupRole(p.org, p.realm, p.group);
    const high = (r: Role | null) => r !== null && ROLE_RANK[r] >= ROLE_RANK.manager;
    if (myRole !== 'owner' && (high(body.role) || high(current))) throw new CofferError('forbidden', 'only an owner can grant or change manager and owner roles');
    const keys = body.keys.map((k) => ({ userId: k.userId, keyIndex: k.keyIndex, sealedKey: fromB64(k.sealedKey) }));
    await ctx.metadata.setGroupRole(p.org, p.realm, p.group, body.role, keys, c);
    await announce(ctx, p.org);
    return { realmId: p.realm, groupId: p.group, role: body.role };
  });

  // After a group grew: an owner or manager (who holds the keys) seals them to the new members.
  app.post(ROUTES.memberKeys, async (req) => {
    const p = params(RealmParams, req.params);
    const caller = await ctx.caller(req, p.org);
    await requireRole(ctx, caller, p.realm, 'manager');
    const body = parseWith(MemberKeysRequest, req.body, 'request body');
    for (const k of body.keys) {
      if ((await ctx.metadata.getRole(p.org, p.realm, k.userId)) === null) throw new CofferError('bad_request', `user ${k.userId} is not a member of this workspace`);
    }
    await ctx.metadata.addMemberKeys(p.org, p.realm, body.keys.map((k) => ({ userId: k.userId, keyIndex: k.keyIndex, sealedKey: fromB64(k.sealedKey) })));
    ctx.publish(p.org, { type: 'keys', realmId: p.realm, keyIndex: Math.max(...body.keys.map((k) => k.keyIndex)) });
    return { realmId: p.realm, added: body.keys.length };
  });
}
