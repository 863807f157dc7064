import type { Command } from 'commander';
import { startServer } from '../server/main.js';
import { dataDir, makeLogger, type GlobalOptions } from './context.js';
import { join } from 'node:path';

export function registerServerCommand(program: Command, globals: () => GlobalOptions): void {
  program
    .command('server')
    .description('run the embedded Coffer server (SQLite metadata + block folder) in the foreground')
    .option('--data <dir>', 'server data directory (default: <data-dir>/server)')
    .option('--host <host>', 'address to listen on', '127.0.0.1')
    .option('--port <port>', 'TCP port (0 picks a free one)', '6770')
    .option('--admin-token <token>', 'server administration token (default: COFFER_ADMIN_TOKEN or <data>/admin-token, created on first start)')
    .action(async (opts: { data?: string; host: string; port: string; adminToken?: string }) => {
      const port = Number(opts.port);
      if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`invalid port: ${opts.port}`);
      const logger = makeLogger('coffer-server');
      const dir = opts.data ?? join(dataDir(globals()), 'server');
      const adminToken = opts.adminToken ?? process.env.COFFER_ADMIN_TOKEN;
      const server = await startServer({ dataDir: dir, host: opts.host, port, logger, ...(adminToken ? { adminToken } : {}) });
      process.stdout.write(`coffer server listening on ${server.url}\ndata: ${dir}\nadmin token: ${adminToken ? '(given)' : join(dir, 'admin-token')}\n`);
      const stop = async () => {
        logger.info('shutting down: draining requests');
        await server.close();
        process.exit(0);
      };
      process.once('SIGINT', () => void stop());
      process.once('SIGTERM', () => void stop());
    });
}
