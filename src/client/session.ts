import { rmSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { BlockCryptoPool, sodiumReady, type DeviceKeys } from '../crypto/index.js';
import { CofferError } from '../errors.js';
import { DEFAULT_BLOCK_SIZE } from '../model/manifests.js';
import { BlockReader } from './block-reader.js';
import { CertificateChain } from './certificates.js';
import { EventStream } from './events.js';
import { rotateWorkspaceKey, sealKeysToMembers } from './sharing.js';
import { ServerConnection } from './connection.js';
import { LocalStore } from './local-store.js';
import { RemoteWorkspace, WorkspaceKeys } from './remote.js';
import { applyPins } from './pinning.js';
import { compilePatterns, preventSyncFromEnv } from './sync/prevent-sync.js';
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
  /** Names that stay local (default: editor/OS litter, or COFFER_PREVENT_SYNC). */
  preventSync?: string[];
  /** Mount the workspace as it was at this time (ms): read-only, in a throw-away local store, no sync. */
  at?: number;
}

function removeStoreFiles(file: string): void {
  for (const f of [file, `${file}-wal`, `${file}-shm`, `${file}.blocks`]) rmSync(f, { recursive: true, force: true });
}

/** Everything one mounted workspace needs, opened and wired together; `close()` undoes it. */
export class WorkspaceSession {
  private events: EventStream | null = null;
  /** The throw-away store of a view of the past, removed on close. */
  pastFile: string | null = null;

  private constructor(
    readonly info: WorkspaceInfo,
    readonly engine: WorkspaceEngine,
    readonly sync: SyncEngine,
    readonly store: LocalStore,
    private readonly conn: ServerConnection,
    private readonly pool: BlockCryptoPool,
    private readonly device: DeviceKeys,
    private readonly logger: Logger,
    private readonly remote: RemoteWorkspace,
    private readonly chain: CertificateChain,
    private readonly refreshCertificates: () => Promise<void>,
  ) {}

  /** Starts syncing and listening to the server's events (the mount calls this once mounted). */
  start(): void {
    if (this.store.getMeta('view') === 'past') return; // a view of the past neither syncs nor follows events
    this.sync.start();
    const realmId = this.info.realmId;
    this.events = new EventStream(
      this.device.serverUrl,
      this.device,
      (event) => {
        if (event.type === 'vlob' && event.realmId === realmId) this.sync.schedule(0);
        if (event.type === 'role' && event.realmId === realmId && event.userId === this.device.userId) void this.refreshRole();
        if (event.type === 'keys' && event.realmId === realmId) void this.refreshRole();
        if (event.type === 'certificate') void this.refreshRole(); // a revocation may call for a key rotation
      },
      () => {
        // (Re)connected: catch up from the checkpoint, and on a role changed while away.
        this.sync.schedule(0);
        void this.refreshRole();
      },
      this.logger,
    );
    this.events.start();
  }

  /** Follows the user's role on this workspace (reader -> read-only, without a remount). */
  async refreshRole(): Promise<void> {
    try {
      const mine = (await this.conn.listRealms()).find((r) => r.realmId === this.info.realmId);
      if (!mine) {
        this.logger.warn('access to this workspace was removed: the mount is now read-only');
        this.engine.setRole('reader');
        this.store.setMeta('role', 'none');
        return;
      }
      if (mine.rotationNeeded && mine.role === 'owner') {
        const index = await rotateWorkspaceKey(this.device, this.conn, this.info.realmId);
        this.logger.warn({ keyIndex: index }, 'a member was revoked: rotated the workspace key');
        return this.refreshRole();
      }
      if (mine.keysMissing && (mine.role === 'owner' || mine.role === 'manager')) {
        await sealKeysToMembers(this.device, this.conn, this.info.realmId);
        this.logger.info('sealed the workspace keys to new members');
      }
      await this.refreshCertificates(); // a new key comes with its certificate
      this.remote.setKeys(WorkspaceKeys.open(this.info.realmId, mine.keys, this.device, this.chain));
      this.engine.setRole(mine.role);
      this.store.setMeta('role', mine.role);
    } catch (err) {
      this.logger.debug({ err: (err as Error).message }, 'could not refresh the role');
    }
  }

  static async open(opts: SessionOptions): Promise<WorkspaceSession> {
    await sodiumReady();
    const { device, logger } = opts;
    const conn = new ServerConnection(device.serverUrl, device);
    const { workspaces, online } = await listWorkspaces(device, opts.dataRoot, conn);
    const info = findWorkspace(workspaces, opts.workspace);
    const dir = deviceDataDir(opts.dataRoot, device);
    const storeFile = join(dir, opts.at === undefined ? `${info.realmId}.sqlite` : `${info.realmId}.at-${opts.at}-${process.pid}.sqlite`);
    const store = new LocalStore(storeFile, device.localKey, opts.cacheBytes);
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
      const keys = WorkspaceKeys.open(info.realmId, info.sealedKeys, device, chain);
      const log = logger.child({ workspace: info.realmId.slice(0, 8) });
      const remote = new RemoteWorkspace(info.realmId, conn, keys, chain, device, pool, log, refreshCertificates, opts.at ?? null);
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
        { realmId: info.realmId, readOnly: opts.readOnly || opts.at !== undefined, role: info.role, blockSize: opts.blockSize ?? DEFAULT_BLOCK_SIZE, dataDir: dir },
        log,
      );
      const sync = new SyncEngine(
        entries,
        store,
        remote,
        {
          debounceMs: opts.debounceMs ?? 500,
          pollMs: opts.pollMs ?? 2000,
          uploadConcurrency: 4,
          deviceId: device.deviceId,
          isBusy: (id) => engine.isBusy(id),
          isLocalOnlyName: compilePatterns(opts.preventSync ?? preventSyncFromEnv()),
          afterRound: async () => {
            if (store.listPins().length === 0) return;
            const r = await applyPins(engine, entries, reader, store, log);
            store.setMeta('pinned', JSON.stringify(r));
          },
        },
        log,
      );
      store.setMeta('role', info.role);
      if (opts.at !== undefined) store.setMeta('view', 'past');
      const session = new WorkspaceSession(info, engine, sync, store, conn, pool, device, log, remote, chain, refreshCertificates);
      if (opts.at !== undefined) session.pastFile = storeFile;
      return session;
    } catch (err) {
      store.close();
      if (opts.at !== undefined) removeStoreFiles(storeFile);
      await pool.close();
      conn.close();
      throw err;
    }
  }

  async close(): Promise<void> {
    this.events?.stop();
    await this.sync.stop();
    await this.engine.close();
    this.store.close();
    if (this.pastFile) removeStoreFiles(this.pastFile);
    await this.pool.close();
    this.conn.close();
  }
}
