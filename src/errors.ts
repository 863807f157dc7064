/**
 * Typed errors shared by every layer. Each code maps to exactly one errno at the mount
 * (src/mount/errno.ts) and one HTTP status at the API (src/protocol/errors.ts).
 */
export const ERROR_CODES = [
  'bad_request', // malformed input (schema, encoding, size)
  'unauthorized', // missing/invalid authentication
  'forbidden', // authenticated but not allowed (role, revoked)
  'not_found',
  'exists',
  'conflict', // version conflict on a vlob
  'too_large',
  'rate_limited',
  'not_empty',
  'not_a_directory',
  'is_a_directory',
  'name_too_long',
  'invalid_name',
  'read_only',
  'not_supported',
  'integrity', // decryption, signature, digest or version-order failure: tampering
  'wrong_password',
  'offline', // needed data is not cached and the server is unreachable
  'unavailable', // server-side dependency down
  'no_space',
  'busy',
  'internal',
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

export class CofferError extends Error {
  readonly code: ErrorCode;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, details?: Record<string, unknown>) {
    super(message);
    this.name = 'CofferError';
    this.code = code;
    this.details = details;
  }
}

/**
 * A failure that is an ordinary answer rather than a fault (a lookup of a name that does not exist:
 * every file tar or cp creates is looked up first). No stack is captured: capturing one costs
 * ≈30 µs, more than the lookup itself, and nobody reads it.
 */
export function expectedError(code: ErrorCode, message: string): CofferError {
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  try {
    return new CofferError(code, message);
  } finally {
    Error.stackTraceLimit = limit;
  }
}

/** Decryption, bad signature, digest mismatch or rollback: never show the bytes. */
export class IntegrityError extends CofferError {
  constructor(message: string, details?: Record<string, unknown>) {
    super('integrity', message, details);
    this.name = 'IntegrityError';
  }
}

export class WrongPasswordError extends CofferError {
  constructor(message = 'wrong password for this device file') {
    super('wrong_password', message);
    this.name = 'WrongPasswordError';
  }
}

export class BadInputError extends CofferError {
  constructor(message: string, details?: Record<string, unknown>) {
    super('bad_request', message, details);
    this.name = 'BadInputError';
  }
}

export function isCofferError(err: unknown): err is CofferError {
  return err instanceof CofferError;
}

/** Short, log-safe description of any thrown value. */
export function describeError(err: unknown): string {
  if (err instanceof Error) return `${err.name}: ${err.message}`;
  return String(err);
}
