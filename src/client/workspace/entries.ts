import type { Logger } from 'pino';
import { CofferError, IntegrityError } from '../../errors.js';
import type { Manifest } from '../../model/manifests.js';
import type { FolderPatch, LocalStore } from '../local-store.js';
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
  /** Folder names bound or removed since the last save: saved as a small patch (see FolderPatch). */
  linkNames?: Set<string>;
  /** Changed otherwise than by linkChanged since the last whole save: the next save rewrites it whole. */
  wholeDirty?: boolean;
  /** Patch rows saved since the last whole save. */
  patches?: number;
  /** How many patches it may pile up (patchLimit), counted once per whole save: not O(children) per close. */
  patchLimit?: number;
  /** The row as last saved whole: a patch may only be added while these still hold. */
  saved?: { baseVersion: number; needSync: boolean; localOnly: boolean; base: Manifest | null };
}

/** Patches a folder may pile up before it is rewritten whole (loading applies them one by one). */
function patchLimit(m: Manifest): number {
  return m.type === 'folder' || m.type === 'workspace' ? Math.max(32, Object.keys(m.children).length >> 4) : 0;
}

/**
 * A new Entry with every field present, in one order: entries then share one hidden class, and the
 * property reads of every request and save stay monomorphic.
 */
function newEntry(id: string, manifest: Manifest, baseVersion: number, base: Manifest | null, needSync: boolean, rev: number): Entry {
  return {
    id,
    manifest,
    baseVersion,
    base,
    needSync,
    rev,
    persistedRev: 0,
    garbage: [],
    editedAt: undefined,
    baseAt: undefined,
    localOnly: undefined,
    linkNames: undefined,
    wholeDirty: undefined,
    patches: undefined,
    patchLimit: undefined,
    saved: undefined,
  };
}

/**
 * The in-memory table of entries, backed by the local store and, for entries never seen, the server.
 * Local changes are persisted in batches (shortly after they happen, and at once on flush/fsync).
 */
export class EntryTable {
  private readonly entries = new Map<string, Entry>();
  /** Entries with something not persisted yet (a change, or garbage): persist() looks at these only. */
  private readonly dirty = new Set<Entry>();
  /** Version of each entry this device deleted (this session): a later remote edit of it wins over our delete. */
  readonly tombstones = new Map<string, number>();
  private persistTimer: NodeJS.Timeout | null = null;
  /** Bumped whenever any manifest's content changes (locally or from the server): lets pinning skip idle rounds. */
  generation = 0;
  /** Entries the background save leaves for later (set by the engine: big files open for writing). */
  deferred: (e: Entry) => boolean = () => false;
  /** Called after local changes are persisted (the sync engine listens). */
  onPersist: () => void = () => {};
  /**
   * Called on every local edit, before it is persisted (the sync engine's quiet time starts here: a
   * round in between must not take an entry caught between its create and its first write).
   */
  onEdit: () => void = () => {};

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
    const loaded = this.store.loadManifest(id);
    if (!loaded) return undefined;
    const entry = newEntry(id, loaded.manifest, loaded.baseVersion, loaded.base, loaded.needSync, 0);
    entry.localOnly = loaded.localOnly;
    entry.patches = loaded.patches;
    entry.saved = { baseVersion: entry.baseVersion, needSync: entry.needSync, localOnly: entry.localOnly === true, base: entry.base };
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
    const entry = existing ?? newEntry(id, manifest, version, base, false, 0);
    entry.manifest = manifest;
    entry.base = base;
    entry.baseVersion = version;
    entry.needSync = false;
    entry.baseAt = Date.now();
    this.entries.set(id, entry);
    this.generation++;
    this.store.saveManifests([{ id, manifest, base, baseVersion: version, needSync: false }], []);
    entry.persistedRev = entry.rev;
    this.savedWhole(entry);
    if (entry.garbage.length === 0) this.dirty.delete(entry);
    return entry;
  }

  create(manifest: Manifest): Entry {
    const entry = newEntry(manifest.id, manifest, 0, null, true, 1);
    this.entries.set(manifest.id, entry);
    this.dirty.add(entry);
    this.edited();
    return entry;
  }

  /** Records a local change of `entry` (its manifest was modified in place). */
  changed(entry: Entry): void {
    entry.editedAt = Date.now();
    entry.rev++;
    entry.needSync = true;
    entry.wholeDirty = true;
    this.dirty.add(entry);
    this.edited();
  }

  /**
   * Records that a folder's child `name` was bound, rebound or removed (and its mtime changed),
   * nothing else: saved as a small patch rather than a rewrite of the whole folder.
   */
  linkChanged(folder: Entry, ...names: string[]): void {
    folder.editedAt = Date.now();
    folder.rev++;
    folder.needSync = true;
    folder.linkNames ??= new Set();
    for (const n of names) folder.linkNames.add(n);
    this.dirty.add(folder);
    this.edited();
  }

  private edited(): void {
    this.generation++;
    this.schedulePersist();
    this.onEdit();
  }

  /** A dirty block `entry` no longer references: dropped from the store with the next persist. */
  dropLater(entry: Entry, blockId: string): void {
    entry.garbage.push(blockId);
    this.dirty.add(entry);
  }

  /** Records a change of local bookkeeping only (not of the manifest): persisted, not a user edit. */
  bookkeeping(entry: Entry): void {
    entry.rev++;
    entry.wholeDirty = true;
    this.dirty.add(entry);
    this.schedulePersist();
  }

  private savedWhole(e: Entry): void {
    e.saved = { baseVersion: e.baseVersion, needSync: e.needSync, localOnly: e.localOnly === true, base: e.base };
    e.patches = 0;
    e.patchLimit = undefined;
    e.linkNames?.clear();
    e.wholeDirty = false;
  }

  /** A folder whose only changes are child links, with its row otherwise as saved: a patch will do. */
  private patchable(e: Entry): boolean {
    const s = e.saved;
    return (
      e.wholeDirty !== true &&
      e.linkNames !== undefined &&
      e.linkNames.size > 0 &&
      s !== undefined &&
      s.baseVersion === e.baseVersion &&
      s.needSync === e.needSync &&
      s.localOnly === (e.localOnly === true) &&
      s.base === e.base &&
      (e.patches ?? 0) < (e.patchLimit ??= patchLimit(e.manifest))
    );
  }

  private schedulePersist(): void {
    if (this.persistTimer) return;
    this.persistTimer = setTimeout(() => {
      this.persistTimer = null;
      try {
        this.persist(false, true);
      } catch (err) {
        this.logger.error({ err: (err as Error).message }, 'could not persist local changes; will retry');
        this.schedulePersist();
      }
    }, this.persistDelayMs);
  }

  /** Writes every changed entry in one transaction; `durable` for fsync(2). */
  persist(durable: boolean, background = false): void {
    // The background save skips entries the engine defers (a big file being written: its manifest
    // grows with every block, and rewriting it every 100 ms would cost O(size) each time); its
    // flush/fsync/close saves it, which is when POSIX asks for durability.
    const changed = [...this.dirty].filter((e) => (e.rev !== e.persistedRev || e.garbage.length > 0) && !(background && this.deferred(e)));
    if (changed.length === 0) {
      if (!background) this.dirty.clear();
      if (durable) this.store.saveManifests([], [], true); // fsync(2): block files written since are flushed
      return;
    }
    const garbage = changed.flatMap((e) => e.garbage);
    const whole: Entry[] = [];
    const patched: Array<{ e: Entry; seq: number; patch: FolderPatch }> = [];
    for (const e of changed) {
      if (e.rev === e.persistedRev) continue; // garbage only
      const m = e.manifest;
      if (this.patchable(e) && (m.type === 'folder' || m.type === 'workspace')) {
        const set: FolderPatch['set'] = [...e.linkNames!].map((n) => [n, Object.hasOwn(m.children, n) ? m.children[n]! : null]);
        patched.push({ e, seq: (e.patches ?? 0) + 1, patch: { set, updated: m.updated } });
      } else whole.push(e);
    }
    this.store.saveManifests(
      whole.map((e) => ({ id: e.id, manifest: e.manifest, base: e.base, baseVersion: e.baseVersion, needSync: e.needSync, localOnly: e.localOnly === true })),
      garbage,
      durable,
      patched.map((p) => ({ id: p.e.id, seq: p.seq, patch: p.patch })),
    );
    for (const e of whole) this.savedWhole(e);
    for (const p of patched) {
      p.e.patches = p.seq;
      p.e.linkNames!.clear();
    }
    for (const e of changed) {
      e.persistedRev = e.rev;
      e.garbage = [];
      this.dirty.delete(e);
    }
    if (!background) this.dirty.clear();
    this.onPersist();
  }

  /** Forgets an entry that is gone locally (unlinked, no handle open). */
  forget(id: string): void {
    const e = this.entries.get(id) ?? this.peek(id);
    if (e && e.baseVersion > 0) this.tombstones.set(id, e.baseVersion);
    this.entries.delete(id);
    this.generation++;
    if (e) this.dirty.delete(e);
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
    this.dirty.add(entry);
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
