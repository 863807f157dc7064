import { randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { pino, type Logger } from 'pino';
import { BadInputError } from '../errors.js';
import { buildApp, newEventBus } from './app.js';
import { LocalEventPublisher, PostgresEventRelay, type EventPublisher } from './events.js';
import { parseTrustProxy, type AuthLimitOptions } from './ops.js';
import { openStores, parseMetadataSetting } from './storage.js';

export interface ServerOptions {
  dataDir: string;
  host: string;
  port: number;
  /** Server administration token; when absent, read from (or created in) <dataDir>/admin-token. */
  adminToken?: string;
  logger?: Logger;
  /** Metadata store: `sqlite:` (default, <dataDir>/metadata.sqlite) or `postgresql://user@host:port/db` (see storage.ts). */
  metadataUrl?: string;
  /** Block store: `folder:` (default, <dataDir>/blocks) or `s3://bucket/prefix?endpoint=…&region=…` (see storage.ts). */
  blocksUrl?: string;
  /**
   * Peers allowed to set X-Forwarded-For (the load balancer): comma-separated addresses or CIDR
   * ranges, or true (any peer: only when the server is unreachable except through the proxy). Default: COFFER_TRUST_PROXY, else none. The client address is what
   * the authentication-failure limit counts.
   */
  trustProxy?: string | boolean;
  /** Authentication failures allowed per minute and client address (default COFFER_AUTH_FAILURES_PER_MINUTE, else 20; 0 disables). */
  authLimit?: AuthLimitOptions;
}

export interface RunningServer {
  app: FastifyInstance;
  url: string;
  adminToken: string;
  close(): Promise<void>;
}

async function loadOrCreateAdminToken(dataDir: string): Promise<string> {
  const file = join(dataDir, 'admin-token');
  try {
    return (await readFile(file, 'utf8')).trim();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    const token = randomBytes(24).toString('hex');
    await writeFile(file, `${token}\n`, { mode: 0o600, flag: 'wx' });
    return token;
  }
}

/**
 * The server: by default embedded (SQLite metadata and a block folder under one data directory);
 * with PostgreSQL + S3 URLs, one of several stateless instances behind a load balancer.
 */
export async function startServer(opts: ServerOptions): Promise<RunningServer> {
  await mkdir(opts.dataDir, { recursive: true, mode: 0o700 });
  const logger = opts.logger ?? pino({ name: 'coffer-server' }, pino.destination(2));
  const adminToken = opts.adminToken ?? (await loadOrCreateAdminToken(opts.dataDir));
  const trustProxy = parseTrustProxy(opts.trustProxy ?? process.env.COFFER_TRUST_PROXY);
  const envLimit = process.env.COFFER_AUTH_FAILURES_PER_MINUTE;
  if (envLimit !== undefined && envLimit !== '' && !/^\d+$/.test(envLimit)) throw new BadInputError(`COFFER_AUTH_FAILURES_PER_MINUTE must be a whole number, not "${envLimit}"`);
  const authLimit: AuthLimitOptions = { ...(envLimit ? { failuresPerMinute: Number(envLimit) } : {}), ...opts.authLimit };
  const metadataSetting = parseMetadataSetting(opts.metadataUrl, opts.dataDir);
  const stores = await openStores({ metadata: opts.metadataUrl, blocks: opts.blocksUrl, dataDir: opts.dataDir, logger });
  const { metadata, blocks } = stores;
  logger.info(stores.description, 'storage opened');
  // Several instances share PostgreSQL: their events meet there (LISTEN/NOTIFY). SQLite: one process.
  let events: EventPublisher;
  try {
    events =
      metadataSetting.kind === 'postgres'
        ? await PostgresEventRelay.start({ url: metadataSetting.url, bus: newEventBus({ metadata }), logger })
        : new LocalEventPublisher(newEventBus({ metadata }));
  } catch (err) {
    await stores.close();
    throw new Error(`cannot listen for events on ${stores.description.metadata}: ${(err as Error).message}`, { cause: err });
  }
  const app = buildApp({ metadata, blocks, adminToken, logger, now: Date.now }, { events, trustProxy, authLimit });
  try {
    await app.listen({ host: opts.host, port: opts.port });
  } catch (err) {
    await app.close().catch(() => undefined);
    await events.close();
    await stores.close();
    throw err;
  }
  const addr = app.server.address();
  const port = typeof addr === 'object' && addr ? addr.port : opts.port;
  return {
    app,
    url: `http://${opts.host}:${port}`,
    adminToken,
    close: async () => {
      await app.close(); // ends the event streams, drains in-flight requests
      await events.close();
      await stores.close();
    },
  };
}
