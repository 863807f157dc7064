/**
 * The one table from Coffer error codes to the errno a FUSE caller sees.
 *
 * fuse-native expects NEGATIVE errno values from every handler callback (e.g. -2 for ENOENT), so
 * `errnoFor` returns `-errno`. Values come from `os.constants.errno` (the platform's numbers).
 *
 * Choices that are not obvious:
 * - `unauthorized`, `forbidden`, `wrong_password` → EACCES ("Permission denied"): the caller is
 *   not allowed, whatever the reason; the log line keeps the precise code.
 * - `offline` and `unavailable` → EHOSTUNREACH ("No route to host"): the data is not in the local
 *   store and the server cannot deliver it right now. Both are transient and network-shaped, and
 *   neither should look like corruption (EIO). EREMOTEIO would suit `unavailable` better but is
 *   not in os.constants.errno; EAGAIN is avoided because some programs retry it in a busy loop.
 * - `conflict` → EIO: the engine resolves version conflicts itself (the mount writes to the local
 *   store first), so a conflict that reaches the mount is an engine failure, not a state the
 *   caller can fix. ESTALE was rejected: the VFS silently retries some path ops on ESTALE.
 * - `integrity` → EIO: like a checksum failure in a disk filesystem; never hand out the bytes.
 * - `rate_limited` → EAGAIN ("Resource temporarily unavailable"): explicitly retryable.
 * - `not_supported` → ENOTSUP (same number as EOPNOTSUPP on Linux).
 * - `bad_request`, `invalid_name` → EINVAL; `too_large` → EFBIG; `no_space` → ENOSPC (quota or
 *   local disk); `busy` → EBUSY; `internal` → EIO.
 * - Errors from node:fs (local store) carry `.code` like 'ENOSPC': they map to that errno; SQLite's
 *   SQLITE_FULL (the local store's database on a full disk) maps to ENOSPC too.
 * - Anything else (a bug) → EIO; the mount logs it as unexpected.
 */
import { constants } from 'node:os';
import { isCofferError, type ErrorCode } from '../errors.js';

const E = constants.errno;

/** Positive errno for every ErrorCode. `satisfies` makes a missing or extra code a compile error. */
export const ERRNO_BY_CODE = {
  bad_request: E.EINVAL,
  unauthorized: E.EACCES,
  forbidden: E.EACCES,
  not_found: E.ENOENT,
  exists: E.EEXIST,
  conflict: E.EIO,
  too_large: E.EFBIG,
  rate_limited: E.EAGAIN,
  not_empty: E.ENOTEMPTY,
  not_a_directory: E.ENOTDIR,
  is_a_directory: E.EISDIR,
  name_too_long: E.ENAMETOOLONG,
  invalid_name: E.EINVAL,
  read_only: E.EROFS,
  not_supported: E.ENOTSUP,
  integrity: E.EIO,
  wrong_password: E.EACCES,
  offline: E.EHOSTUNREACH,
  unavailable: E.EHOSTUNREACH,
  no_space: E.ENOSPC,
  busy: E.EBUSY,
  internal: E.EIO,
} as const satisfies Record<ErrorCode, number>;

const ERRNO_TABLE: Readonly<Record<ErrorCode, number>> = ERRNO_BY_CODE;
const NODE_ERRNO: Readonly<Record<string, number>> = E;

export interface ErrnoInfo {
  /** Negative errno, as fuse-native callbacks expect. */
  errno: number;
  /** The CofferError code, the node errno name (e.g. 'ENOSPC'), or 'unexpected'. */
  code: string;
  /** False for values that are neither a CofferError nor a node system error: a bug to log loudly. */
  expected: boolean;
}

function nodeErrnoCode(err: unknown): string | undefined {
  if (typeof err !== 'object' || err === null || !('code' in err)) return undefined;
  const code = (err as { code: unknown }).code;
  if (typeof code !== 'string' || !/^E[A-Z0-9]+$/.test(code)) return undefined;
  return Object.prototype.hasOwnProperty.call(NODE_ERRNO, code) ? code : undefined;
}

/** Classifies any thrown value: its negative errno, a log-safe code, and whether it was expected. */
export function errnoInfo(err: unknown): ErrnoInfo {
  if (isCofferError(err)) {
    const n = ERRNO_TABLE[err.code] ?? E.EIO;
    return { errno: -n, code: err.code, expected: true };
  }
  const code = nodeErrnoCode(err);
  if (code !== undefined) return { errno: -(NODE_ERRNO[code] ?? E.EIO), code, expected: true };
  // The local store's SQLite on a full disk (better-sqlite3 error code): ENOSPC, like a block file
  // write on that disk, not EIO (found by test/e2e/disk-full.test.ts).
  if ((err as { code?: unknown } | null)?.code === 'SQLITE_FULL') return { errno: -E.ENOSPC, code: 'SQLITE_FULL', expected: true };
  return { errno: -E.EIO, code: 'unexpected', expected: false };
}

/** The NEGATIVE errno fuse-native expects for any thrown value (EIO for unknown values). */
export function errnoFor(err: unknown): number {
  return errnoInfo(err).errno;
}
