import { sealToPublicKey, sodiumReady, type DeviceKeys } from '../crypto/index.js';
import { CofferError } from '../errors.js';
import type { Role } from '../protocol/schemas.js';
import type { KnownUser } from './certificates.js';
import type { ServerConnection } from './connection.js';
import { WorkspaceKeys } from './remote.js';
import { verifiedChain } from './workspaces.js';

/** A user of the organization by handle or id, from the certificate chain this client verified itself. */
export async function findUser(device: DeviceKeys, conn: ServerConnection, handleOrId: string): Promise<KnownUser> {
  const chain = await verifiedChain(conn, device);
  const user = [...chain.users.values()].find((u) => u.handle === handleOrId || u.userId === handleOrId);
  if (!user) throw new CofferError('not_found', `unknown user "${handleOrId}" in organization ${device.orgId}`);
  return user;
}

/**
 * Grants `role` on a workspace: every key of the workspace is sealed to the member's public key, as
 * certified in the chain (never as the server says). `role` null removes the member.
 */
export async function setMemberRole(device: DeviceKeys, conn: ServerConnection, realmId: string, handleOrId: string, role: Role | null): Promise<KnownUser> {
  await sodiumReady();
  const user = await findUser(device, conn, handleOrId);
  if (role === null) {
    await conn.setRole(realmId, user.userId, null, []);
    return user;
  }
  const mine = (await conn.listRealms()).find((r) => r.realmId === realmId);
  if (!mine) throw new CofferError('forbidden', 'you are not a member of this workspace');
  const keys = WorkspaceKeys.open(mine.keys, device.userPublicKey, device.userSecretKey);
  const sealed = keys.entries().map(([keyIndex, key]) => ({ keyIndex, sealedKey: sealToPublicKey(key, user.publicKey) }));
  await conn.setRole(realmId, user.userId, role, sealed);
  return user;
}

export async function listMembers(device: DeviceKeys, conn: ServerConnection, realmId: string): Promise<Array<{ userId: string; handle: string; role: Role }>> {
  const chain = await verifiedChain(conn, device);
  return (await conn.listMembers(realmId)).map((m) => ({ ...m, handle: chain.users.get(m.userId)?.handle ?? '(unknown user)' }));
}
