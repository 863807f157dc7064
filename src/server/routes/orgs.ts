import { randomBytes } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import { sha256, timingSafeEqualBytes } from '../../crypto/index.js';
import { CofferError } from '../../errors.js';
import { verifyCertificate } from '../../model/certificates.js';
import { parseWith } from '../../model/codec.js';
import { CLOCK_WINDOW_MS } from '../../protocol/auth.js';
import { BootstrapRequest, CertificatesQuery, CreateDeviceRequest, CreateOrgRequest, CreateUserRequest, RevokeUserRequest, ROUTES } from '../../protocol/schemas.js';
import type { RouteContext } from '../app.js';
import { b64, fromB64, OrgParams, params, UserParams } from './params.js';

export function registerOrgRoutes(app: FastifyInstance, ctx: RouteContext): void {
  app.get(ROUTES.health, async () => ({ status: 'ok' }));

  // Anonymous but gated by the server administrator's token.
  app.post(ROUTES.orgs, async (req, reply) => {
    const header = req.headers['x-coffer-admin-token'];
    const given = Buffer.from(typeof header === 'string' ? header : '', 'utf8');
    if (!timingSafeEqualBytes(sha256(given), sha256(Buffer.from(ctx.adminToken, 'utf8'))) || given.length === 0) {
      throw new CofferError('unauthorized', 'missing or wrong server administration token (X-Coffer-Admin-Token)');
    }
    const body = parseWith(CreateOrgRequest, req.body, 'request body');
    const token = randomBytes(24).toString('hex');
    if (!(await ctx.metadata.createOrganization(body.orgId, sha256(Buffer.from(token, 'utf8')), ctx.now()))) {
      throw new CofferError('exists', `organization ${body.orgId} already exists`);
    }
    return reply.status(201).send({ orgId: body.orgId, bootstrapToken: token });
  });

  // Anonymous: the bootstrap token proves the right; the root key signs the first user and device.
  app.post(ROUTES.bootstrap, async (req, reply) => {
    const { org } = params(OrgParams, req.params);
    const body = parseWith(BootstrapRequest, req.body, 'request body');
    const row = await ctx.metadata.getOrganization(org);
    if (!row) throw new CofferError('not_found', `unknown organization ${org}`);
    if (row.bootstrappedAt !== null) throw new CofferError('exists', 'organization already bootstrapped');
    if (!timingSafeEqualBytes(sha256(Buffer.from(body.token, 'utf8')), row.bootstrapTokenHash)) {
      throw new CofferError('forbidden', 'wrong bootstrap token');
    }
    const rootKey = fromB64(body.rootVerifyKey);
    if (rootKey.length !== 32) throw new CofferError('bad_request', 'rootVerifyKey must be 32 bytes');
    const byRoot = (author: string) => (author === 'root' ? rootKey : undefined);
    const userBlob = fromB64(body.userCertificate);
    const deviceBlob = fromB64(body.deviceCertificate);
    const user = badRequestOnIntegrity(() => verifyCertificate(userBlob, byRoot));
    const device = badRequestOnIntegrity(() => verifyCertificate(deviceBlob, byRoot));
    if (user.type !== 'user' || device.type !== 'device') throw new CofferError('bad_request', 'expected a user then a device certificate');
    if (user.profile !== 'admin') throw new CofferError('bad_request', 'the first user must be an admin');
    if (device.userId !== user.userId) throw new CofferError('bad_request', 'device certificate is for another user');
    const now = ctx.now();
    checkFresh(now, [user.timestamp, device.timestamp]);
    const ok = await ctx.metadata.bootstrapOrganization(
      org,
      rootKey,
      { userId: user.userId, publicKey: Buffer.from(user.publicKey), profile: user.profile, certificate: userBlob, timestamp: user.timestamp },
      { deviceId: device.deviceId, userId: device.userId, verifyKey: Buffer.from(device.verifyKey), certificate: deviceBlob, timestamp: device.timestamp },
      now,
    );
    if (!ok) throw new CofferError('exists', 'organization already bootstrapped');
    return reply.status(201).send({ orgId: org });
  });

  // An admin device adds a user with their first device; both certificates are signed by the caller.
  app.post(ROUTES.users, async (req, reply) => {
    const { org } = params(OrgParams, req.params);
    const caller = await ctx.caller(req, org);
    const me = await ctx.metadata.getUser(org, caller.userId);
    if (me?.profile !== 'admin') throw new CofferError('forbidden', 'only an admin can add users');
    const body = parseWith(CreateUserRequest, req.body, 'request body');
    const device = await ctx.metadata.getDevice(org, caller.deviceId);
    const byCaller = (author: string) => (author === caller.deviceId ? device?.verifyKey : undefined);
    const userBlob = fromB64(body.userCertificate);
    const deviceBlob = fromB64(body.deviceCertificate);
    const user = badRequestOnIntegrity(() => verifyCertificate(userBlob, byCaller));
    const dev = badRequestOnIntegrity(() => verifyCertificate(deviceBlob, byCaller));
    if (user.type !== 'user' || dev.type !== 'device') throw new CofferError('bad_request', 'expected a user then a device certificate');
    if (dev.userId !== user.userId) throw new CofferError('bad_request', 'device certificate is for another user');
    checkFresh(ctx.now(), [user.timestamp, dev.timestamp]);
    const ok = await ctx.metadata.createUser(
      org,
      { userId: user.userId, publicKey: Buffer.from(user.publicKey), profile: user.profile, certificate: userBlob, timestamp: user.timestamp },
      { deviceId: dev.deviceId, userId: dev.userId, verifyKey: Buffer.from(dev.verifyKey), certificate: deviceBlob, timestamp: dev.timestamp },
    );
    if (!ok) throw new CofferError('exists', 'a user or device with this id already exists');
    await announceCertificates(ctx, org);
    return reply.status(201).send({ userId: user.userId, deviceId: dev.deviceId });
  });

  // A new device of an existing user, certified by one of that user's devices (or by an admin).
  app.post(ROUTES.devices, async (req, reply) => {
    const { org } = params(OrgParams, req.params);
    const caller = await ctx.caller(req, org);
    const body = parseWith(CreateDeviceRequest, req.body, 'request body');
    const author = await ctx.metadata.getDevice(org, caller.deviceId);
    const blob = fromB64(body.deviceCertificate);
    const dev = badRequestOnIntegrity(() => verifyCertificate(blob, (a) => (a === caller.deviceId ? author?.verifyKey : undefined)));
    if (dev.type !== 'device') throw new CofferError('bad_request', 'expected a device certificate');
    const me = await ctx.metadata.getUser(org, caller.userId);
    if (dev.userId !== caller.userId && me?.profile !== 'admin') throw new CofferError('forbidden', 'only your own devices (or an admin) can be certified');
    const owner = await ctx.metadata.getUser(org, dev.userId);
    if (!owner || owner.revokedAt !== null) throw new CofferError('forbidden', 'unknown or revoked user');
    checkFresh(ctx.now(), [dev.timestamp]);
    const ok = await ctx.metadata.createDevice(org, { deviceId: dev.deviceId, userId: dev.userId, verifyKey: Buffer.from(dev.verifyKey), certificate: blob, timestamp: dev.timestamp });
    if (!ok) throw new CofferError('exists', 'a device with this id already exists');
    await announceCertificates(ctx, org);
    return reply.status(201).send({ deviceId: dev.deviceId });
  });

  // An admin revokes a user: at once, every device of that user is refused (403).
  app.post(ROUTES.revoke, async (req, reply) => {
    const p = params(UserParams, req.params);
    const caller = await ctx.caller(req, p.org);
    const me = await ctx.metadata.getUser(p.org, caller.userId);
    if (me?.profile !== 'admin') throw new CofferError('forbidden', 'only an admin can revoke users');
    const body = parseWith(RevokeUserRequest, req.body, 'request body');
    const author = await ctx.metadata.getDevice(p.org, caller.deviceId);
    const blob = fromB64(body.certificate);
    const cert = badRequestOnIntegrity(() => verifyCertificate(blob, (a) => (a === caller.deviceId ? author?.verifyKey : undefined)));
    if (cert.type !== 'revoked' || cert.userId !== p.user) throw new CofferError('bad_request', 'expected a revocation certificate for this user');
    if (p.user === caller.userId) throw new CofferError('bad_request', 'you cannot revoke yourself');
    checkFresh(ctx.now(), [cert.timestamp]);
    const target = await ctx.metadata.getUser(p.org, p.user);
    if (!target) throw new CofferError('not_found', 'unknown user');
    if (!(await ctx.metadata.revokeUser(p.org, p.user, blob, cert.timestamp, ctx.now()))) throw new CofferError('exists', 'this user is already revoked');
    await announceCertificates(ctx, p.org);
    return reply.status(201).send({ userId: p.user, revoked: true });
  });

  app.get(ROUTES.certificates, async (req) => {
    const { org } = params(OrgParams, req.params);
    await ctx.caller(req, org);
    const q = parseWith(CertificatesQuery, req.query, 'query');
    const certs = await ctx.metadata.listCertificates(org, q.since);
    return { certificates: certs.map((c) => ({ index: c.index, blob: b64(c.blob) })) };
  });
}

async function announceCertificates(ctx: RouteContext, org: string): Promise<void> {
  const all = await ctx.metadata.listCertificates(org, 0);
  const last = all.at(-1);
  if (last) ctx.publish(org, { type: 'certificate', index: last.index });
}

function checkFresh(now: number, timestamps: number[]): void {
  for (const ts of timestamps) {
    if (Math.abs(now - ts) > CLOCK_WINDOW_MS) throw new CofferError('bad_request', 'certificate timestamp outside the clock window');
  }
}

/** A certificate that does not verify is bad input from the caller, not a server integrity failure. */
function badRequestOnIntegrity<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    if (err instanceof CofferError) throw new CofferError('bad_request', err.message);
    throw err;
  }
}
