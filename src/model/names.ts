import { z } from 'zod';
import { CofferError } from '../errors.js';

/** Same limit as NAME_MAX on Linux, so every name we store can be shown by the mount. */
export const MAX_NAME_BYTES = 255;

// A surrogate half without its partner cannot be encoded as UTF-8 (it would silently become U+FFFD).
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

export function validateEntryName(name: string): void {
  if (typeof name !== 'string' || name === '' || name === '.' || name === '..') {
    throw new CofferError('invalid_name', `invalid entry name ${JSON.stringify(name)}`);
  }
  // msgpack decoders refuse this map key (prototype pollution guard), so a folder holding it
  // could never be read back.
  if (name === '__proto__') throw new CofferError('invalid_name', 'entry name "__proto__" is reserved');
  if (name.includes('/')) throw new CofferError('invalid_name', 'entry name must not contain "/"');
  if (name.includes('\0')) throw new CofferError('invalid_name', 'entry name must not contain a NUL character');
  if (LONE_SURROGATE.test(name)) {
    throw new CofferError('invalid_name', 'entry name is not valid Unicode (lone surrogate)');
  }
  const bytes = Buffer.byteLength(name, 'utf8');
  if (bytes > MAX_NAME_BYTES) {
    throw new CofferError('name_too_long', `entry name is ${bytes} bytes in UTF-8, at most ${MAX_NAME_BYTES} allowed`);
  }
}

export const EntryNameSchema: z.ZodType<string> = z.string().superRefine((name, ctx) => {
  try {
    validateEntryName(name);
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: err instanceof Error ? err.message : String(err) });
  }
});
