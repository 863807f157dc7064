import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { sealToPublicKey, sodiumReady, workspaceKeyDigest, xchachaDecrypt, xchachaEncrypt, type DeviceKeys } from '../crypto/index.js';
import { CofferError } from '../errors.js';
import { signCertificate } from '../model/certificates.js';
import { decodeWith, encode } from '../model/codec.js';
import { IdSchema, newId } from '../model/ids.js';
import { newWorkspaceManifest } from '../model/manifests.js';
import { openVlob, sealVlob } from '../model/vlob.js';
import { ROLES, type Role } from '../protocol/schemas.js';
import { CertificateChain } from './certificates.js';
import { ServerConnection } from './connection.js';
import { WorkspaceKeys } from './remote.js';
import { TrustState, trustStateFile, type CertificateMemory } from './trust-state.js';

/** A workspace as this device knows it; the sealed keys open only with the user's private key. */
export interface WorkspaceInfo {
  realmId: string;
  name: string;
  role: Role;
  sealedKeys: Array<{ keyIndex: number; sealedKey: Uint8Array }>;
}

const IndexSchema = z.strictObject({
  workspaces: z.array(
    z.strictObject({
      realmId: IdSchema,
      name: z.string(),
      role: z.enum(ROLES),
      sealedKeys: z.array(z.strictObject({ keyIndex: z.number().int().positive(), sealedKey: z.instanceof(Uint8Array) })),
    }),
  ),
});

export function deviceDataDir(dataRoot: string, device: DeviceKeys): string {
  return join(dataRoot, device.orgId, device.deviceId);
}

const INDEX_AAD = Buffer.from('coffer-local/1|workspace-index');

/** The workspace list cached for offline starts, encrypted with the device-local key. */
async function saveIndex(dir: string, device: DeviceKeys, list: WorkspaceInfo[]): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const file = join(dir, 'workspaces.bin');
  const tmp = `${file}.${randomBytes(4).toString('hex')}.tmp`;
  await writeFile(tmp, xchachaEncrypt(device.localKey, encode({ workspaces: list }), INDEX_AAD), { mode: 0o600 });
  await rename(tmp, file);
}

async function loadIndex(dir: string, device: DeviceKeys): Promise<WorkspaceInfo[]> {
  try {
    const sealed = await readFile(join(dir, 'workspaces.bin'));
    return decodeWith(IndexSchema, xchachaDecrypt(device.localKey, sealed, INDEX_AAD), 'workspace index').workspaces;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
}

/** The whole chain from the server, verified; with `memory`, also checked against what this device verified before. */
export async function verifiedChain(conn: ServerConnection, device: DeviceKeys, memory: CertificateMemory | null = null): Promise<CertificateChain> {
  const chain = new CertificateChain(device.rootVerifyKey);
  await chain.refresh((since) => conn.listCertificates(since), memory);
  return chain;
}

/** Lists the workspaces from the server (names come from their signed, encrypted root manifests), or from the local index when offline. */
export async function listWorkspaces(device: DeviceKeys, dataRoot: string, conn: ServerConnection): Promise<{ workspaces: WorkspaceInfo[]; online: boolean }> {
  await sodiumReady();
  const dir = deviceDataDir(dataRoot, device);
  let realms;
  try {
    realms = await conn.listRealms();
  } catch (err) {
    if (err instanceof CofferError && err.code === 'offline') return { workspaces: await loadIndex(dir, device), online: false };
    throw err;
  }
  const trust = TrustState.open(trustStateFile(dir));
  let chain: CertificateChain;
  try {
    chain = await verifiedChain(conn, device, trust);
  } finally {
    trust.close();
  }
  const list: WorkspaceInfo[] = [];
  for (const r of realms) {
    const keys = WorkspaceKeys.open(r.realmId, r.keys, device, chain);
    let name = `(unnamed ${r.realmId.slice(0, 8)})`;
    try {
      const rec = await conn.readVlob(r.realmId, r.realmId);
      const opened = openVlob(rec.blob, { realmId: r.realmId, vlobId: r.realmId, version: rec.version, keyIndex: rec.keyIndex }, keys.key(rec.keyIndex), (d) =>
        chain.canWrite(r.realmId, d, rec.timestamp) ? chain.verifyKeyOf(d) : undefined,
      );
      if (opened.manifest.type === 'workspace') name = opened.manifest.name;
    } catch (err) {
      if (!(err instanceof CofferError && err.code === 'not_found')) throw err;
    }
    list.push({ realmId: r.realmId, name, role: r.role, sealedKeys: r.keys });
  }
  await saveIndex(dir, device, list);
  return { workspaces: list, online: true };
}

export function findWorkspace(list: readonly WorkspaceInfo[], nameOrId: string): WorkspaceInfo {
  const byId = list.find((w) => w.realmId === nameOrId);
  if (byId) return byId;
  const byName = list.filter((w) => w.name === nameOrId);
  if (byName.length === 1) return byName[0]!;
  if (byName.length > 1) throw new CofferError('bad_request', `several workspaces are named "${nameOrId}": use the id (coffer workspace list)`);
  throw new CofferError('not_found', `unknown workspace "${nameOrId}" (coffer workspace list shows yours)`);
}

/** Creates a workspace: a new realm owned by this user, its key sealed to the user, and its signed root manifest. */
export async function createWorkspace(device: DeviceKeys, conn: ServerConnection, name: string): Promise<string> {
  await sodiumReady();
  const realmId = newId();
  const key = randomBytes(32);
  const now = Date.now();
  const owner = signCertificate({ type: 'realm_role', realmId, userId: device.userId, role: 'owner', timestamp: now, author: device.deviceId }, device.signingKey);
  const keyCert = signCertificate(
    { type: 'realm_key', realmId, keyIndex: 1, keyDigest: workspaceKeyDigest(key), timestamp: now, author: device.deviceId },
    device.signingKey,
  );
  await conn.createRealm(realmId, 1, sealToPublicKey(key, device.userPublicKey), owner, keyCert);
  const manifest = newWorkspaceManifest(realmId, name, now);
  const blob = sealVlob(manifest, { realmId, vlobId: realmId, version: 1, keyIndex: 1 }, { deviceId: device.deviceId, timestamp: now }, device.signingKey, key);
  await conn.writeVlob(realmId, realmId, 1, 1, now, blob);
  return realmId;
}

