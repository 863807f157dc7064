/**
 * The one wire/storage codec: msgpack with hard limits, so hostile bytes (from the server, the
 * local store or another member) cannot exhaust memory or the stack before a schema looks at them.
 */
import { isUtf8 } from 'node:buffer';
import { Decoder, Encoder } from '@msgpack/msgpack';
import { z } from 'zod';
import { BadInputError, CofferError } from '../errors.js';

export const MAX_ENCODED_BYTES = 16 * 1024 * 1024;
export const MAX_DEPTH = 32;
const MAX_STR_BYTES = 1024 * 1024;
const MAX_ITEMS = 1_000_000; // array items / map entries; matches the folder children limit

// The encoder counts the top-level value as depth 1, so +1 accepts exactly what decode() accepts.
const encoder = new Encoder({ maxDepth: MAX_DEPTH + 1, ignoreUndefined: true });
const decoder = new Decoder({
  maxStrLength: MAX_STR_BYTES,
  maxBinLength: MAX_ENCODED_BYTES,
  maxArrayLength: MAX_ITEMS,
  maxMapLength: MAX_ITEMS,
  maxExtLength: 0,
});

export function encode(value: unknown): Uint8Array {
  let out: Uint8Array;
  try {
    out = encoder.encode(value);
  } catch (err) {
    throw new BadInputError(`cannot encode value: ${err instanceof Error ? err.message : String(err)}`);
  }
  // Never produce bytes that decode() would refuse.
  if (out.byteLength > MAX_ENCODED_BYTES) {
    throw new CofferError('too_large', `encoded value is ${out.byteLength} bytes, at most ${MAX_ENCODED_BYTES} allowed`);
  }
  return out;
}

export function decode(bytes: Uint8Array): unknown {
  if (!(bytes instanceof Uint8Array)) throw new BadInputError('msgpack input must be a Uint8Array');
  if (bytes.byteLength > MAX_ENCODED_BYTES) {
    throw new BadInputError(`msgpack input is ${bytes.byteLength} bytes, at most ${MAX_ENCODED_BYTES} allowed`);
  }
  scanStructure(bytes);
  try {
    // Decoded binaries are views of the input: decode a private copy so callers reusing or
    // wiping their buffer cannot change (or be changed through) the decoded value.
    return decoder.decode(bytes.slice());
  } catch (err) {
    throw new BadInputError(`malformed msgpack: ${err instanceof Error ? err.message : String(err)}`);
  }
}

/**
 * Walks the msgpack headers without building values: rejects nesting deeper than MAX_DEPTH and
 * extension types (we never write them; the default codec would turn them into Date/ExtData) and
 * strings that are not valid UTF-8 (the library would decode them lossily, so distinct byte
 * strings could become the same name).
 * The library decoder is iterative and has no depth limit, so this is where depth is bounded.
 */
function scanStructure(bytes: Uint8Array): void {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const len = bytes.byteLength;
  const pending: number[] = []; // items still expected in each open container
  let pos = 0;
  const need = (n: number): void => {
    if (pos + n > len) throw new BadInputError('malformed msgpack: input is truncated');
  };
  for (;;) {
    need(1);
    const b = bytes[pos]!;
    let head = 1;
    let skip = 0;
    let children = -1; // >= 0 for containers
    let isString = false;
    if (b <= 0x7f || b >= 0xe0 || b === 0xc0 || b === 0xc2 || b === 0xc3) {
      // fixint, nil, bool
    } else if (b <= 0x8f) {
      children = (b & 0x0f) * 2;
    } else if (b <= 0x9f) {
      children = b & 0x0f;
    } else if (b <= 0xbf) {
      skip = b & 0x1f;
      isString = true;
    } else {
      switch (b) {
        case 0xc4: need(2); head = 2; skip = view.getUint8(pos + 1); break;
        case 0xc5: need(3); head = 3; skip = view.getUint16(pos + 1); break;
        case 0xc6: need(5); head = 5; skip = view.getUint32(pos + 1); break;
        case 0xd9: need(2); head = 2; skip = view.getUint8(pos + 1); isString = true; break;
        case 0xda: need(3); head = 3; skip = view.getUint16(pos + 1); isString = true; break;
        case 0xdb: need(5); head = 5; skip = view.getUint32(pos + 1); isString = true; break;
        case 0xca: skip = 4; break;
        case 0xcb: skip = 8; break;
        case 0xcc: case 0xd0: skip = 1; break;
        case 0xcd: case 0xd1: skip = 2; break;
        case 0xce: case 0xd2: skip = 4; break;
        case 0xcf: case 0xd3: skip = 8; break;
        case 0xdc: need(3); head = 3; children = view.getUint16(pos + 1); break;
        case 0xdd: need(5); head = 5; children = view.getUint32(pos + 1); break;
        case 0xde: need(3); head = 3; children = view.getUint16(pos + 1) * 2; break;
        case 0xdf: need(5); head = 5; children = view.getUint32(pos + 1) * 2; break;
        case 0xc1:
          throw new BadInputError('malformed msgpack: invalid type byte 0xc1');
        default: // 0xc7-0xc9, 0xd4-0xd8
          throw new BadInputError('malformed msgpack: extension types are not allowed');
      }
    }
    need(head + skip);
    if (isString && !isUtf8(bytes.subarray(pos + head, pos + head + skip))) {
      throw new BadInputError('malformed msgpack: string is not valid UTF-8');
    }
    pos += head + skip;
    if (children > 0) {
      if (pending.length >= MAX_DEPTH) {
        throw new BadInputError(`malformed msgpack: nesting deeper than ${MAX_DEPTH} levels`);
      }
      pending.push(children);
      continue;
    }
    // A scalar or empty container completes one item in each finished parent.
    while (pending.length > 0) {
      const left = pending[pending.length - 1]! - 1;
      if (left > 0) {
        pending[pending.length - 1] = left;
        break;
      }
      pending.pop();
    }
    if (pending.length === 0) break;
  }
  if (pos !== len) throw new BadInputError(`malformed msgpack: ${len - pos} extra bytes after the value`);
}

export function decodeWith<T>(schema: z.ZodType<T>, bytes: Uint8Array, what: string): T {
  let value: unknown;
  try {
    value = decode(bytes);
  } catch (err) {
    if (err instanceof BadInputError) throw new BadInputError(`${what}: ${err.message}`, { what });
    throw err;
  }
  return parseWith(schema, value, what);
}

export function parseWith<T>(schema: z.ZodType<T>, value: unknown, what: string): T {
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const issues = result.error.issues;
  const shown = issues.slice(0, 3).map(describeIssue);
  const more = issues.length > 3 ? ` (+${issues.length - 3} more)` : '';
  const first = issues[0];
  throw new BadInputError(`invalid ${what}: ${shown.join('; ')}${more}`, {
    what,
    path: first ? formatPath(first.path) : '',
  });
}

function describeIssue(issue: z.core.$ZodIssue): string {
  let message = issue.message;
  // Record key failures hide the real reason one level down.
  if (issue.code === 'invalid_key' && issue.issues.length > 0) {
    message = `invalid key: ${issue.issues.map((i) => i.message).join(', ')}`;
  }
  const path = formatPath(issue.path);
  return path === '' ? message : `${path}: ${message}`;
}

function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const key of path) {
    if (typeof key === 'number') out += `[${key}]`;
    else if (typeof key === 'string' && /^[A-Za-z_$][\w$]*$/.test(key)) out += out === '' ? key : `.${key}`;
    else out += `[${JSON.stringify(String(key))}]`;
  }
  return out;
}
