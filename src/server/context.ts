import type { Logger } from 'pino';
import type { BlockStore } from './blocks/types.js';
import type { MetadataStore } from './metadata/types.js';

/** What every route needs: storage, configuration and a clock (tests can move it). */
export interface ServerContext {
  metadata: MetadataStore;
  blocks: BlockStore;
  adminToken: string;
  logger: Logger;
  now: () => number;
}

/** The authenticated caller, set by the auth hook on every non-anonymous route. */
export interface Caller {
  orgId: string;
  deviceId: string;
  userId: string;
}

declare module 'fastify' {
  interface FastifyRequest {
    rawBody: Buffer | null;
    /** SHA-256 of a non-empty rawBody, computed once when the request's signature is checked. */
    rawBodyDigest: Buffer | null;
    caller: Caller | null;
  }
}
