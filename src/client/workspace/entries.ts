import type { Logger } from 'pino';
import { CofferError, IntegrityError } from '../../errors.js';
import type { Manifest } from '../../model/manifests.js';
import type { LocalStore } from '../local-store.js';
import type { RemoteWorkspace } from '../remote.js';

/** A manifest as this device knows it: the local state plus what it derives from on the server. */
export interface Entry {
  id: string;
  manifest: Manifest;
  baseVersion: number;
  base: Manifest | null;
  needSync: boolean;
  /** Bumped on every local change; lets sync tell whether what it uploaded is still current. */
  rev: number;
  persistedRev: number;
  /** Dirty blocks this entry no longer references: dropped from the store with the next persist. */
  garbage: string[];
  /** When this device last changed it, and when it last took the server's state (for merges: an edit wins over a delete). */
  editedAt?: number;
  baseAt?: number;
  /** Pending, but named like editor/OS litter (prevent-sync patterns): kept on this device only. */
  localOnly?: boolean;
}

/**
 * The in-memory table of entries, backed by the local store and, for entries never seen, the server.
 * Local changes are persisted in batches (shortly after they happen, and at once on flush/fsync).
 */
export class EntryTable {
  private readonly entries = new Map<string, Entry>();
  /** Version of each entry this device deleted (this session): a later remote edit of it wins over our delete. */
  readonly tombstones = new Map<string, number>();
  private persistTimer: NodeJS.Timeout | null = null;
  /** Called after local changes are persisted (the sync engine listens). */
  onPersist: () => void = () => {};

  constructor(
    private readonly store: LocalStore,
    private readonly remote: RemoteWorkspace | null,
    private readonly logger: Logger,
    private readonly persistDelayMs = 100,
  ) {}

  peek(id: string): Entry | undefined {
    return this.entries.get(id) ?? this.loadLocal(id);
  }

  private loadLocal(id: string): Entry | undefined {
    const stored = this.store.loadManifest(id);
    if (!stored) return undefined;
    const entry: Entry = { id, ...stored, rev: 0, persistedRev: 0, garbage: [] };
    this.entries.set(id, entry);
    return entry;
  }

  async get(id: string): Promise<Entry> {
    const known = this.peek(id);
    if (known) return known;
    await this.fetchMissing([id]);
    const fetched = this.entries.get(id);
    if (!fetched) throw new CofferError('not_found', `entry ${id} is not on the server`);
    return fetched;
  }

  /** Loads the entries not known locally from the server, in batches (one request for many). */
  async fetchMissing(ids: readonly string[]): Promise<void> {
    const missing = ids.filter((id) => !this.peek(id));
    if (missing.length === 0) return;
    if (!this.remote) throw new CofferError('offline', 'not cached locally and no server connection');
    const fetched = await this.remote.fetchManifests(missing);
    for (const [id, r] of fetched) this.adoptRemote(id, r.manifest, r.version);
  }

  /** Takes a newer remote manifest as the local state (the caller checked there is no local change). */
  adoptRemote(id: string, manifest: Manifest, version: number): Entry {
    if (manifest.id !== id) throw new IntegrityError(`manifest ${manifest.id} served as ${id}`);
    const existing = this.entries.get(id);
    if (existing && version < existing.baseVersion) throw new IntegrityError(`server rolled back ${id} from version ${existing.baseVersion} to ${version}`);
    // The base is a copy: local edits change `manifest` in place and must not touch it.
    const base = structuredClone(manifest);
    const entry: Entry = existing ?? { id, manifest, baseVersion: version, base, needSync: false, rev: 0, persistedRev: 0, garbage: [] };
    entry.manifest = manifest;
    entry.base = base;
    entry.baseVersion = version;
    entry.needSync = false;
    entry.baseAt = Date.now();
    this.entries.set(id, entry);
    this.store.saveManifests([{ id, manifest, base, baseVersion: version, needSync: false }], []);
    entry.persistedRev = entry.rev;
    return entry;
  }

  create(manifest: Manifest): Entry {
    const entry: Entry = { id: manifest.id, manifest, baseVersion: 0, base: null, needSync: true, rev: 1, persistedRev: 0, garbage: [] };
    this.entries.set(manifest.id, entry);
    this.schedulePersist();
    return entry;
  }

  /** Records a local change of `entry` (its manifest was modified in place). */
  changed(entry: Entry): void {
    entry.editedAt = Date.now();
    entry.rev++;
    entry.needSync = true;
    this.schedulePersist();
  }

  /** Records a change of local bookkeeping only (not of the manifest): persisted, not a user edit. */
  bookkeeping(entry: Entry): void {
    entry.rev++;
    this.schedulePersist();
  }

  private schedulePersist(): void {
    if (this.persistTimer) return;
    this.persistTimer = setTimeout(() => {
      this.persistTimer = null;
      try {
        this.persist(false);
      } catch (err) {
        this.logger.error({ err: (err as Error).message }, 'could not persist local changes; will retry');
        this.schedulePersist();
      }
    }, this.persistDelayMs);
  }

  /** Writes every changed entry in one transaction; `durable` for fsync(2). */
  persist(durable: boolean): void {
    const changed = [...this.entries.values()].filter((e) => e.rev !== e.persistedRev || e.garbage.length > 0);
    if (changed.length === 0) return;
    const garbage = changed.flatMap((e) => e.garbage);
    this.store.saveManifests(
      changed.map((e) => ({ id: e.id, manifest: e.manifest, base: e.base, baseVersion: e.baseVersion, needSync: e.needSync, localOnly: e.localOnly === true })),
      garbage,
      durable,
    );
    for (const e of changed) {
      e.persistedRev = e.rev;
      e.garbage = [];
    }
    this.onPersist();
  }

  /** Forgets an entry that is gone locally (unlinked, no handle open). */
  forget(id: string): void {
    const e = this.entries.get(id) ?? this.peek(id);
    if (e && e.baseVersion > 0) this.tombstones.set(id, e.baseVersion);
    this.entries.delete(id);
    if (e && e.garbage.length) this.store.saveManifests([], e.garbage);
    this.store.deleteManifest(id);
  }

  /** Entries with local changes, loading those only in the store. */
  pending(): Entry[] {
    for (const id of this.store.listNeedSync()) this.peek(id);
    return [...this.entries.values()].filter((e) => e.needSync);
  }

  /** After an upload: the entry now derives from `version`; clean only if nothing changed meanwhile. */
  markSynced(entry: Entry, uploadedRev: number, version: number, uploaded: Manifest): void {
    // Deleted while its upload was in flight: remember the version we wrote, not an older one.
    if (this.tombstones.has(entry.id)) this.tombstones.set(entry.id, Math.max(version, this.tombstones.get(entry.id) ?? 0));
    entry.baseVersion = version;
    entry.base = uploaded;
    entry.baseAt = Date.now();
    if (entry.rev === uploadedRev) entry.needSync = false;
    entry.rev++; // persist the new base version
    this.schedulePersist();
  }

  knownIds(): string[] {
    return [...new Set([...this.entries.keys(), ...this.store.allManifestIds()])];
  }

  close(): void {
    if (this.persistTimer) clearTimeout(this.persistTimer);
    this.persistTimer = null;
    this.persist(true);
  }
}
