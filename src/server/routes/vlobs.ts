import type { FastifyInstance } from 'fastify';
import { CofferError } from '../../errors.js';
import { parseWith } from '../../model/codec.js';
import { errorBody } from '../../protocol/errors.js';
import { ChangesQuery, CreateVlobRequest, ReadVlobsRequest, ROUTES, UpdateVlobRequest, VlobQuery, WriteVlobsRequest } from '../../protocol/schemas.js';
import type { RouteContext } from '../app.js';
import { requireRole } from '../auth.js';
import type { VlobRow, VlobWriteResult } from '../metadata/types.js';
import { b64, fromB64, params, RealmParams, VlobParams } from './params.js';

const MAX_VLOB_BYTES = 12 * 1024 * 1024;

function vlobBody(row: VlobRow) {
  return {
    vlobId: row.vlobId,
    version: row.version,
    keyIndex: row.keyIndex,
    author: row.author,
    timestamp: row.timestamp,
    createdAt: row.createdAt,
    blob: b64(row.blob),
  };
}

function decodeBlob(text: string): Buffer {
  const blob = fromB64(text);
  if (blob.length === 0) throw new CofferError('bad_request', 'blob must not be empty');
  if (blob.length > MAX_VLOB_BYTES) throw new CofferError('too_large', 'vlob too large');
  return blob;
}

function conflictOrCheckpoint(result: VlobWriteResult, vlobId: string, version: number) {
  if (!result.ok) {
    throw new CofferError('conflict', `version conflict: stored version is ${result.currentVersion ?? 'none'}`, {
      currentVersion: result.currentVersion,
    });
  }
  return { vlobId, version, checkpoint: result.checkpoint };
}

export function registerVlobRoutes(app: FastifyInstance, ctx: RouteContext): void {
  app.post(ROUTES.vlobs, async (req, reply) => {
    const p = params(RealmParams, req.params);
    const caller = await ctx.caller(req, p.org);
    await requireRole(ctx, caller, p.realm, 'contributor');
    const body = parseWith(CreateVlobRequest, req.body, 'request body');
    const result = await ctx.metadata.createVlob({
      orgId: p.org, realmId: p.realm, vlobId: body.vlobId, version: 1, keyIndex: body.keyIndex,
      author: caller.deviceId, timestamp: body.timestamp, createdAt: ctx.now(), blob: decodeBlob(body.blob),
    });
    const out = conflictOrCheckpoint(result, body.vlobId, 1);
    ctx.publish(p.org, { type: 'vlob', realmId: p.realm, vlobId: body.vlobId, version: 1, checkpoint: out.checkpoint, authorDeviceId: caller.deviceId });
    return reply.status(201).send(out);
  });

  app.put(ROUTES.vlob, async (req) => {
    const p = params(VlobParams, req.params);
    const caller = await ctx.caller(req, p.org);
    await requireRole(ctx, caller, p.realm, 'contributor');
    const body = parseWith(UpdateVlobRequest, req.body, 'request body');
    const write = {
      orgId: p.org, realmId: p.realm, vlobId: p.vlob, version: body.version, keyIndex: body.keyIndex,
      author: caller.deviceId, timestamp: body.timestamp, createdAt: ctx.now(), blob: decodeBlob(body.blob),
    };
    const result = body.version === 1 ? await ctx.metadata.createVlob(write) : await ctx.metadata.updateVlob(write);
    const out = conflictOrCheckpoint(result, p.vlob, body.version);
    ctx.publish(p.org, { type: 'vlob', realmId: p.realm, vlobId: p.vlob, version: body.version, checkpoint: out.checkpoint, authorDeviceId: caller.deviceId });
    return out;
  });

  // Many writes in one request: a sync round uploads one manifest per changed file, and a request
  // each cost both sides far more than the write itself. The writes run concurrently (ids are
  // distinct), so they share the store's durable flush; each is answered on its own.
  app.post(ROUTES.writeVlobs, async (req) => {
    const p = params(RealmParams, req.params);
    const caller = await ctx.caller(req, p.org);
    await requireRole(ctx, caller, p.realm, 'contributor');
    const body = parseWith(WriteVlobsRequest, req.body, 'request body');
    const createdAt = ctx.now();
    const results = await Promise.all(
      body.writes.map(async (w) => {
        try {
          const write = {
            orgId: p.org, realmId: p.realm, vlobId: w.vlobId, version: w.version, keyIndex: w.keyIndex,
            author: caller.deviceId, timestamp: w.timestamp, createdAt, blob: decodeBlob(w.blob),
          };
          const result = w.version === 1 ? await ctx.metadata.createVlob(write) : await ctx.metadata.updateVlob(write);
          const out = conflictOrCheckpoint(result, w.vlobId, w.version);
          ctx.publish(p.org, { type: 'vlob', realmId: p.realm, vlobId: w.vlobId, version: w.version, checkpoint: out.checkpoint, authorDeviceId: caller.deviceId });
          return out;
        } catch (err) {
          if (err instanceof CofferError) return { vlobId: w.vlobId, error: errorBody(err) };
          throw err;
        }
      }),
    );
    return { results };
  });

  app.get(ROUTES.vlob, async (req) => {
    const p = params(VlobParams, req.params);
    const caller = await ctx.caller(req, p.org);
    await requireRole(ctx, caller, p.realm, 'reader');
    const q = parseWith(VlobQuery, req.query, 'query');
    const row = await ctx.metadata.readVlob(p.org, p.realm, p.vlob, { ...(q.version !== undefined && { version: q.version }), ...(q.at !== undefined && { at: q.at }) });
    if (!row) throw new CofferError('not_found', 'no such vlob (or version) in this workspace');
    return vlobBody(row);
  });

  // Many vlobs in one request: listing a big folder must not cost one round trip per entry.
  app.post(ROUTES.readVlobs, async (req) => {
    const p = params(RealmParams, req.params);
    const caller = await ctx.caller(req, p.org);
    await requireRole(ctx, caller, p.realm, 'reader');
    const body = parseWith(ReadVlobsRequest, req.body, 'request body');
    const rows = await ctx.metadata.readVlobs(p.org, p.realm, body.vlobIds, body.at);
    const found = new Set(rows.map((r) => r.vlobId));
    return { vlobs: rows.map(vlobBody), missing: body.vlobIds.filter((id) => !found.has(id)) };
  });

  app.get(ROUTES.changes, async (req) => {
    const p = params(RealmParams, req.params);
    const caller = await ctx.caller(req, p.org);
    await requireRole(ctx, caller, p.realm, 'reader');
    const q = parseWith(ChangesQuery, req.query, 'query');
    return ctx.metadata.listChanges(p.org, p.realm, q.since);
  });
}
