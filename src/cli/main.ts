#!/usr/bin/env node
import { Command } from 'commander';
import { CofferError, describeError } from '../errors.js';
import type { GlobalOptions } from './context.js';
import { registerFsckCommand } from './fsck.js';
import { registerGcCommands } from './gc.js';
import { registerHistoryCommands } from './history.js';
import { registerMountCommands } from './mount.js';
import { registerOrgCommands } from './org.js';
import { registerPeopleCommands } from './people.js';
import { registerServerCommand } from './server.js';
import { registerStatusCommands } from './status.js';
import { registerWorkspaceCommands } from './workspace.js';

const program = new Command();
program
  .name('coffer')
  .description('Coffer: end-to-end encrypted file sharing with an ordinary folder (FUSE mount)')
  .version('0.1.0')
  .option('--config-dir <dir>', 'configuration directory (device files); default COFFER_CONFIG_DIR or $XDG_CONFIG_HOME/coffer')
  .option('--data-dir <dir>', 'local data directory (caches, local stores); default COFFER_DATA_DIR or $XDG_DATA_HOME/coffer')
  .option('--device-file <file>', 'device file to use; default COFFER_DEVICE_FILE or the only one in <config-dir>/devices')
  .enablePositionalOptions() // global options go before the command: `coffer restore --version N` is the restore's option
  .showHelpAfterError();

const globals = (): GlobalOptions => program.opts<GlobalOptions>();
registerServerCommand(program, globals);
registerOrgCommands(program, globals);
registerWorkspaceCommands(program, globals);
registerGcCommands(program, globals);
registerMountCommands(program, globals);
registerStatusCommands(program, globals);
registerPeopleCommands(program, globals);
registerHistoryCommands(program, globals);
registerFsckCommand(program, globals);

program.parseAsync(process.argv).catch((err: unknown) => {
  const code = err instanceof CofferError ? ` [${err.code}]` : '';
  process.stderr.write(`coffer: ${err instanceof CofferError ? err.message : describeError(err)}${code}\n`);
  process.exit(err instanceof CofferError && err.code === 'wrong_password' ? 3 : 1);
});
