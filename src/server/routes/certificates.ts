import { CofferError } from '../../errors.js';
import { verifyCertificate, type Certificate } from '../../model/certificates.js';
import { CLOCK_WINDOW_MS } from '../../protocol/auth.js';
import type { RouteContext } from '../app.js';
import type { Caller } from '../context.js';
import { fromB64 } from './params.js';

/** A certificate signed by the caller's device, fresh; the route checks that it states the request. */
export async function callerCertificate(ctx: RouteContext, caller: Caller, text: string): Promise<{ cert: Certificate; blob: Buffer; timestamp: number }> {
  const blob = fromB64(text);
  const author = await ctx.metadata.getDevice(caller.orgId, caller.deviceId);
  let cert: Certificate;
  try {
    cert = verifyCertificate(blob, (a) => (a === caller.deviceId ? author?.verifyKey : undefined));
  } catch (err) {
    throw new CofferError('bad_request', `certificate: ${(err as Error).message}`);
  }
  if (Math.abs(ctx.now() - cert.timestamp) > CLOCK_WINDOW_MS) throw new CofferError('bad_request', 'certificate timestamp outside the clock window');
  return { cert, blob, timestamp: cert.timestamp };
}

