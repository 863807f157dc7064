/** Messages and helpers shared by the main thread and the crypto worker scripts. */
import { BadInputError, CofferError, ERROR_CODES, IntegrityError, WrongPasswordError, type ErrorCode } from '../errors.js';

// `out`: shared memory of exactly the result's size; the worker copies the result there (and answers
// `inOut`) instead of moving a new ArrayBuffer to the main thread (see pool.ts).
export type BlockRequest =
  | { id: number; op: 'encrypt'; plaintext: Uint8Array; out?: Uint8Array }
  | { id: number; op: 'decrypt'; key: Uint8Array; ciphertext: Uint8Array; digest: Uint8Array; out?: Uint8Array }
  | { id: number; op: 'crash' }; // test hook: makes the worker die with an uncaught exception

export interface SerializedError {
  name: string;
  code: string | undefined;
  message: string;
}

export type BlockResponse =
  // `inOut`: the result is in the request's `out` (ciphertext/plaintext are then empty). A moved input
  // is not moved back: only the pool's shared memory is reused (arriving memory would count for the GC).
  | { id: number; ok: true; op: 'encrypt'; key: Uint8Array; ciphertext: Uint8Array; digest: Uint8Array; inOut?: boolean }
  | { id: number; ok: true; op: 'decrypt'; plaintext: Uint8Array; inOut?: boolean }
  | { id: number; ok: false; error: SerializedError };

/**
 * ArrayBuffers that can be moved instead of copied: only a view that covers its whole, non-shared
 * buffer. A Buffer from Node's pool is a slice of a shared 8 KiB slab: moving it would detach
 * unrelated Buffers, so such views are never listed (structured clone copies them instead).
 */
export function transferListFor(...views: Uint8Array[]): ArrayBuffer[] {
  const list: ArrayBuffer[] = [];
  for (const v of views) {
    const buf = v.buffer;
    if (buf instanceof ArrayBuffer && v.byteOffset === 0 && v.byteLength === buf.byteLength && v.byteLength > 0) {
      if (!list.includes(buf)) list.push(buf);
    }
  }
  return list;
}

/**
 * Takes ownership of a caller's bytes: moves the whole ArrayBuffer when allowed (zero-copy, the
 * caller's view is detached right away), otherwise makes one private copy. A view of shared memory
 * (BlockCryptoPool.buffer) is lent as is: its owner leaves it alone until the job is answered.
 */
export function takeOwnership(view: Uint8Array): Uint8Array {
  if (view.buffer instanceof SharedArrayBuffer) return view;
  if (transferListFor(view).length === 1) {
    try {
      return structuredClone(view, { transfer: [view.buffer as ArrayBuffer] });
    } catch {
      // e.g. a buffer marked untransferable: fall through to a copy
    }
  }
  return new Uint8Array(view); // copies into a fresh, exactly sized ArrayBuffer
}

export function serializeError(err: unknown): SerializedError {
  if (err instanceof CofferError) return { name: err.name, code: err.code, message: err.message };
  if (err instanceof Error) return { name: err.name, code: undefined, message: err.message };
  return { name: 'Error', code: undefined, message: String(err) };
}

function isErrorCode(code: string | undefined): code is ErrorCode {
  return code !== undefined && (ERROR_CODES as readonly string[]).includes(code);
}

/** Rebuilds the same error class on this side of the thread boundary. */
export function deserializeError(e: SerializedError): CofferError {
  switch (e.code) {
    case 'integrity':
      return new IntegrityError(e.message);
    case 'bad_request':
      return new BadInputError(e.message);
    case 'wrong_password':
      return new WrongPasswordError(e.message);
    default:
      if (isErrorCode(e.code)) return new CofferError(e.code, e.message);
      return new CofferError('internal', `${e.name}: ${e.message}`);
  }
}
