import type { Command } from 'commander';
import { fsckWorkspace, formatFsckReport, localStoreFileOf } from '../client/fsck.js';
import { openRemoteView } from '../client/history.js';
import { deviceDataDir } from '../client/workspaces.js';
import { dataDir, loadDevice, makeLogger, type GlobalOptions } from './context.js';

/** `coffer fsck <workspace>`: exit 0 when everything verifies, 1 on any problem (each printed with its path). */
export function registerFsckCommand(program: Command, globals: () => GlobalOptions): void {
  program
    .command('fsck <workspace>')
    .description('verify a workspace end to end: certificates, every manifest version (signature, author role, version chain), every block (presence, digest, decryption); exit 1 on any problem')
    .option('--latest-only', 'check only the latest version of each manifest', false)
    .option('--skip-blocks', 'do not download blocks (manifests only)', false)
    .option('--json', 'machine-readable report', false)
    .action(async (workspace: string, opts: { latestOnly: boolean; skipBlocks: boolean; json: boolean }) => {
      const g = globals();
      const device = await loadDevice(g);
      const logger = makeLogger('coffer-fsck', 'error');
      const view = await openRemoteView(device, dataDir(g), workspace, logger);
      try {
        const report = await fsckWorkspace(view, {
          latestOnly: opts.latestOnly,
          skipBlocks: opts.skipBlocks,
          localStoreFile: localStoreFileOf(deviceDataDir(dataDir(g), device), view.info.realmId),
          logger,
        });
        process.stdout.write(opts.json ? `${JSON.stringify(report)}\n` : formatFsckReport(report));
        if (report.problems.length > 0) process.exitCode = 1;
      } finally {
        await view.close();
      }
    });
}
