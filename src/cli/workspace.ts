import type { Command } from 'commander';
import { ServerConnection } from '../client/connection.js';
import { createWorkspace, listWorkspaces } from '../client/workspaces.js';
import { dataDir, loadDevice, type GlobalOptions } from './context.js';

export function registerWorkspaceCommands(program: Command, globals: () => GlobalOptions): void {
  const ws = program.command('workspace').description('create and list workspaces');
  ws.command('create <name>')
    .description('create a workspace you own')
    .action(async (name: string) => {
      const device = await loadDevice(globals());
      const conn = new ServerConnection(device.serverUrl, device);
      try {
        const id = await createWorkspace(device, conn, name);
        process.stdout.write(`workspace ${name} created (id ${id})\n`);
      } finally {
        conn.close();
      }
    });
  ws.command('list')
    .description('list your workspaces and your role in each')
    .option('--json', 'machine-readable output', false)
    .action(async (opts: { json: boolean }) => {
      const g = globals();
      const device = await loadDevice(g);
      const conn = new ServerConnection(device.serverUrl, device);
      try {
        const { workspaces, online } = await listWorkspaces(device, dataDir(g), conn);
        if (opts.json) {
          process.stdout.write(`${JSON.stringify(workspaces.map((w) => ({ id: w.realmId, name: w.name, role: w.role })))}\n`);
          return;
        }
        if (!online) process.stderr.write('server unreachable: showing the list cached on this device\n');
        for (const w of workspaces) process.stdout.write(`${w.realmId}  ${w.role.padEnd(11)}  ${w.name}\n`);
        if (workspaces.length === 0) process.stdout.write('no workspaces yet: coffer workspace create <name>\n');
      } finally {
        conn.close();
      }
    });
}
