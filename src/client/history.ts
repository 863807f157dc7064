import { pino, type Logger } from 'pino';
import { BlockCryptoPool, sodiumReady, type DeviceKeys } from '../crypto/index.js';
import { CofferError } from '../errors.js';
import type { Manifest } from '../model/manifests.js';
import type { CertificateChain } from './certificates.js';
import { ServerConnection } from './connection.js';
import { RemoteWorkspace, WorkspaceKeys, type RemoteManifest } from './remote.js';
import { TrustState, trustStateFile } from './trust-state.js';
import { deviceDataDir, findWorkspace, listWorkspaces, verifiedChain, type WorkspaceInfo } from './workspaces.js';

/**
 * History works against the server only (old versions are kept there, blocks are immutable): it never
 * touches the local store a running mount owns. A restore is an ordinary new version, so every device
 * (a running mount included) picks it up like any other change.
 */
export interface RemoteView {
  info: WorkspaceInfo;
  remote: RemoteWorkspace;
  /** The organization's certificate chain, verified (and checked against what this device verified before). */
  chain: CertificateChain;
  close(): Promise<void>;
}

export async function openRemoteView(device: DeviceKeys, dataRoot: string, workspace: string, logger: Logger = pino({ level: 'silent' })): Promise<RemoteView> {
  await sodiumReady();
  const conn = new ServerConnection(device.serverUrl, device);
  const pool = new BlockCryptoPool({ size: 1 });
  let trust: TrustState | null = null;
  try {
    const { workspaces, online } = await listWorkspaces(device, dataRoot, conn);
    if (!online) throw new CofferError('offline', 'history needs the server, which is unreachable');
    const info = findWorkspace(workspaces, workspace);
    trust = TrustState.open(trustStateFile(deviceDataDir(dataRoot, device)));
    const memory = trust;
    const chain = await verifiedChain(conn, device, memory);
    const keys = WorkspaceKeys.open(info.realmId, info.sealedKeys, device, chain);
    const refresh = async () => {
      await chain.refresh((since) => conn.listCertificates(since), memory);
    };
    const remote = new RemoteWorkspace(info.realmId, conn, keys, chain, device, pool, logger, refresh, null, memory);
    return {
      info,
      remote,
      chain,
      close: async () => {
        memory.close();
        await pool.close();
        conn.close();
      },
    };
  } catch (err) {
    trust?.close();
    await pool.close();
    conn.close();
    throw err;
  }
}

/** Walks a workspace path over the latest manifests on the server. */
export async function resolveRemotePath(view: RemoteView, path: string): Promise<RemoteManifest> {
  let current = await view.remote.fetchManifest(view.info.realmId);
  for (const name of path.split('/').filter(Boolean)) {
    const m: Manifest = current.manifest;
    if (m.type !== 'folder' && m.type !== 'workspace') throw new CofferError('not_a_directory', `${name}: a parent is not a folder`);
    const id = m.children[name];
    if (id === undefined) throw new CofferError('not_found', `no such file or folder: ${path}`);
    current = await view.remote.fetchManifest(id);
  }
  return current;
}

export async function entryHistory(view: RemoteView, path: string): Promise<RemoteManifest[]> {
  const latest = await resolveRemotePath(view, path);
  return view.remote.history(latest.manifest.id);
}

/** Writes an old version's content back as a new version (files only). Returns the new version number. */
export async function restoreVersion(view: RemoteView, path: string, which: { version?: number; at?: number }): Promise<{ from: number; to: number }> {
  const latest = await resolveRemotePath(view, path);
  if (latest.manifest.type !== 'file') throw new CofferError('is_a_directory', 'restore works on files (restore a folder file by file)');
  const old = await view.remote.fetchManifest(latest.manifest.id, which);
  if (old.manifest.type !== 'file') throw new CofferError('integrity', 'that version is not a file');
  const restored = { ...old.manifest, parent: latest.manifest.parent, updated: Date.now() };
  await view.remote.uploadManifest(restored, latest.version + 1);
  return { from: old.version, to: latest.version + 1 };
}
