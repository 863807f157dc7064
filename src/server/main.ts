import { randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { pino, type Logger } from 'pino';
import { BadInputError } from '../errors.js';
import { buildApp, newEventBus } from './app.js';
import { LocalEventPublisher, PostgresEventRelay, type EventPublisher } from './events.js';
import { DEFAULT_GC_RETENTION_MS, parseDuration, startGcTimer } from './gc.js';
import { parseTrustProxy, type AuthLimitOptions } from './ops.js';
import { openStores, parseMetadataSetting } from './storage.js';

export interface ServerOptions {
  dataDir: string;
  host: string;
  port: number;
  /** Server administration token; when absent, read from (or created in) <dataDir>/admin-token. */
  adminToken?: string;
  logger?: Logger;
  /** Metadata store: `sqlite:` (default, <dataDir>/metadata.sqlite) or `postgresql://user@host:port/db` (see storage.ts). Default: COFFER_METADATA_URL. */
  metadataUrl?: string;
  /** Block store: `folder:` (default, <dataDir>/blocks), `s3://…` or `swift://…` (see storage.ts). Default: COFFER_BLOCKS_URL. */
  blocksUrl?: string;
  /**
   * Peers allowed to set X-Forwarded-For (the load balancer): comma-separated addresses or CIDR
   * ranges, or true (any peer: only when the server is unreachable except through the proxy). Default: COFFER_TRUST_PROXY, else none. The client address is what
   * the authentication-failure limit counts.
   */
  trustProxy?: string | boolean;
  /** Authentication failures allowed per minute and client address (default COFFER_AUTH_FAILURES_PER_MINUTE, else 20; 0 disables). */
  authLimit?: AuthLimitOptions;
  /**
   * Block garbage collection in the server: every `intervalMs` (default COFFER_GC_INTERVAL, else 1 h;
   * 0 = off), delete blocks released more than `retentionMs` ago (default COFFER_GC_RETENTION, else 7 days).
   */
  gc?: { intervalMs?: number; retentionMs?: number };
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
  // Unset options fall back on the environment, like the CLI (COFFER_METADATA_URL, COFFER_BLOCKS_URL).
  const metadataUrl = opts.metadataUrl ?? (process.env.COFFER_METADATA_URL || undefined);
  const blocksUrl = opts.blocksUrl ?? (process.env.COFFER_BLOCKS_URL || undefined);
  const metadataSetting = parseMetadataSetting(metadataUrl, opts.dataDir);
  const stores = await openStores({ metadata: metadataUrl, blocks: blocksUrl, dataDir: opts.dataDir, logger });
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
  const envDuration = (name: string, fallback: number) => {
    const v = process.env[name];
    return v === undefined || v === '' ? fallback : parseDuration(v, name);
  };
  const gcIntervalMs = opts.gc?.intervalMs ?? envDuration('COFFER_GC_INTERVAL', 3_600_000);
  const gcRetentionMs = opts.gc?.retentionMs ?? envDuration('COFFER_GC_RETENTION', DEFAULT_GC_RETENTION_MS);
  const app = buildApp({ metadata, blocks, adminToken, logger, now: Date.now }, { events, trustProxy, authLimit });
  try {
    await app.listen({ host: opts.host, port: opts.port });
  } catch (err) {
    await app.close().catch(() => undefined);
    await events.close();
    await stores.close();
    throw err;
  }
  const gc = gcIntervalMs > 0 ? startGcTimer({ metadata, blocks, logger, now: Date.now, retentionMs: gcRetentionMs, intervalMs: gcIntervalMs }) : null;
  const addr = app.server.address();
  const port = typeof addr === 'object' && addr ? addr.port : opts.port;
  return {
    app,
    url: `http://${opts.host}:${port}`,
    adminToken,
    close: async () => {
      await gc?.stop();
      await app.close(); // ends the event streams, drains in-flight requests
      await events.close();
      await stores.close();
    },
  };
}
