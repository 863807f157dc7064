import { Readable } from 'node:stream';
import type { FastifyBaseLogger, FastifyInstance, FastifyReply } from 'fastify';
import { sha256 } from '../../crypto/index.js';
import { CofferError } from '../../errors.js';
import { parseWith } from '../../model/codec.js';
import { errorBody } from '../../protocol/errors.js';
import { blockReadAnswerParts, decodeBlockBatch, type BlockReadItem } from '../../protocol/block-batch.js';
import { BlockListQuery, MAX_BLOCK_READ_BYTES, ReadBlocksRequest, ReleaseBlocksRequest, ROUTES } from '../../protocol/schemas.js';
import type { RouteContext } from '../app.js';
import { requireRole } from '../auth.js';
import { BlockBufferPool } from '../blocks/buffer-pool.js';
import { BlockParams, params, RealmParams } from './params.js';

export function registerBlockRoutes(app: FastifyInstance, ctx: RouteContext): void {
  // The metadata row arbitrates, across every server instance sharing the stores: the request that
  // inserts it owns the id and writes the bytes; a request with other bytes under a recorded id is
  // refused before writing anything, so the stored bytes always match the recorded digest (writing
  // first and recording second let a loser overwrite the winner's bytes). Identical bytes are written
  // again, which is harmless and lets a retry repair an upload that died between record and write.
  // Until the owner's write lands a GET answers 503 (retryable); no manifest references the block yet.
  // Within one instance, requests on one id also run one at a time.
  const pending = new Map<string, Promise<unknown>>();
  const oneAtATime = async <T>(key: string, fn: () => Promise<T>): Promise<T> => {
    const run = (pending.get(key) ?? Promise.resolve()).then(fn, fn);
    const tail = run.catch(() => undefined);
    pending.set(key, tail);
    try {
      return await run;
    } finally {
      if (pending.get(key) === tail) pending.delete(key);
    }
  };

  // Idempotent: re-sending identical bytes succeeds; different bytes under an existing id are refused.
  const storeBlock = (org: string, realm: string, blockId: string, data: Buffer, author: string, log: FastifyBaseLogger, known?: Buffer) =>
    oneAtATime(`${org}/${blockId}`, async () => {
      const digest = known ?? sha256(data);
      const inserted = await ctx.metadata.insertBlockMeta(org, blockId, { realmId: realm, size: data.length, digest }, author, ctx.now());
      if (!inserted) {
        const existing = await ctx.metadata.getBlockMeta(org, blockId);
        if (!existing || existing.realmId !== realm || !existing.digest.equals(digest)) throw new CofferError('exists', 'a different block already has this id');
        // The same bytes again: a block released for garbage collection is live again (someone still
        // has it), unless the GC already started deleting it — then retry once it is gone.
        const state = await ctx.metadata.reviveBlock(org, blockId);
        if (state === 'deleting' || state === 'absent') throw new CofferError('unavailable', 'this block is being garbage-collected: retry shortly');
        if (state === 'revived') log.info({ blockId }, 'released block uploaded again: kept');
      }
      await ctx.blocks.put(org, blockId, data);
      return { blockId, created: inserted };
    });

  app.put(ROUTES.block, async (req, reply) => {
    const p = params(BlockParams, req.params);
    const caller = await ctx.caller(req, p.org);
    await requireRole(ctx, caller, p.realm, 'contributor');
    const data = req.body;
    if (!Buffer.isBuffer(data) || data.length === 0) throw new CofferError('bad_request', 'block body must be non-empty application/octet-stream');
    // The body is the block: its digest was computed when the signature was checked.
    const known = req.rawBody === data ? (req.rawBodyDigest ?? undefined) : undefined;
    const out = await storeBlock(p.org, p.realm, p.block, data, caller.deviceId, req.log, known);
    return reply.status(out.created ? 201 : 200).send(out);
  });

  // Many small blocks in one request (see BlockBatchIndex): stored concurrently, so their metadata
  // rows share the store's durable flush; each is answered on its own.
  app.post(ROUTES.writeBlocks, async (req) => {
    const p = params(RealmParams, req.params);
    const caller = await ctx.caller(req, p.org);
    await requireRole(ctx, caller, p.realm, 'contributor');
    const blocks = decodeBlockBatch(req.body);
    const results = await Promise.all(
      blocks.map(async (b) => {
        const out = await storeBlock(p.org, p.realm, b.blockId, b.data, caller.deviceId, req.log).catch(refusal);
        return out instanceof CofferError ? { blockId: b.blockId, error: errorBody(out) } : out;
      }),
    );
    return { results };
  });

  // What a single GET answers and a batched read answers per block: the recorded size, or the error.
  const blockMeta = async (org: string, realm: string, blockId: string) => {
    const meta = await ctx.metadata.getBlockMeta(org, blockId);
    if (!meta || meta.realmId !== realm) throw new CofferError('not_found', 'no such block in this workspace');
    return meta;
  };
  // Blocks are read into buffers used again once their answer is sent ('finish': handed to the
  // kernel); an answer cut short leaves its buffers to the GC.
  const buffers = new BlockBufferPool();
  const blockBytes = async (org: string, blockId: string, lent: Buffer[]) => {
    const alloc = (size: number) => {
      const buf = buffers.take(size);
      lent.push(buf);
      return buf;
    };
    const data = ctx.blocks.getInto ? await ctx.blocks.getInto(org, blockId, alloc) : await ctx.blocks.get(org, blockId);
    if (!data) throw new CofferError('unavailable', 'block is recorded but missing from the block store');
    return data;
  };
  const giveBackWhenSent = (reply: FastifyReply, lent: readonly Buffer[]) => {
    if (lent.length > 0) reply.raw.once('finish', () => lent.forEach((buf) => buffers.giveBack(buf)));
  };

  app.get(ROUTES.block, async (req, reply) => {
    const p = params(BlockParams, req.params);
    const caller = await ctx.caller(req, p.org);
    await requireRole(ctx, caller, p.realm, 'reader');
    await blockMeta(p.org, p.realm, p.block);
    const lent: Buffer[] = [];
    const data = await blockBytes(p.org, p.block, lent);
    giveBackWhenSent(reply, lent);
    return reply.type('application/octet-stream').send(data);
  });

  // Many blocks in one answer (read-ahead): each answered as by its own GET. Memory per request is
  // bounded by MAX_BLOCK_READ_BYTES of recorded sizes; blocks past it are answered `too_large`.
  app.post(ROUTES.readBlocks, async (req, reply) => {
    const p = params(RealmParams, req.params);
    const caller = await ctx.caller(req, p.org);
    await requireRole(ctx, caller, p.realm, 'reader');
    const { blockIds } = parseWith(ReadBlocksRequest, req.body, 'request body');
    const metas = await Promise.all(blockIds.map((id) => blockMeta(p.org, p.realm, id).catch(refusal)));
    let budget = MAX_BLOCK_READ_BYTES;
    const lent: Buffer[] = [];
    const items = await Promise.all(
      blockIds.map(async (blockId, i): Promise<BlockReadItem> => {
        const meta = metas[i]!;
        if (meta instanceof CofferError) return { blockId, error: errorBody(meta) };
        if (meta.size > budget) return { blockId, error: errorBody(new CofferError('too_large', 'past the byte limit of one batched read: ask for this block again')) };
        budget -= meta.size;
        const data = await blockBytes(p.org, blockId, lent).catch(refusal);
        return data instanceof CofferError ? { blockId, error: errorBody(data) } : { blockId, data };
      }),
    );
    const parts = blockReadAnswerParts(items);
    giveBackWhenSent(reply, lent);
    return reply
      .type('application/octet-stream')
      .header('content-length', parts.reduce((n, b) => n + b.length, 0))
      .send(Readable.from(parts));
  });
}

/** A refusal (CofferError) as a value, for answers made per item; anything else still fails the request. */
function refusal(err: unknown): CofferError {
  if (err instanceof CofferError) return err;
  throw err;
}

/**
 * Garbage-collection routes: only an owner or a manager of the realm lists its blocks and releases
 * them; a release names blocks of this realm only (all or nothing) and deletes nothing by itself.
 */
export function registerBlockGcRoutes(app: FastifyInstance, ctx: RouteContext): void {
  app.get(ROUTES.blocks, async (req) => {
    const p = params(RealmParams, req.params);
    const caller = await ctx.caller(req, p.org);
    await requireRole(ctx, caller, p.realm, 'manager');
    const q = parseWith(BlockListQuery, req.query, 'query');
    const rows = await ctx.metadata.listBlocks(p.org, p.realm, q.after ?? '', q.limit);
    return { blocks: rows, next: rows.length === q.limit ? rows[rows.length - 1]!.blockId : null };
  });

  app.post(ROUTES.releaseBlocks, async (req) => {
    const p = params(RealmParams, req.params);
    const caller = await ctx.caller(req, p.org);
    await requireRole(ctx, caller, p.realm, 'manager');
    const body = parseWith(ReleaseBlocksRequest, req.body, 'request body');
    const result = await ctx.metadata.releaseBlocks(p.org, p.realm, body.blockIds, caller.deviceId, ctx.now());
    if (!result.ok) {
      // Unknown and other-realm ids answer alike: no oracle on other realms' block ids.
      throw new CofferError('not_found', `${result.unknown.length} of the ${body.blockIds.length} blocks are not blocks of this workspace: nothing released`, {
        unknown: result.unknown.slice(0, 100),
      });
    }
    req.log.info({ realmId: p.realm, released: result.released, alreadyReleased: result.alreadyReleased, deviceId: caller.deviceId }, 'blocks released for garbage collection');
    return { released: result.released, alreadyReleased: result.alreadyReleased };
  });
}
