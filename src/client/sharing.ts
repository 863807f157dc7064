import { randomBytes } from 'node:crypto';
import { sealToPublicKey, sodiumReady, workspaceKeyDigest, type DeviceKeys } from '../crypto/index.js';
import { signCertificate } from '../model/certificates.js';
import { CofferError } from '../errors.js';
import type { Role } from '../protocol/schemas.js';
import type { KnownUser } from './certificates.js';
import type { MemberKey, ServerConnection } from './connection.js';
import { newId } from '../model/ids.js';
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
  const sealed = (await sealedFor(device, conn, realmId, [user.userId])).map(({ keyIndex, sealedKey }) => ({ keyIndex, sealedKey }));
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
  const current = Math.max(...mine.keys.map((k) => k.keyIndex));
  if (!mine.rotationNeeded) return current; // another owner's client rotated already (they race after a revocation)
  const next = current + 1;
  const key = randomBytes(32);
  const members = await conn.listMembers(realmId);
  const sealed = members.map((m) => {
    const user = chain.users.get(m.userId);
    if (!user || user.revokedAt !== null) throw new CofferError('forbidden', `member ${m.userId} is not an active certified user`);
    return { userId: m.userId, sealedKey: sealToPublicKey(key, user.publicKey) };
  });
  const certificate = signCertificate(
    { type: 'realm_key', realmId, keyIndex: next, keyDigest: workspaceKeyDigest(key), timestamp: Date.now(), author: device.deviceId },
    device.signingKey,
  );
  try {
    await conn.addRealmKey(realmId, next, sealed, certificate);
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

/** A group by name or id, from the verified chain. */
export async function findGroup(device: DeviceKeys, conn: ServerConnection, nameOrId: string): Promise<{ groupId: string; name: string; members: string[] }> {
  const chain = await verifiedChain(conn, device);
  const matches = [...chain.groups.values()].filter((g) => g.groupId === nameOrId || g.name === nameOrId);
  if (matches.length === 0) throw new CofferError('not_found', `unknown group "${nameOrId}"`);
  if (matches.length > 1) throw new CofferError('bad_request', `several groups are named "${nameOrId}": use the id`);
  const g = matches[0]!;
  return { groupId: g.groupId, name: g.name, members: chain.groupMembers(g.groupId) };
}

export async function createGroup(device: DeviceKeys, conn: ServerConnection, name: string): Promise<string> {
  const groupId = newId();
  await conn.createGroup(signCertificate({ type: 'group', groupId, name, timestamp: Date.now(), author: device.deviceId }, device.signingKey));
  return groupId;
}

export async function setGroupMembership(device: DeviceKeys, conn: ServerConnection, group: string, who: string, member: boolean): Promise<KnownUser> {
  const g = await findGroup(device, conn, group);
  const user = await findUser(device, conn, who);
  const cert = signCertificate({ type: 'group_member', groupId: g.groupId, userId: user.userId, member, timestamp: Date.now(), author: device.deviceId }, device.signingKey);
  await conn.setGroupMember(g.groupId, cert);
  // A new member needs the keys of the workspaces shared with the group: seal ours to them.
  if (member) for (const r of await conn.listRealms()) if (r.keysMissing && (r.role === 'owner' || r.role === 'manager')) await sealKeysToMembers(device, conn, r.realmId);
  return user;
}

/** Every key of the workspace this user holds, sealed to each given user (certified public keys). */
async function sealedFor(device: DeviceKeys, conn: ServerConnection, realmId: string, userIds: readonly string[]): Promise<MemberKey[]> {
  await sodiumReady();
  const chain = await verifiedChain(conn, device);
  const mine = (await conn.listRealms()).find((r) => r.realmId === realmId);
  if (!mine) throw new CofferError('forbidden', 'you are not a member of this workspace');
  const keys = WorkspaceKeys.open(realmId, mine.keys, device, chain);
  const out: MemberKey[] = [];
  for (const userId of userIds) {
    const user = chain.users.get(userId);
    if (!user || user.revokedAt !== null) continue;
    for (const [keyIndex, key] of keys.entries()) out.push({ userId, keyIndex, sealedKey: sealToPublicKey(key, user.publicKey) });
  }
  return out;
}

export async function shareWithGroup(device: DeviceKeys, conn: ServerConnection, realmId: string, group: string, role: Role | null): Promise<string> {
  const g = await findGroup(device, conn, group);
  const keys = role === null ? [] : await sealedFor(device, conn, realmId, g.members);
  const cert = signCertificate({ type: 'realm_group_role', realmId, groupId: g.groupId, role, timestamp: Date.now(), author: device.deviceId }, device.signingKey);
  await conn.setGroupRole(realmId, g.groupId, role, keys, cert);
  return g.name;
}

/** Seals the workspace keys to members that lack them (the server keeps existing copies). */
export async function sealKeysToMembers(device: DeviceKeys, conn: ServerConnection, realmId: string): Promise<void> {
  const members = (await conn.listMembers(realmId)).map((m) => m.userId);
  const keys = await sealedFor(device, conn, realmId, members);
  if (keys.length > 0) await conn.addMemberKeys(realmId, keys);
}
