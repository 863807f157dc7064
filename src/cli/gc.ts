import type { Command } from 'commander';
import { DEFAULT_HISTORY_MS, DEFAULT_MIN_AGE_MS, workspaceGc } from '../client/gc.js';
import { CofferError } from '../errors.js';
import { parseDuration } from '../server/gc.js';
import { dataDir, loadDevice, makeLogger, type GlobalOptions } from './context.js';

/** `coffer workspace gc`: release the workspace's unreferenced blocks (owner or manager). */
export function registerGcCommands(program: Command, globals: () => GlobalOptions): void {
  const ws = program.commands.find((c) => c.name() === 'workspace');
  if (!ws) throw new Error('the workspace command group must be registered first');
  ws.command('gc <workspace>')
    .description('release the blocks no file version within the history window references (owner or manager); the server deletes them after its retention period')
    .option('--dry-run', 'list what would be released; release nothing', false)
    .option('--history <duration>', 'keep every block of the versions current within this window, e.g. 30d (what mount --at and restore can reach)', '30d')
    .option('--min-age <duration>', 'never release blocks younger than this (uploads whose manifest is not on the server yet)', '24h')
    .option('--json', 'machine-readable report', false)
    .action(async (workspace: string, opts: { dryRun: boolean; history: string; minAge: string; json: boolean }) => {
      const historyMs = parseDuration(opts.history, '--history');
      const minAgeMs = parseDuration(opts.minAge, '--min-age');
      if (historyMs < 0 || minAgeMs < 0) throw new CofferError('bad_request', 'durations must not be negative');
      const g = globals();
      const device = await loadDevice(g);
      const report = await workspaceGc(device, dataDir(g), workspace, {
        dryRun: opts.dryRun,
        historyMs: historyMs ?? DEFAULT_HISTORY_MS,
        minAgeMs: minAgeMs ?? DEFAULT_MIN_AGE_MS,
        logger: makeLogger('coffer-gc', 'warn'),
      });
      if (opts.json) {
        process.stdout.write(`${JSON.stringify(report)}\n`);
        return;
      }
      for (const b of report.release) process.stdout.write(`${opts.dryRun ? 'would release' : 'released'} ${b.blockId}  ${b.size} B  uploaded ${new Date(b.createdAt).toISOString()}\n`);
      process.stdout.write(
        `${workspace}: ${report.storedBlocks} blocks stored, ${report.referencedBlocks} referenced by ${report.versionsRead} versions of ${report.reachableEntries} entries since ${new Date(report.cutoff).toISOString()}; ` +
          `${opts.dryRun ? 'would release' : 'released'} ${report.release.length} (${report.releaseBytes} bytes), ${report.tooYoung} too young, ${report.alreadyReleased} already released\n`,
      );
    });
}
