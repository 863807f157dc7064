import { join } from 'node:path';
import type { Command } from 'commander';
import { bootstrapOrganization } from '../client/organization.js';
import { ServerConnection } from '../client/connection.js';
import { CofferError } from '../errors.js';
import { devicesDir, readPassword, type GlobalOptions } from './context.js';
import { hostname } from 'node:os';

export function registerOrgCommands(program: Command, globals: () => GlobalOptions): void {
  const org = program.command('org').description('create and bootstrap organizations');
  org
    .command('create <orgId>')
    .description('create an organization on a server (needs the server administration token); prints its bootstrap token')
    .requiredOption('--server <url>', 'server URL, e.g. http://127.0.0.1:6770')
    .option('--admin-token <token>', 'server administration token (default: COFFER_ADMIN_TOKEN)')
    .action(async (orgId: string, opts: { server: string; adminToken?: string }) => {
      const token = opts.adminToken ?? process.env.COFFER_ADMIN_TOKEN;
      if (!token) throw new CofferError('bad_request', 'the server administration token is needed: --admin-token or COFFER_ADMIN_TOKEN');
      const conn = new ServerConnection(opts.server, null);
      try {
        const r = await conn.createOrganization(orgId, token);
        process.stdout.write(`organization ${r.orgId} created\nbootstrap token: ${r.bootstrapToken}\n`);
      } finally {
        conn.close();
      }
    });
  org
    .command('bootstrap <orgId>')
    .description('become the first (admin) user of a new organization; writes this device file (password from COFFER_PASSWORD or a prompt)')
    .requiredOption('--server <url>', 'server URL')
    .requiredOption('--token <token>', 'bootstrap token printed by "coffer org create"')
    .requiredOption('--user <handle>', 'your user handle, e.g. alice@example.org')
    .option('--device <label>', 'a label for this device', hostname())
    .action(async (orgId: string, opts: { server: string; token: string; user: string; device: string }) => {
      const password = await readPassword('New device password: ');
      if (password.length < 8) throw new CofferError('bad_request', 'the password must have at least 8 characters');
      const g = globals();
      const deviceFile = g.deviceFile ?? join(devicesDir(g), `${orgId}-${opts.user.replace(/[^A-Za-z0-9@._-]/g, '_')}.device`);
      const keys = await bootstrapOrganization({
        serverUrl: opts.server,
        orgId,
        bootstrapToken: opts.token,
        handle: opts.user,
        deviceLabel: opts.device,
        password,
        deviceFile,
      });
      process.stdout.write(`organization ${orgId} bootstrapped; user ${keys.userHandle} (admin)\ndevice file: ${deviceFile}\n`);
    });
}
