import type { Command } from 'commander';
import { entryHistory, openRemoteView, restoreVersion } from '../client/history.js';
import { verifiedChain } from '../client/workspaces.js';
import { ServerConnection } from '../client/connection.js';
import { CofferError } from '../errors.js';
import { dataDir, loadDevice, type GlobalOptions } from './context.js';
import { parseAt } from './mount.js';

export function registerHistoryCommands(program: Command, globals: () => GlobalOptions): void {
  program
    .command('history <workspace> <path>')
    .description('list the versions of a file or folder (path inside the workspace, e.g. /reports/q3.txt)')
    .option('--json', 'machine-readable output', false)
    .action(async (workspace: string, path: string, opts: { json: boolean }) => {
      const g = globals();
      const device = await loadDevice(g);
      const view = await openRemoteView(device, dataDir(g), workspace);
      const conn = new ServerConnection(device.serverUrl, device);
      try {
        const versions = await entryHistory(view, path);
        const chain = await verifiedChain(conn, device);
        const rows = versions.map((v) => {
          const userId = chain.devices.get(v.author)?.userId;
          return {
            version: v.version,
            date: new Date(v.createdAt).toISOString(),
            author: (userId && chain.users.get(userId)?.handle) ?? v.author,
            size: v.manifest.type === 'file' ? v.manifest.size : null,
          };
        });
        if (opts.json) process.stdout.write(`${JSON.stringify(rows)}\n`);
        else for (const r of rows) process.stdout.write(`v${r.version}  ${r.date}  ${r.size === null ? 'folder' : `${r.size} B`}  ${r.author}\n`);
      } finally {
        conn.close();
        await view.close();
      }
    });

  program
    .command('restore <workspace> <path>')
    .description('write an old version of a file back as its newest version (every device sees it)')
    .option('--version <n>', 'the version to restore (see coffer history)')
    .option('--at <date>', 'the version current at that date')
    .action(async (workspace: string, path: string, opts: { version?: string; at?: string }) => {
      if ((opts.version === undefined) === (opts.at === undefined)) throw new CofferError('bad_request', 'give exactly one of --version <n> or --at <date>');
      const which = opts.version !== undefined ? { version: Number(opts.version) } : { at: parseAt(opts.at!) };
      if (which.version !== undefined && (!Number.isInteger(which.version) || which.version < 1)) throw new CofferError('bad_request', '--version must be a positive integer');
      const g = globals();
      const device = await loadDevice(g);
      const view = await openRemoteView(device, dataDir(g), workspace);
      try {
        const r = await restoreVersion(view, path, which);
        process.stdout.write(`restored ${path}: version ${r.from} is now version ${r.to}\n`);
      } finally {
        await view.close();
      }
    });
}
