import { z } from 'zod';
import { CofferError, ERROR_CODES, type ErrorCode } from '../errors.js';

/** One HTTP status per error code: the API's half of the error table (the mount has the errno half). */
export const HTTP_STATUS: Record<ErrorCode, number> = {
  bad_request: 400,
  unauthorized: 401,
  forbidden: 403,
  not_found: 404,
  exists: 409,
  conflict: 409,
  too_large: 413,
  rate_limited: 429,
  not_empty: 409,
  not_a_directory: 400,
  is_a_directory: 400,
  name_too_long: 400,
  invalid_name: 400,
  read_only: 403,
  not_supported: 501,
  integrity: 400,
  wrong_password: 401,
  offline: 503,
  unavailable: 503,
  no_space: 507,
  busy: 409,
  internal: 500,
};

/** Every error response body: `{ error, message }` plus optional machine-readable details. */
export const ErrorBodySchema = z.object({
  error: z.enum(ERROR_CODES),
  message: z.string(),
  details: z.record(z.string(), z.unknown()).optional(),
});
export type ErrorBody = z.infer<typeof ErrorBodySchema>;

export function errorBody(err: CofferError): ErrorBody {
  return err.details === undefined
    ? { error: err.code, message: err.message }
    : { error: err.code, message: err.message, details: err.details };
}

/** Rebuild a typed error from a server response (client side). */
export function errorFromResponse(status: number, body: unknown): CofferError {
  const parsed = ErrorBodySchema.safeParse(body);
  if (parsed.success) return new CofferError(parsed.data.error, parsed.data.message, parsed.data.details);
  if (status >= 500) return new CofferError('unavailable', `server answered HTTP ${status}`);
  return new CofferError('bad_request', `server answered HTTP ${status} without an error body`);
}
