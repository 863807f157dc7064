import { join } from 'node:path';
import { hostname } from 'node:os';
import { createInterface } from 'node:readline';
import type { Command } from 'commander';
import { ServerConnection } from '../client/connection.js';
import { claim, greet, invitationAddress, parseInvitationAddress } from '../client/invitations.js';
import { createGroup, listMembers, revokeUser, setGroupMembership, setMemberRole, shareWithGroup } from '../client/sharing.js';
import { findWorkspace, listWorkspaces, verifiedChain } from '../client/workspaces.js';
import type { DeviceKeys } from '../crypto/index.js';
import { CofferError } from '../errors.js';
import { ROLES, type Role } from '../protocol/schemas.js';
import { dataDir, devicesDir, loadDevice, readPassword, type GlobalOptions } from './context.js';

/** The SAS check: `--sas CODE` (scripts) must equal the shown code; otherwise ask on the terminal. */
async function confirmSas(shown: string, given: string | undefined): Promise<void> {
  process.stdout.write(`Short authentication string: ${shown}\nCompare it with the other person's screen (by phone or in person).\n`);
  if (given !== undefined) {
    if (given.toUpperCase() !== shown) throw new CofferError('integrity', 'the codes differ: someone may be intercepting; enrolment refused');
    return;
  }
  if (!process.stdin.isTTY) throw new CofferError('bad_request', 'no terminal to confirm the code: pass --sas <code> after comparing');
  const rl = createInterface({ input: process.stdin, output: process.stdout });
  const answer = await new Promise<string>((res) => rl.question('Do both screens show the same code? [y/N] ', res));
  rl.close();
  if (!/^y(es)?$/i.test(answer.trim())) throw new CofferError('integrity', 'codes not confirmed: enrolment refused');
}

async function withConn<T>(g: GlobalOptions, fn: (device: DeviceKeys, conn: ServerConnection) => Promise<T>): Promise<T> {
  const device = await loadDevice(g);
  const conn = new ServerConnection(device.serverUrl, device);
  try {
    return await fn(device, conn);
  } finally {
    conn.close();
  }
}

async function realmOf(g: GlobalOptions, device: DeviceKeys, conn: ServerConnection, workspace: string): Promise<string> {
  return findWorkspace((await listWorkspaces(device, dataDir(g), conn)).workspaces, workspace).realmId;
}

function parseRole(role: string): Role {
  if (!(ROLES as readonly string[]).includes(role)) throw new CofferError('bad_request', `role must be one of ${ROLES.join(', ')}`);
  return role as Role;
}

export function registerPeopleCommands(program: Command, globals: () => GlobalOptions): void {
  const invite = program.command('invite').description('invite a new user (admins) or a new device of yours');
  invite
    .command('user <handle>')
    .description('invite a person; give them the printed address, then run "coffer greet <id>" together')
    .action((handle: string) =>
      withConn(globals(), async (device, conn) => {
        const r = await conn.createInvitation('user', handle);
        process.stdout.write(`invitation ${r.invitationId} for ${handle}\nclaim with: coffer claim ${invitationAddress(device.serverUrl, device.orgId, r.token)}\nthen greet with: coffer greet ${r.invitationId}\n`);
      }),
    );
  invite
    .command('device')
    .description('invite a new device of your own')
    .action(() =>
      withConn(globals(), async (device, conn) => {
        const r = await conn.createInvitation('device');
        process.stdout.write(`invitation ${r.invitationId}\nclaim with: coffer claim ${invitationAddress(device.serverUrl, device.orgId, r.token)}\nthen greet with: coffer greet ${r.invitationId}\n`);
      }),
    );
  invite
    .command('list')
    .description('your pending invitations')
    .action(() =>
      withConn(globals(), async (_device, conn) => {
        const list = await conn.listInvitations();
        for (const i of list) process.stdout.write(`${i.invitationId}  ${i.type.padEnd(6)}  ${i.status.padEnd(8)}  ${i.handle ?? ''}\n`);
        if (list.length === 0) process.stdout.write('no pending invitations\n');
      }),
    );
  invite
    .command('cancel <invitationId>')
    .description('cancel a pending invitation (its token is refused from then on)')
    .action((id: string) =>
      withConn(globals(), async (_device, conn) => {
        await conn.cancelInvitation(id);
        process.stdout.write(`invitation ${id} cancelled\n`);
      }),
    );

  program
    .command('greet <invitationId>')
    .description('greet the person claiming an invitation: shows a code to compare, then certifies them')
    .option('--sas <code>', 'the code the claimer sees (non-interactive confirmation)')
    .action((id: string, opts: { sas?: string }) =>
      withConn(globals(), async (device, conn) => {
        const g = await greet(device, conn, id);
        await confirmSas(g.sas, opts.sas);
        const r = await g.finish();
        process.stdout.write(`enrolled ${g.type === 'user' ? `user ${g.handle}` : 'a new device'} (device ${r.deviceId})\n`);
      }),
    );

  program
    .command('claim <address>')
    .description('join with an invitation address (http://host:port/<org>/<token>); shows a code to compare with the greeter')
    .option('--sas <code>', 'the code the greeter sees (non-interactive confirmation)')
    .option('--device <label>', 'a label for this device', hostname())
    .action(async (address: string, opts: { sas?: string; device: string }) => {
      const g = globals();
      const { serverUrl, orgId, token } = parseInvitationAddress(address);
      const c = await claim(serverUrl, orgId, token);
      await confirmSas(c.sas, opts.sas);
      const password = await readPassword('New device password: ');
      if (password.length < 8) throw new CofferError('bad_request', 'the password must have at least 8 characters');
      const deviceFile = g.deviceFile ?? join(devicesDir(g), `${orgId}-${(c.handle ?? 'device').replace(/[^A-Za-z0-9@._-]/g, '_')}-${Date.now().toString(36)}.device`);
      const keys = await c.finish({ password, deviceFile, label: opts.device });
      process.stdout.write(`joined ${orgId} as ${keys.userHandle}\ndevice file: ${deviceFile}\n`);
    });

  const user = program.command('user').description('users of the organization');
  user
    .command('list')
    .description('users, as certified in the verified certificate chain')
    .action(() =>
      withConn(globals(), async (device, conn) => {
        const chain = await verifiedChain(conn, device);
        for (const u of chain.users.values()) process.stdout.write(`${u.userId}  ${u.profile.padEnd(8)}  ${u.handle}${u.revokedAt !== null ? '  (revoked)' : ''}\n`);
      }),
    );
  user
    .command('revoke <user>')
    .description('revoke a user (admins): their devices are refused at once; workspaces they could read get new keys')
    .action((who: string) =>
      withConn(globals(), async (device, conn) => {
        const r = await revokeUser(device, conn, who);
        process.stdout.write(`${r.user.handle} revoked; rotated the keys of ${r.rotated.length} workspace(s) you own (owners' clients rotate the others on their next sync)\n`);
      }),
    );
  program
    .command('device')
    .description('devices')
    .command('list')
    .description('your devices, as certified in the verified certificate chain')
    .action(() =>
      withConn(globals(), async (device, conn) => {
        const chain = await verifiedChain(conn, device);
        for (const d of chain.devices.values()) if (d.userId === device.userId) process.stdout.write(`${d.deviceId}${d.deviceId === device.deviceId ? '  (this device)' : ''}\n`);
      }),
    );

  const group = program.command('group').description('groups of users (admins manage them; workspaces can be shared with a group)');
  group
    .command('create <name>')
    .description('create a group')
    .action((name: string) =>
      withConn(globals(), async (device, conn) => {
        const id = await createGroup(device, conn, name);
        process.stdout.write(`group ${name} created (id ${id})\n`);
      }),
    );
  group
    .command('add <group> <user>')
    .description('add a user to a group (they inherit its workspace roles)')
    .action((g: string, who: string) =>
      withConn(globals(), async (device, conn) => {
        const u = await setGroupMembership(device, conn, g, who, true);
        process.stdout.write(`${u.handle} added to ${g}\n`);
      }),
    );
  group
    .command('remove <group> <user>')
    .description('remove a user from a group (the access they inherited goes; keys are rotated)')
    .action((g: string, who: string) =>
      withConn(globals(), async (device, conn) => {
        const u = await setGroupMembership(device, conn, g, who, false);
        process.stdout.write(`${u.handle} removed from ${g}\n`);
      }),
    );
  group
    .command('list')
    .description('groups and their members, as certified')
    .action(() =>
      withConn(globals(), async (device, conn) => {
        const chain = await verifiedChain(conn, device);
        for (const g of chain.groups.values()) {
          const members = chain.groupMembers(g.groupId).map((u) => chain.users.get(u)?.handle ?? u);
          process.stdout.write(`${g.groupId}  ${g.name}: ${members.join(', ') || '(empty)'}\n`);
        }
      }),
    );

  const ws = program.commands.find((c) => c.name() === 'workspace');
  if (!ws) throw new Error('workspace command group must be registered first');
  ws.command('share <workspace> <userOrGroup>')
    .description('give a user (or with --group, a group) a role on a workspace; a direct role wins over group roles')
    .option('--role <role>', 'reader | contributor | manager | owner', 'contributor')
    .option('--group', 'share with a group instead of a user', false)
    .action((workspace: string, who: string, opts: { role: string; group: boolean }) =>
      withConn(globals(), async (device, conn) => {
        const role = parseRole(opts.role);
        const realmId = await realmOf(globals(), device, conn, workspace);
        const name = opts.group ? `group ${await shareWithGroup(device, conn, realmId, who, role)}` : (await setMemberRole(device, conn, realmId, who, role)).handle;
        process.stdout.write(`${name} is now ${role} of ${workspace}\n`);
      }),
    );
  ws.command('unshare <workspace> <userOrGroup>')
    .description('remove a user (or with --group, a group) from a workspace; its keys are rotated')
    .option('--group', 'a group instead of a user', false)
    .action((workspace: string, who: string, opts: { group: boolean }) =>
      withConn(globals(), async (device, conn) => {
        const realmId = await realmOf(globals(), device, conn, workspace);
        const name = opts.group ? `group ${await shareWithGroup(device, conn, realmId, who, null)}` : (await setMemberRole(device, conn, realmId, who, null)).handle;
        process.stdout.write(`${name} no longer has access to ${workspace}\n`);
      }),
    );
  ws.command('members <workspace>')
    .description('members of a workspace and their roles')
    .action((workspace: string) =>
      withConn(globals(), async (device, conn) => {
        for (const m of await listMembers(device, conn, await realmOf(globals(), device, conn, workspace))) process.stdout.write(`${m.role.padEnd(11)}  ${m.handle}\n`);
      }),
    );
}
