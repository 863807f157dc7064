import type { Command } from 'commander';
import { startServer } from '../server/main.js';
import { redactUrl } from '../server/storage.js';
import { dataDir, makeLogger, type GlobalOptions } from './context.js';
import { join } from 'node:path';

export function registerServerCommand(program: Command, globals: () => GlobalOptions): void {
  program
    .command('server')
    .description('run the Coffer server in the foreground (default: embedded SQLite metadata + block folder; PostgreSQL + S3 to scale out)')
    .option('--data <dir>', 'server data directory (default: <data-dir>/server)')
    .option('--host <host>', 'address to listen on', '127.0.0.1')
    .option('--port <port>', 'TCP port (0 picks a free one)', '6770')
    .option('--admin-token <token>', 'server administration token (default: COFFER_ADMIN_TOKEN or <data>/admin-token, created on first start)')
    .option('--metadata <url>', 'metadata store: sqlite: (default, <data>/metadata.sqlite) or postgresql://user@host:port/db (default: COFFER_METADATA_URL)')
    .option('--blocks <url>', 'block store: folder: (default, <data>/blocks) or s3://bucket/prefix?endpoint=http://host:port&region=… (default: COFFER_BLOCKS_URL)')
    .action(async (opts: { data?: string; host: string; port: string; adminToken?: string; metadata?: string; blocks?: string }) => {
      const port = Number(opts.port);
      if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`invalid port: ${opts.port}`);
      const logger = makeLogger('coffer-server');
      const dir = opts.data ?? join(dataDir(globals()), 'server');
      const adminToken = opts.adminToken ?? process.env.COFFER_ADMIN_TOKEN;
      const metadataUrl = opts.metadata ?? process.env.COFFER_METADATA_URL;
      const blocksUrl = opts.blocks ?? process.env.COFFER_BLOCKS_URL;
      const server = await startServer({
        dataDir: dir,
        host: opts.host,
        port,
        logger,
        ...(adminToken ? { adminToken } : {}),
        ...(metadataUrl ? { metadataUrl } : {}),
        ...(blocksUrl ? { blocksUrl } : {}),
      });
      process.stdout.write(
        `coffer server listening on ${server.url}\ndata: ${dir}\nadmin token: ${adminToken ? '(given)' : join(dir, 'admin-token')}\n` +
          `metadata: ${metadataUrl ? redactUrl(metadataUrl) : 'sqlite: (in data)'}\nblocks: ${blocksUrl ? redactUrl(blocksUrl) : 'folder: (in data)'}\n`,
      );
      const stop = async () => {
        logger.info('shutting down: draining requests');
        await server.close();
        process.exit(0);
      };
      process.once('SIGINT', () => void stop());
      process.once('SIGTERM', () => void stop());
    });
}
