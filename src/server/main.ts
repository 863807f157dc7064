import { randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { pino, type Logger } from 'pino';
import { buildApp } from './app.js';
import { FolderBlockStore } from './blocks/folder.js';
import { SqliteMetadataStore } from './metadata/sqlite.js';

export interface ServerOptions {
  dataDir: string;
  host: string;
  port: number;
  /** Server administration token; when absent, read from (or created in) <dataDir>/admin-token. */
  adminToken?: string;
  logger?: Logger;
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

/** The embedded server: SQLite metadata and a block folder under one data directory. */
export async function startServer(opts: ServerOptions): Promise<RunningServer> {
  await mkdir(opts.dataDir, { recursive: true, mode: 0o700 });
  const logger = opts.logger ?? pino({ name: 'coffer-server' }, pino.destination(2));
  const adminToken = opts.adminToken ?? (await loadOrCreateAdminToken(opts.dataDir));
  const metadata = new SqliteMetadataStore(join(opts.dataDir, 'metadata.sqlite'));
  const blocks = new FolderBlockStore(join(opts.dataDir, 'blocks'));
  const app = buildApp({ metadata, blocks, adminToken, logger, now: Date.now });
  await app.listen({ host: opts.host, port: opts.port });
  const addr = app.server.address();
  const port = typeof addr === 'object' && addr ? addr.port : opts.port;
  return {
    app,
    url: `http://${opts.host}:${port}`,
    adminToken,
    close: async () => {
      await app.close(); // drains in-flight requests
      await metadata.close();
      await blocks.close();
    },
  };
}
