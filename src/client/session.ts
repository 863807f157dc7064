import { join } from 'node:path';
import type { Logger } from 'pino';
import { BlockCryptoPool, sodiumReady, type DeviceKeys } from '../crypto/index.js';
import { CofferError } from '../errors.js';
import { DEFAULT_BLOCK_SIZE } from '../model/manifests.js';
import { BlockReader } from './block-reader.js';
import { CertificateChain } from './certificates.js';
import { ServerConnection } from './connection.js';
import { LocalStore } from './local-store.js';
import { RemoteWorkspace, WorkspaceKeys } from './remote.js';
import { SyncEngine } from './sync/sync-engine.js';
import { WorkspaceEngine } from './workspace/engine.js';
import { EntryTable } from './workspace/entries.js';
import { deviceDataDir, findWorkspace, listWorkspaces, type WorkspaceInfo } from './workspaces.js';

export interface SessionOptions {
  device: DeviceKeys;
  /** Workspace name or id. */
  workspace: string;
  /** Root of local data (XDG data dir by default). */
  dataRoot: string;
  cacheBytes: number;
  readOnly: boolean;
  logger: Logger;
  blockSize?: number;
  pollMs?: number;
  debounceMs?: number;
}

/** Everything one mounted workspace needs, opened and wired together; `close()` undoes it. */
export class WorkspaceSession {
  private constructor(
    readonly info: WorkspaceInfo,
    readonly engine: WorkspaceEngine,
    readonly sync: SyncEngine,
    readonly store: LocalStore,
    private readonly conn: ServerConnection,
    private readonly pool: BlockCryptoPool,
  ) {}

  static async open(opts: SessionOptions): Promise<WorkspaceSession> {
    await sodiumReady();
    const { device, logger } = opts;
    const conn = new ServerConnection(device.serverUrl, device);
    const { workspaces, online } = await listWorkspaces(device, opts.dataRoot, conn);
    const info = findWorkspace(workspaces, opts.workspace);
    const readOnly = opts.readOnly || info.role === 'reader';
    const dir = deviceDataDir(opts.dataRoot, device);
    const store = new LocalStore(join(dir, `${info.realmId}.sqlite`), device.localKey, opts.cacheBytes);
    const pool = new BlockCryptoPool();
    try {
      const chain = new CertificateChain(device.rootVerifyKey);
      chain.add(store.loadCertificates());
      const refreshCertificates = async () => {
        const fresh = await conn.listCertificates(chain.index);
        chain.add(fresh);
        store.saveCertificates(fresh);
      };
      if (online) await refreshCertificates();
      const keys = WorkspaceKeys.open(info.sealedKeys, device.userPublicKey, device.userSecretKey);
      const log = logger.child({ workspace: info.realmId.slice(0, 8) });
      const remote = new RemoteWorkspace(info.realmId, conn, keys, chain, device, pool, log, refreshCertificates);
      const entries = new EntryTable(store, remote, log);
      try {
        await entries.get(info.realmId);
      } catch (err) {
        if (err instanceof CofferError && err.code === 'offline') {
          throw new CofferError('offline', `workspace ${info.name} was never opened on this device and the server is unreachable`);
        }
        throw err;
      }
      // Blocks written before a crash but never referenced by a saved manifest are dropped.
      const referenced = new Set<string>();
      for (const id of store.allManifestIds()) {
        const m = store.loadManifest(id)?.manifest;
        if (m?.type === 'file') for (const b of m.blocks) referenced.add(b.id);
      }
      const orphans = store.dropOrphanDirtyBlocks(referenced);
      if (orphans > 0) log.info({ orphans }, 'dropped blocks left unreferenced by a crash');
      const reader = new BlockReader(store, remote, (ref, ct) => remote.decryptBlock(ref, ct), log);
      const engine = new WorkspaceEngine(
        entries,
        reader,
        pool,
        store,
        { realmId: info.realmId, readOnly, blockSize: opts.blockSize ?? DEFAULT_BLOCK_SIZE, dataDir: dir },
        log,
      );
      const sync = new SyncEngine(
        entries,
        store,
        remote,
        {
          debounceMs: opts.debounceMs ?? 1000,
          pollMs: opts.pollMs ?? 2000,
          uploadConcurrency: 4,
          deviceId: device.deviceId,
          isBusy: (id) => engine.isBusy(id),
        },
        log,
      );
      return new WorkspaceSession({ ...info, role: info.role }, engine, sync, store, conn, pool);
    } catch (err) {
      store.close();
      await pool.close();
      conn.close();
      throw err;
    }
  }

  async close(): Promise<void> {
    await this.sync.stop();
    await this.engine.close();
    this.store.close();
    await this.pool.close();
    this.conn.close();
  }
}
