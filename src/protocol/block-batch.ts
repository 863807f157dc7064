import { CofferError } from '../errors.js';
import { parseWith } from '../model/codec.js';
import { BlockBatchIndex } from './schemas.js';

/**
 * The body of a batched block write (ROUTES.writeBlocks): a 4-byte big-endian length, that many
 * bytes of JSON index ({ blocks: [{ blockId, size }] }), then the blocks back to back in index order.
 * Binary, so that blocks travel as they are (no base64), and the device signature covers it all.
 */
export function encodeBlockBatch(blocks: ReadonlyArray<{ blockId: string; data: Buffer }>): Buffer {
  const index = Buffer.from(JSON.stringify({ blocks: blocks.map((b) => ({ blockId: b.blockId, size: b.data.length })) }), 'utf8');
  const head = Buffer.alloc(4);
  head.writeUInt32BE(index.length);
  return Buffer.concat([head, index, ...blocks.map((b) => b.data)]);
}

/** The blocks of a batch body (views into it); CofferError('bad_request') for anything malformed. */
export function decodeBlockBatch(body: unknown): Array<{ blockId: string; data: Buffer }> {
  if (!Buffer.isBuffer(body) || body.length < 4) throw new CofferError('bad_request', 'block batch body must be application/octet-stream: index length, index, blocks');
  const indexLength = body.readUInt32BE(0);
  if (indexLength > body.length - 4) throw new CofferError('bad_request', 'block batch index is longer than the body');
  let json: unknown;
  try {
    json = JSON.parse(body.subarray(4, 4 + indexLength).toString('utf8'));
  } catch {
    throw new CofferError('bad_request', 'block batch index is not JSON');
  }
  const index = parseWith(BlockBatchIndex, json, 'block batch index');
  let at = 4 + indexLength;
  const total = index.blocks.reduce((n, b) => n + b.size, 0);
  if (total !== body.length - at) throw new CofferError('bad_request', `block batch sizes add up to ${total} bytes, the body holds ${body.length - at}`);
  return index.blocks.map((b) => {
    const data = body.subarray(at, at + b.size);
    at += b.size;
    return { blockId: b.blockId, data };
  });
}
