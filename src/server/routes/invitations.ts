import { randomBytes } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import { sha256 } from '../../crypto/index.js';
import { CofferError } from '../../errors.js';
import { parseWith } from '../../model/codec.js';
import { IdSchema, newId } from '../../model/ids.js';
import { ClaimerStepRequest, CreateInvitationRequest, GreeterStepRequest, OrgIdSchema, ROUTES } from '../../protocol/schemas.js';
import type { RouteContext } from '../app.js';
import type { InvitationRow, InvitationUpdate } from '../metadata/types.js';
import { b64, fromB64, OrgParams, params } from './params.js';

/** An invitation not completed within a week is refused as expired. */
export const INVITATION_LIFETIME_MS = 7 * 24 * 3600 * 1000;
const InvitationParams = z.strictObject({ org: OrgIdSchema, invitation: IdSchema });

function stateBody(r: InvitationRow) {
  const o = (b: Buffer | null) => (b ? b64(b) : null);
  return {
    invitationId: r.invitationId,
    type: r.type,
    handle: r.handle,
    status: r.status,
    createdAt: r.createdAt,
    claimerPublicKey: o(r.claimerPublicKey),
    claimerCommitment: o(r.claimerCommitment),
    claimerNonce: o(r.claimerNonce),
    claimerPayload: o(r.claimerPayload),
    greeterPublicKey: o(r.greeterPublicKey),
    greeterNonce: o(r.greeterNonce),
    greeterPayload: o(r.greeterPayload),
  };
}

function key32(text: string, what: string): Buffer {
  const b = fromB64(text);
  if (b.length !== 32) throw new CofferError('bad_request', `${what} must be 32 bytes`);
  return b;
}

/**
 * The server relays the greeter/claimer exchange and enforces its order (each field is set once,
 * in sequence); it never sees a key in clear: the payloads are sealed with the exchange's shared key,
 * and a server that swaps public keys is caught by the short authentication strings the people compare.
 */
export function registerInvitationRoutes(app: FastifyInstance, ctx: RouteContext): void {
  const usable = (r: InvitationRow | null): InvitationRow => {
    if (!r) throw new CofferError('not_found', 'unknown invitation');
    if (r.status === 'cancelled') throw new CofferError('forbidden', 'this invitation was cancelled');
    if (r.status === 'done') throw new CofferError('forbidden', 'this invitation was already used');
    if (ctx.now() - r.createdAt > INVITATION_LIFETIME_MS) throw new CofferError('forbidden', 'this invitation has expired');
    return r;
  };

  const apply = async (org: string, r: InvitationRow, update: InvitationUpdate, unset: Array<keyof InvitationUpdate>, statuses: InvitationRow['status'][]) => {
    if (!(await ctx.metadata.updateInvitation(org, r.invitationId, update, { unset, statuses }))) {
      throw new CofferError('conflict', 'this step of the invitation was already done (or done out of order)');
    }
    const updated = await ctx.metadata.getInvitation(org, r.invitationId);
    if (!updated) throw new CofferError('not_found', 'unknown invitation');
    ctx.publish(org, { type: 'invitation', invitationId: updated.invitationId, status: updated.status, greeterUserId: updated.greeterUserId });
    return stateBody(updated);
  };

  app.post(ROUTES.invitations, async (req, reply) => {
    const { org } = params(OrgParams, req.params);
    const caller = await ctx.caller(req, org);
    const body = parseWith(CreateInvitationRequest, req.body, 'request body');
    if (body.type === 'user') {
      const me = await ctx.metadata.getUser(org, caller.userId);
      if (me?.profile !== 'admin') throw new CofferError('forbidden', 'only an admin can invite users');
      if (!body.handle) throw new CofferError('bad_request', 'a user invitation needs the handle of the person invited');
    }
    const token = randomBytes(24).toString('base64url');
    const row: InvitationRow = {
      invitationId: newId(),
      tokenHash: sha256(Buffer.from(token, 'utf8')),
      type: body.type,
      handle: body.handle ?? null,
      greeterUserId: caller.userId,
      greeterDeviceId: caller.deviceId,
      status: 'pending',
      createdAt: ctx.now(),
      claimerPublicKey: null,
      claimerCommitment: null,
      claimerNonce: null,
      claimerPayload: null,
      greeterPublicKey: null,
      greeterNonce: null,
      greeterPayload: null,
    };
    await ctx.metadata.createInvitation(org, row);
    return reply.status(201).send({ invitationId: row.invitationId, token });
  });

  app.get(ROUTES.invitations, async (req) => {
    const { org } = params(OrgParams, req.params);
    const caller = await ctx.caller(req, org);
    return { invitations: (await ctx.metadata.listInvitations(org, caller.userId)).map(stateBody) };
  });

  const mine = async (req: Parameters<RouteContext['caller']>[0]) => {
    const p = params(InvitationParams, req.params);
    const caller = await ctx.caller(req, p.org);
    const r = await ctx.metadata.getInvitation(p.org, p.invitation);
    if (!r || r.greeterUserId !== caller.userId) throw new CofferError('not_found', 'unknown invitation');
    return { org: p.org, r };
  };

  app.get(ROUTES.invitation, async (req) => stateBody((await mine(req)).r));

  app.delete(ROUTES.invitation, async (req) => {
    const { org, r } = await mine(req);
    usable(r);
    return apply(org, r, { status: 'cancelled' }, [], ['pending', 'claiming']);
  });

  app.post(ROUTES.greeterStep, async (req) => {
    const { org, r } = await mine(req);
    usable(r);
    const body = parseWith(GreeterStepRequest, req.body, 'request body');
    if (body.step === 'keys') {
      if (!r.claimerCommitment) throw new CofferError('conflict', 'the claimer has not started yet');
      return apply(org, r, { greeterPublicKey: key32(body.publicKey, 'publicKey'), greeterNonce: key32(body.nonce, 'nonce') }, ['greeterPublicKey'], ['claiming']);
    }
    if (!r.claimerPayload) throw new CofferError('conflict', 'the claimer has not sent its keys yet');
    return apply(org, r, { greeterPayload: fromB64(body.payload), status: 'done' }, ['greeterPayload'], ['claiming']);
  });

  // Anonymous: the token (never logged: it travels in the body) is the claimer's only credential.
  app.post(ROUTES.claim, async (req) => {
    const { org } = params(OrgParams, req.params);
    const body = parseWith(ClaimerStepRequest, req.body, 'request body');
    const found = await ctx.metadata.getInvitationByToken(org, sha256(Buffer.from(body.token, 'utf8')));
    if (body.step === 'poll') {
      // The claimer may read the greeter's last step even once the invitation is done.
      if (found?.status === 'done' && found.greeterPayload) return stateBody(found);
      return stateBody(usable(found));
    }
    const r = usable(found);
    switch (body.step) {
      case 'start':
        return apply(org, r, { claimerPublicKey: key32(body.publicKey, 'publicKey'), claimerCommitment: key32(body.commitment, 'commitment'), status: 'claiming' }, ['claimerPublicKey'], ['pending']);
      case 'reveal':
        if (!r.greeterNonce) throw new CofferError('conflict', 'the greeter has not answered yet');
        return apply(org, r, { claimerNonce: key32(body.nonce, 'nonce') }, ['claimerNonce'], ['claiming']);
      case 'payload':
        if (!r.claimerNonce) throw new CofferError('conflict', 'reveal the nonce first');
        return apply(org, r, { claimerPayload: fromB64(body.payload) }, ['claimerPayload'], ['claiming']);
    }
  });
}
