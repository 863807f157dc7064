import type { Command } from 'commander';
import { DEFAULT_GC_RETENTION_MS, parseDuration, runGc } from '../server/gc.js';
import { startServer } from '../server/main.js';
import { openStores, redactUrl } from '../server/storage.js';
import { dataDir, makeLogger, type GlobalOptions } from './context.js';
import { join } from 'node:path';

export function registerServerCommand(program: Command, globals: () => GlobalOptions): void {
  const server = program
    .command('server')
    .description('run the Coffer server in the foreground (default: embedded SQLite metadata + block folder; PostgreSQL + S3 to scale out)')
    .option('--data <dir>', 'server data directory (default: <data-dir>/server)')
    .option('--host <host>', 'address to listen on', '127.0.0.1')
    .option('--port <port>', 'TCP port (0 picks a free one)', '6770')
    .option('--admin-token <token>', 'server administration token (default: COFFER_ADMIN_TOKEN or <data>/admin-token, created on first start)')
    .option('--metadata <url>', 'metadata store: sqlite: (default, <data>/metadata.sqlite) or postgresql://user@host:port/db (default: COFFER_METADATA_URL)')
    .option('--blocks <url>', 'block store: folder: (default, <data>/blocks), s3://bucket/prefix?endpoint=http://host:port&region=… or swift://account%3Auser:key@host:port/container?auth=v1 (default: COFFER_BLOCKS_URL)')
    .option('--trust-proxy <peers>', 'load balancers allowed to set X-Forwarded-For: comma-separated addresses/CIDRs, or "true" for any peer (default: COFFER_TRUST_PROXY, else none); the auth-failure limit then counts the real client address')
    .option('--gc-interval <duration>', 'run block garbage collection this often, e.g. 1h; 0 = never (default: COFFER_GC_INTERVAL, else 1h)')
    .option('--gc-retention <duration>', 'delete blocks released longer ago than this, e.g. 7d (default: COFFER_GC_RETENTION, else 7d)')
    .action(async (opts: { data?: string; host: string; port: string; adminToken?: string; metadata?: string; blocks?: string; trustProxy?: string; gcInterval?: string; gcRetention?: string }) => {
      const port = Number(opts.port);
      if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`invalid port: ${opts.port}`);
      const logger = makeLogger('coffer-server');
      const dir = opts.data ?? join(dataDir(globals()), 'server');
      const adminToken = opts.adminToken ?? process.env.COFFER_ADMIN_TOKEN;
      const metadataUrl = opts.metadata ?? process.env.COFFER_METADATA_URL;
      const blocksUrl = opts.blocks ?? process.env.COFFER_BLOCKS_URL;
      const trustProxy = opts.trustProxy === undefined ? undefined : opts.trustProxy === 'true' ? true : opts.trustProxy;
      const gc = {
        ...(opts.gcInterval !== undefined && { intervalMs: parseDuration(opts.gcInterval, '--gc-interval') }),
        ...(opts.gcRetention !== undefined && { retentionMs: parseDuration(opts.gcRetention, '--gc-retention') }),
      };
      const server = await startServer({
        dataDir: dir,
        host: opts.host,
        port,
        logger,
        gc,
        ...(trustProxy !== undefined && { trustProxy }),
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

  server
    .command('gc')
    .description('delete blocks that clients released (coffer workspace gc) longer ago than the retention period; the stores are the server\'s own')
    .option('--data <dir>', 'server data directory (default: <data-dir>/server)')
    .option('--metadata <url>', 'metadata store (default: COFFER_METADATA_URL, else sqlite: in the data directory)')
    .option('--blocks <url>', 'block store (default: COFFER_BLOCKS_URL, else folder: in the data directory)')
    .option('--retention <duration>', 'keep blocks released less than this long ago, e.g. 7d, 12h, 0 (default: COFFER_GC_RETENTION, else 7d)')
    .option('--dry-run', 'list what would be deleted; delete nothing', false)
    .option('--json', 'machine-readable report', false)
    .action(async (opts: { data?: string; metadata?: string; blocks?: string; retention?: string; dryRun: boolean; json: boolean }) => {
      const logger = makeLogger('coffer-gc', 'warn');
      const dir = opts.data ?? join(dataDir(globals()), 'server');
      const retention = opts.retention ?? process.env.COFFER_GC_RETENTION;
      const retentionMs = retention === undefined || retention === '' ? DEFAULT_GC_RETENTION_MS : parseDuration(retention, '--retention');
      const stores = await openStores({ metadata: opts.metadata ?? process.env.COFFER_METADATA_URL, blocks: opts.blocks ?? process.env.COFFER_BLOCKS_URL, dataDir: dir, logger });
      try {
        const report = await runGc({ metadata: stores.metadata, blocks: stores.blocks, logger, now: Date.now(), retentionMs, dryRun: opts.dryRun });
        if (opts.json) {
          process.stdout.write(`${JSON.stringify(report)}\n`);
        } else {
          for (const b of report.blocks) {
            process.stdout.write(`${opts.dryRun ? 'would delete' : 'deleted'} ${b.orgId}/${b.blockId}  realm ${b.realmId}  ${b.size} B  released ${new Date(b.releasedAt).toISOString()}\n`);
          }
          for (const f of report.failed) process.stdout.write(`failed ${f.orgId}/${f.blockId}: ${f.error}\n`);
          process.stdout.write(
            `${opts.dryRun ? 'dry run: would delete' : 'deleted'} ${report.blocks.length} blocks (${report.bytes} bytes) released before ${new Date(report.cutoff).toISOString()}` +
              `${report.failed.length ? `; ${report.failed.length} failed (retried next run)` : ''}\n`,
          );
        }
        if (report.failed.length > 0) process.exitCode = 1;
      } finally {
        await stores.close();
      }
    });
}
