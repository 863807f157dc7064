import { rmSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { BlockCryptoPool, openBlock, sodiumReady, type DeviceKeys } from '../crypto/index.js';
import { CofferError, IntegrityError } from '../errors.js';
import { DEFAULT_BLOCK_SIZE, type BlockRef } from '../model/manifests.js';
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
import { TrustState, trustStateFile } from './trust-state.js';
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

/** The path of an entry inside its workspace, from the local manifests (undefined if it is not reachable from the root). */
function entryPath(entries: EntryTable, rootId: string, id: string): string | undefined {
  const names: string[] = [];
  let cur = id;
  for (let depth = 0; depth < 4096; depth++) {
    if (cur === rootId) return `/${names.reverse().join('/')}`;
    const m = entries.peek(cur)?.manifest;
    if (!m || (m.type !== 'file' && m.type !== 'folder')) return undefined;
    const parent = entries.peek(m.parent)?.manifest;
    if (!parent || (parent.type !== 'folder' && parent.type !== 'workspace')) return undefined;
    const name = Object.keys(parent.children).find((n) => parent.children[n] === cur);
    if (name === undefined) return undefined;
    names.push(name);
    cur = m.parent;
  }
  return undefined;
}

/** Blocks up to this size are opened on the event loop rather than in the worker pool. */
const INLINE_OPEN_BYTES = 64 * 1024;

function removeStoreFiles(file: string): void {
  for (const f of [file, `${file}-wal`, `${file}-shm`, `${file}.blocks`]) rmSync(f, { recursive: true, force: true });
}

/** Everything one mounted workspace needs, opened and wired together; `close()` undoes it. */
export class WorkspaceSession {
  private events: EventStream | null = null;
  /** The throw-away store of a view of the past, removed on close. */
  pastFile: string | null = null;
  private remoteChangeListener: ((paths: string[]) => void) | null = null;

  /** Called with the workspace paths of entries a synced remote change replaced (the mount invalidates kernel caches). */
  onRemoteChange(listener: (paths: string[]) => void): void {
    this.remoteChangeListener = listener;
  }

  /** @internal From the sync engine: entry paths (undefined when no longer reachable). */
  remoteChanged(paths: Array<string | undefined>): void {
    const known = paths.filter((p): p is string => p !== undefined);
    if (known.length > 0) this.remoteChangeListener?.(known);
  }

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
    private readonly trust: TrustState,
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
    const store = new LocalStore(storeFile, device.localKey, opts.cacheBytes, { backgroundCheckpoints: { logger } });
    const pool = new BlockCryptoPool();
    store.alloc = (size) => pool.buffer(size, false);
    // What this device verified before (highest versions, checkpoints, certificate chain): see trust-state.ts.
    const trust = TrustState.open(trustStateFile(dir));
    try {
      const chain = new CertificateChain(device.rootVerifyKey);
      chain.add(store.loadCertificates());
      const refreshCertificates = async () => {
        try {
          store.saveCertificates(await chain.refresh((since) => conn.listCertificates(since), trust));
        } catch (err) {
          if (err instanceof IntegrityError) logger.error({ err: err.message }, 'refusing the certificate list from the server: integrity check failed');
          throw err;
        }
      };
      if (online) await refreshCertificates();
      const keys = WorkspaceKeys.open(info.realmId, info.sealedKeys, device, chain);
      const log = logger.child({ workspace: info.realmId.slice(0, 8) });
      const remote = new RemoteWorkspace(info.realmId, conn, keys, chain, device, pool, log, refreshCertificates, opts.at ?? null, trust);
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
      // Small blocks are checked and decrypted on the event loop (cheaper than a worker round trip).
      const decrypt = async (ref: BlockRef, ct: Buffer): Promise<Buffer> => {
        if (ct.length > INLINE_OPEN_BYTES) return remote.decryptBlock(ref, ct);
        try {
          return openBlock(ref.key, ct, ref.digest);
        } catch (err) {
          if (err instanceof IntegrityError) log.error({ blockId: ref.id }, 'block failed its digest or decryption check: tampered or corrupted');
          throw err;
        }
      };
      const reader = new BlockReader(store, remote, decrypt, log, pool);
      const isLocalOnlyName = compilePatterns(opts.preventSync ?? preventSyncFromEnv());
      let sync: SyncEngine | undefined;
      let pinsApplied = '';
      const engine = new WorkspaceEngine(
        entries,
        reader,
        pool,
        store,
        {
          realmId: info.realmId,
          readOnly: opts.readOnly || opts.at !== undefined,
          role: info.role,
          blockSize: opts.blockSize ?? DEFAULT_BLOCK_SIZE,
          dataDir: dir,
          // Full blocks of a file being written go to the server right away (not its manifest).
          onBlockSealed: (ref, ciphertext) => sync?.blocks.early(ref, ciphertext) ?? false,
          uploadEarly: (path) => !path.split('/').some((n) => n.length > 0 && isLocalOnlyName(n)),
        },
        log,
      );
      sync = new SyncEngine(
        entries,
        store,
        remote,
        {
          debounceMs: opts.debounceMs ?? 500,
          pollMs: opts.pollMs ?? 2000,
          uploadConcurrency: 8,
          deviceId: device.deviceId,
          isBusy: (id) => engine.isBusy(id),
          // The mount drops the kernel's caches of what a remote change replaced.
          onRemoteChange: (ids) => session?.remoteChanged(ids.map((id) => entryPath(entries, info.realmId, id))),
          isLocalOnlyName,
          afterRound: async () => {
            const pins = store.listPins();
            if (pins.length === 0) return;
            // Walk the pinned trees again only when a pin or any manifest changed since the last walk.
            const key = `${entries.generation}|${pins.join('\n')}`;
            if (key === pinsApplied) return;
            const r = await applyPins(engine, entries, reader, store, log);
            store.setMeta('pinned', JSON.stringify(r));
            pinsApplied = key;
          },
        },
        log,
      );
      sync.blocks.recycle = (data) => pool.giveBack(data);
      store.setMeta('role', info.role);
      if (opts.at !== undefined) store.setMeta('view', 'past');
      const session = new WorkspaceSession(info, engine, sync, store, conn, pool, device, log, remote, chain, refreshCertificates, trust);
      if (opts.at !== undefined) session.pastFile = storeFile;
      return session;
    } catch (err) {
      store.close();
      trust.close();
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
    this.trust.close();
    if (this.pastFile) removeStoreFiles(this.pastFile);
    await this.pool.close();
    this.conn.close();
  }
}
