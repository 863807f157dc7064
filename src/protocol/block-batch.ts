import type { z } from 'zod';
import { CofferError, IntegrityError } from '../errors.js';
import { parseWith } from '../model/codec.js';
import { copyBytes } from '../crypto/index.js';
import type { ErrorBody } from './errors.js';
import { BlockBatchIndex, BlockReadIndex } from './schemas.js';

/**
 * Blocks travel in one binary frame format both ways: a 4-byte big-endian length, that many bytes of
 * JSON index, then the blocks back to back in index order. Binary, so that blocks travel as they are
 * (no base64), and the device signature of a batched write covers it all.
 */
function frameParts(index: unknown, parts: ReadonlyArray<Buffer>): Buffer[] {
  const json = Buffer.from(JSON.stringify(index), 'utf8');
  const head = Buffer.alloc(4);
  head.writeUInt32BE(json.length);
  return [head, json, ...parts];
}

function frame(index: unknown, parts: ReadonlyArray<Buffer>): Buffer {
  return Buffer.concat(frameParts(index, parts));
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

/**
 * The answer to ROUTES.readBlocks (index: BlockReadIndex), items in request order, as the pieces to
 * send one after the other: the server does not gather megabytes of blocks into one more buffer.
 */
export function blockReadAnswerParts(items: readonly BlockReadItem[]): Buffer[] {
  return frameParts(
    { blocks: items.map((it) => ('data' in it ? { blockId: it.blockId, size: it.data.length } : it)) },
    items.flatMap((it) => ('data' in it ? [it.data] : [])),
  );
}

/** The same answer in one buffer. */
export function encodeBlockReadAnswer(items: readonly BlockReadItem[]): Buffer {
  return Buffer.concat(blockReadAnswerParts(items));
}

/** A batched read's index larger than this is refused: 64 entries take a few KiB. */
const MAX_READ_INDEX_BYTES = 1024 * 1024;

/**
 * Reads a batched read's answer as it arrives (client side): each block's bytes are copied once, from
 * the socket's chunks into memory from `alloc(item, size)`, with no gathered copy of the whole answer.
 * The server is not believed: a malformed answer, a block not asked for, one answered twice, or sizes
 * that do not match the body are an IntegrityError for the whole answer.
 */
export class BlockReadAnswerReader {
  private readonly head = Buffer.alloc(4);
  private headFill = 0;
  private index: Buffer | null = null;
  private indexFill = 0;
  private items: BlockReadItem[] | null = null;
  /** The blocks still to fill, in order, and how far the first one is filled. */
  private readonly pending: Buffer[] = [];
  private fill = 0;

  constructor(
    private readonly requested: readonly string[],
    private readonly alloc: (item: number, size: number) => Buffer = (_i, size) => Buffer.allocUnsafe(size),
  ) {}

  private fail(m: string): IntegrityError {
    return new IntegrityError(`the server's answer to a block read is malformed: ${m}`);
  }

  write(chunk: Buffer): void {
    let at = 0;
    while (at < chunk.length) {
      if (this.headFill < 4) {
        const n = chunk.copy(this.head, this.headFill, at, Math.min(chunk.length, at + 4 - this.headFill));
        this.headFill += n;
        at += n;
        if (this.headFill === 4) {
          const length = this.head.readUInt32BE(0);
          if (length > MAX_READ_INDEX_BYTES) throw this.fail(`an index of ${length} bytes`);
          this.index = Buffer.alloc(length);
          if (length === 0) this.start();
        }
      } else if (this.items === null) {
        const index = this.index!;
        const n = chunk.copy(index, this.indexFill, at, Math.min(chunk.length, at + index.length - this.indexFill));
        this.indexFill += n;
        at += n;
        if (this.indexFill === index.length) this.start();
      } else {
        const block = this.pending[0];
        if (block === undefined) throw this.fail('more bytes than its index announces');
        const n = Math.min(chunk.length - at, block.length - this.fill);
        copyBytes(chunk, block, this.fill, at, at + n);
        this.fill += n;
        at += n;
        if (this.fill === block.length) this.next();
      }
    }
  }

  /** The items, in request order, once the whole answer arrived. */
  end(): BlockReadItem[] {
    if (this.items === null || this.pending.length > 0) throw this.fail('it ended early');
    return this.items;
  }

  private start(): void {
    let json: unknown;
    try {
      json = JSON.parse(this.index!.toString('utf8'));
    } catch {
      throw this.fail('index is not JSON');
    }
    let index: z.infer<typeof BlockReadIndex>;
    try {
      index = parseWith(BlockReadIndex, json, 'block read answer index');
    } catch (err) {
      throw this.fail((err as Error).message);
    }
    if (index.blocks.length !== this.requested.length) throw this.fail(`${index.blocks.length} blocks answered for ${this.requested.length} asked`);
    this.items = index.blocks.map((b, i) => {
      if (b.blockId !== this.requested[i]) throw new IntegrityError(`the server answered block ${b.blockId} where ${this.requested[i]} was asked for (unrequested, duplicated or out of order)`);
      if (!('size' in b)) return b;
      const data = this.alloc(i, b.size);
      this.pending.push(data);
      return { blockId: b.blockId, data };
    });
    this.fill = 0;
    while (this.pending[0]?.length === 0) this.next();
  }

  private next(): void {
    this.pending.shift();
    this.fill = 0;
    while (this.pending[0]?.length === 0) this.pending.shift();
  }
}

/** A whole batched read's answer (see BlockReadAnswerReader), items in request order. */
export function decodeBlockReadAnswer(body: Buffer, requested: readonly string[]): BlockReadItem[] {
  const reader = new BlockReadAnswerReader(requested);
  reader.write(body);
  return reader.end();
}
