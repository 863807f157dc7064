import t from 'tap';
import { z } from 'zod';
import { BadInputError, CofferError } from '../../src/errors.js';
import { decode, decodeWith, encode, MAX_DEPTH, MAX_ENCODED_BYTES, parseWith } from '../../src/model/codec.js';

function nested(depth: number): unknown {
  let v: unknown = 1;
  for (let i = 0; i < depth; i++) v = [v];
  return v;
}

t.test('round trip of plain values, binary in and out as Uint8Array', async (t) => {
  const value = { a: 1, b: 'héllo', c: [true, false, null], d: { e: -5, f: 1.5 }, g: new Uint8Array([1, 2, 3]), h: 2 ** 53 - 1 };
  const out = decode(encode(value)) as typeof value;
  t.same(out, value);
  t.ok(out.g instanceof Uint8Array, 'binary decodes to Uint8Array');
  const fromBuffer = decode(encode({ k: Buffer.from([9, 8]) })) as { k: Uint8Array };
  t.ok(fromBuffer.k instanceof Uint8Array);
  t.same([...fromBuffer.k], [9, 8], 'Buffer encodes as binary');
  t.same(decode(encode({ x: undefined, y: 1 })), { y: 1 }, 'undefined fields are left out');
});

t.test('decoded binaries do not alias the input', async (t) => {
  const bytes = encode({ k: new Uint8Array([1, 2, 3]) });
  const out = decode(bytes) as { k: Uint8Array };
  bytes.fill(0);
  t.same([...out.k], [1, 2, 3]);
});

t.test('malformed msgpack is rejected with a clear message', async (t) => {
  const cases: Array<[string, number[], RegExp]> = [
    ['empty input', [], /truncated/],
    ['reserved byte 0xc1', [0xc1], /0xc1/],
    ['truncated array', [0x92, 0x01], /truncated/],
    ['truncated string', [0xa5, 0x61], /truncated/],
    ['truncated bin32 header', [0xc6, 0, 0], /truncated/],
    ['huge declared map', [0xdf, 0xff, 0xff, 0xff, 0xff], /truncated/],
    ['trailing bytes', [0x01, 0x02], /1 extra bytes/],
    ['fixext timestamp', [0xd6, 0xff, 0, 0, 0, 0], /extension types are not allowed/],
    ['ext8', [0xc7, 0x01, 0x05, 0x00], /extension types are not allowed/],
    ['invalid utf-8 string', [0xa2, 0xff, 0xfe], /not valid UTF-8/],
    ['invalid utf-8 map key', [0x81, 0xa1, 0x80, 0x01], /not valid UTF-8/],
  ];
  for (const [what, bytes, re] of cases) {
    t.throws(() => decode(new Uint8Array(bytes)), { name: 'BadInputError', message: re }, what);
  }
  t.throws(() => decode([1, 2] as unknown as Uint8Array), BadInputError, 'non-Uint8Array input');
});

t.test('map key __proto__ is refused', async (t) => {
  // {"__proto__": 1}
  const bytes = new Uint8Array([0x81, 0xa9, ...Buffer.from('__proto__'), 0x01]);
  t.throws(() => decode(bytes), { name: 'BadInputError', message: /__proto__/ });
});

t.test('size and depth limits', async (t) => {
  t.throws(() => decode(new Uint8Array(MAX_ENCODED_BYTES + 1)), { name: 'BadInputError', message: /at most 16777216/ });
  t.same(decode(encode(nested(MAX_DEPTH))), nested(MAX_DEPTH), `depth ${MAX_DEPTH} is fine`);
  const tooDeep = new Uint8Array(MAX_DEPTH + 2).fill(0x91);
  tooDeep[MAX_DEPTH + 1] = 0x01;
  t.throws(() => decode(tooDeep), { name: 'BadInputError', message: /nesting deeper than 32/ });
  // A million-level nesting fails fast in the scan instead of building a huge decoder stack.
  t.throws(() => decode(new Uint8Array(1_000_000).fill(0x91)), { name: 'BadInputError', message: /nesting deeper/ });
  t.throws(() => encode(nested(MAX_DEPTH + 1)), BadInputError, 'encoder refuses what decode would refuse');
  const longString = encode('x'.repeat(2 * 1024 * 1024));
  t.throws(() => decode(longString), { name: 'BadInputError', message: /malformed msgpack: .*length/i }, 'string over the limit');
  try {
    encode(new Uint8Array(MAX_ENCODED_BYTES + 10));
    t.fail('oversized encode should throw');
  } catch (err) {
    t.ok(err instanceof CofferError && err.code === 'too_large', 'encoder refuses output decode would refuse');
  }
  t.throws(() => encode(() => 1), BadInputError, 'functions cannot be encoded');
});

t.test('decodeWith / parseWith name the thing and the field path', async (t) => {
  const Schema = z.strictObject({ a: z.strictObject({ b: z.number() }), list: z.array(z.string()) });
  t.same(decodeWith(Schema, encode({ a: { b: 1 }, list: ['x'] }), 'widget'), { a: { b: 1 }, list: ['x'] });
  t.throws(() => decodeWith(Schema, encode({ a: { b: 'no' }, list: [] }), 'widget'), {
    name: 'BadInputError',
    message: /^invalid widget: a\.b: Invalid input: expected number, received string/,
  });
  t.throws(() => decodeWith(Schema, encode({ a: { b: 1 }, list: ['x', 2] }), 'widget'), { message: /invalid widget: list\[1\]:/ });
  t.throws(() => decodeWith(Schema, encode({ a: { b: 1, c: 2 }, list: [] }), 'widget'), {
    message: /invalid widget: a: Unrecognized key: "c"/,
  });
  t.throws(() => decodeWith(Schema, new Uint8Array([0xc1]), 'widget'), { name: 'BadInputError', message: /^widget: malformed msgpack/ });
  t.throws(() => parseWith(Schema, 'str', 'config file'), { name: 'BadInputError', message: /^invalid config file: Invalid input: expected object/ });
  try {
    parseWith(Schema, { a: { b: null }, list: [] }, 'body');
    t.fail('should throw');
  } catch (err) {
    t.ok(err instanceof BadInputError);
    t.same((err as BadInputError).details, { what: 'body', path: 'a.b' });
  }
});
