import type { z } from 'zod';
import { CofferError, IntegrityError } from '../errors.js';
import { parseWith } from '../model/codec.js';
import type { ErrorBody } from './errors.js';
import { BlockBatchIndex, BlockReadIndex } from './schemas.js';

/**
 * Blocks travel in one binary frame format both ways: a 4-byte big-endian length, that many bytes of
 * JSON index, then the blocks back to back in index order. Binary, so that blocks travel as they are
 * (no base64), and the device signature of a batched write covers it all.
 */
function frame(index: unknown, parts: ReadonlyArray<Uint8Array>): Buffer {
  const json = Buffer.from(JSON.stringify(index), 'utf8');
  const head = Buffer.alloc(4);
  head.writeUInt32BE(json.length);
  return Buffer.concat([head, json, ...parts]);
}

/**
 * The index and the parts (views into `body`) of a frame. `sizes` gives each part's length from the
 * index; anything malformed is `fail(message)`.
 */
function unframe<T>(body: unknown, schema: z.ZodType<T>, what: string, sizes: (index: T) => number[], fail: (message: string) => CofferError): { index: T; parts: Buffer[] } {
  if (!Buffer.isBuffer(body) || body.length < 4) throw fail(`${what} must be binary: index length, index, blocks`);
  const indexLength = body.readUInt32BE(0);
  if (indexLength > body.length - 4) throw fail(`${what}: index is longer than the body`);
  let json: unknown;
  try {
    json = JSON.parse(body.subarray(4, 4 + indexLength).toString('utf8'));
  } catch {
    throw fail(`${what}: index is not JSON`);
  }
  let index: T;
  try {
    index = parseWith(schema, json, `${what} index`);
  } catch (err) {
    throw fail((err as Error).message);
  }
  const lengths = sizes(index);
  let at = 4 + indexLength;
  const total = lengths.reduce((n, size) => n + size, 0);
  if (total !== body.length - at) throw fail(`${what}: sizes add up to ${total} bytes, the body holds ${body.length - at}`);
  const parts = lengths.map((size) => {
    const part = body.subarray(at, at + size);
    at += size;
    return part;
  });
  return { index, parts };
}

/** The body of a batched block write (ROUTES.writeBlocks; index: BlockBatchIndex). */
export function encodeBlockBatch(blocks: ReadonlyArray<{ blockId: string; data: Buffer }>): Buffer {
  return frame(
    { blocks: blocks.map((b) => ({ blockId: b.blockId, size: b.data.length })) },
    blocks.map((b) => b.data),
  );
}

/** The blocks of a batch body (views into it); CofferError('bad_request') for anything malformed. */
export function decodeBlockBatch(body: unknown): Array<{ blockId: string; data: Buffer }> {
  const { index, parts } = unframe(body, BlockBatchIndex, 'block batch', (i) => i.blocks.map((b) => b.size), (m) => new CofferError('bad_request', m));
  return index.blocks.map((b, i) => ({ blockId: b.blockId, data: parts[i]! }));
}

/** One block of a batched read's answer: its bytes, or the error its own GET would have answered. */
export type BlockReadItem = { blockId: string; data: Buffer } | { blockId: string; error: ErrorBody };

/** The answer to ROUTES.readBlocks (index: BlockReadIndex), items in request order. */
export function encodeBlockReadAnswer(items: readonly BlockReadItem[]): Buffer {
  return frame(
    { blocks: items.map((it) => ('data' in it ? { blockId: it.blockId, size: it.data.length } : it)) },
    items.flatMap((it) => ('data' in it ? [it.data] : [])),
  );
}

/**
 * A batched read's answer (client side): exactly one item per requested id, in request order, each
 * block a view into `body`. The server is not believed: a malformed answer, a block not asked for,
 * one answered twice, or sizes that do not match the body are an IntegrityError for the whole answer.
 */
export function decodeBlockReadAnswer(body: Buffer, requested: readonly string[]): BlockReadItem[] {
  const fail = (m: string) => new IntegrityError(`the server's answer to a block read is malformed: ${m}`);
  const { index, parts } = unframe(body, BlockReadIndex, 'block read answer', (i) => i.blocks.flatMap((b) => ('size' in b ? [b.size] : [])), fail);
  if (index.blocks.length !== requested.length) throw fail(`${index.blocks.length} blocks answered for ${requested.length} asked`);
  let next = 0;
  return index.blocks.map((b, i) => {
    if (b.blockId !== requested[i]) throw new IntegrityError(`the server answered block ${b.blockId} where ${requested[i]} was asked for (unrequested, duplicated or out of order)`);
    return 'size' in b ? { blockId: b.blockId, data: parts[next++]! } : b;
  });
}
