import { randomBytes } from 'node:crypto';
import { sealToPublicKey, sodiumReady, type DeviceKeys } from '../crypto/index.js';
import { signCertificate } from '../model/certificates.js';
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
  const certificate = signCertificate({ type: 'realm_role', realmId, userId: user.userId, role, timestamp: Date.now(), author: device.deviceId }, device.signingKey);
  if (role === null) {
    await conn.setRole(realmId, user.userId, null, [], certificate);
    return user;
  }
  const mine = (await conn.listRealms()).find((r) => r.realmId === realmId);
  if (!mine) throw new CofferError('forbidden', 'you are not a member of this workspace');
  const keys = WorkspaceKeys.open(mine.keys, device.userPublicKey, device.userSecretKey);
  const sealed = keys.entries().map(([keyIndex, key]) => ({ keyIndex, sealedKey: sealToPublicKey(key, user.publicKey) }));
  await conn.setRole(realmId, user.userId, role, sealed, certificate);
  return user;
}

export async function listMembers(device: DeviceKeys, conn: ServerConnection, realmId: string): Promise<Array<{ userId: string; handle: string; role: Role }>> {
  const chain = await verifiedChain(conn, device);
  return (await conn.listMembers(realmId)).map((m) => ({ ...m, handle: chain.users.get(m.userId)?.handle ?? '(unknown user)' }));
}

/**
 * Rotates a workspace's key: a fresh key sealed to every current member (public keys from the
 * verified chain). New data uses it; old data stays readable with the older keys members keep.
 */
export async function rotateWorkspaceKey(device: DeviceKeys, conn: ServerConnection, realmId: string): Promise<number> {
  await sodiumReady();
  const chain = await verifiedChain(conn, device);
  const mine = (await conn.listRealms()).find((r) => r.realmId === realmId);
  if (!mine) throw new CofferError('forbidden', 'you are not a member of this workspace');
  const next = Math.max(...mine.keys.map((k) => k.keyIndex)) + 1;
  const key = randomBytes(32);
  const members = await conn.listMembers(realmId);
  const sealed = members.map((m) => {
    const user = chain.users.get(m.userId);
    if (!user || user.revokedAt !== null) throw new CofferError('forbidden', `member ${m.userId} is not an active certified user`);
    return { userId: m.userId, sealedKey: sealToPublicKey(key, user.publicKey) };
  });
  try {
    await conn.addRealmKey(realmId, next, sealed);
  } catch (err) {
    // Another owner's client rotated first (they race right after a revocation): that is the goal.
    if (!(err instanceof CofferError && err.code === 'conflict')) throw err;
    const now = (await conn.listRealms()).find((r) => r.realmId === realmId);
    if (!now || now.rotationNeeded) throw err;
    return Math.max(...now.keys.map((k) => k.keyIndex));
  } finally {
    key.fill(0);
  }
  return next;
}

/** Revokes a user (admins), then rotates the keys of the workspaces this device owns that they could read. */
export async function revokeUser(device: DeviceKeys, conn: ServerConnection, handleOrId: string): Promise<{ user: KnownUser; rotated: string[] }> {
  const user = await findUser(device, conn, handleOrId);
  const cert = signCertificate({ type: 'revoked', userId: user.userId, timestamp: Date.now(), author: device.deviceId }, device.signingKey);
  await conn.revokeUser(user.userId, cert);
  const rotated: string[] = [];
  for (const r of await conn.listRealms()) {
    if (r.rotationNeeded && r.role === 'owner') {
      await rotateWorkspaceKey(device, conn, r.realmId);
      rotated.push(r.realmId);
    }
  }
  return { user, rotated };
}
