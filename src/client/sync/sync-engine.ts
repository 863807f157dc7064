import type { Logger } from 'pino';
import { forEachLimit } from '../../concurrency.js';
import { CofferError, IntegrityError } from '../../errors.js';
import { MAX_VLOB_WRITE_BATCH } from '../../protocol/schemas.js';
import { newId } from '../../model/ids.js';
import { encodeManifest, type Manifest } from '../../model/manifests.js';
import type { LocalStore } from '../local-store.js';
import type { RemoteWorkspace } from '../remote.js';
import type { Entry, EntryTable } from '../workspace/entries.js';
import { BlockUploader } from './block-uploader.js';
import { RoundTimer, type RoundKind } from './round-timer.js';
import { conflictCopyName, freeConflictName, mergeChildren } from './merge.js';

export interface SyncOptions {
  /** Quiet time after the last local change before uploading (coalesces bursts of writes). */
  debounceMs: number;
  /** Longest a local change waits for its round while changes keep coming (default 5 × debounceMs). */
  maxDelayMs?: number;
  /** How often to ask the server for remote changes. */
  pollMs: number;
  uploadConcurrency: number;
  deviceId: string;
  /** True while an entry has data in memory not yet sealed, or a write in progress: not uploaded, not replaced. */
  isBusy: (id: string) => boolean;
  /** Told about entries replaced by newer remote versions (the mount drops kernel caches). */
  onRemoteChange?: (ids: string[]) => void;
  /** Names that stay local (prevent-sync patterns). */
  isLocalOnlyName: (name: string) => boolean;
  /** Runs after each successful round (pinning downloads what is pinned). */
  afterRound?: () => Promise<void>;
}

/**
 * Local changes per second that make a burst. Counted here: an untar of small files makes
 * 3,000–6,500 (each file's create, writes, attributes and saves), `cp -r` of a source tree ≈430,
 * a big file copied at 50 MiB/s ≈155 (≈3 per MiB); a person saving documents, a handful.
 */
const BURST_CHANGES_PER_SECOND = 200;
/** Longest a change waits for its round during a burst: Parsec's MAX_SYNC_WAIT. */
const BURST_MAX_DELAY_MS = 60_000;

/** Manifest uploads in flight in one round (as many as one batched vlob write request takes). */
const MANIFESTS_IN_FLIGHT = MAX_VLOB_WRITE_BATCH;

function sameBytes(a: Manifest, b: Manifest): boolean {
  return Buffer.from(encodeManifest(a)).equals(Buffer.from(encodeManifest(b)));
}

/**
 * Outbound: dirty blocks first (in parallel), then manifests, children before parents, each as
 * version base + 1. Inbound: the realm's change list since our checkpoint, newer manifests fetched in
 * batches. Offline is a normal state: failures back off and retry; no local change is ever dropped.
 */
export class SyncEngine {
  private readonly timer: RoundTimer;
  private pollTimer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;
  private again = false;
  private stopped = false;
  /** drain() calls under way: while any runs, rounds upload everything, burst or not. */
  private drains = 0;
  online = true;
  /** Every block upload goes through it (one concurrency limit; sealed blocks go early). */
  readonly blocks: BlockUploader;

  constructor(
    private readonly entries: EntryTable,
    private readonly store: LocalStore,
    private readonly remote: RemoteWorkspace,
    private readonly opts: SyncOptions,
    private readonly logger: Logger,
  ) {
    this.blocks = new BlockUploader(store, remote, opts.uploadConcurrency, logger);
    this.blocks.stopped = true; // until start()
    this.timer = new RoundTimer((kind) => void this.run(kind), {
      debounceMs: opts.debounceMs,
      maxDelayMs: opts.maxDelayMs ?? 5 * opts.debounceMs,
      burstChangesPerSecond: BURST_CHANGES_PER_SECOND,
      busyMaxDelayMs: BURST_MAX_DELAY_MS,
    });
  }

  start(): void {
    this.blocks.stopped = false;
    this.entries.onPersist = () => this.timer.changed();
    this.entries.onEdit = () => this.timer.changed();
    const poll = () => {
      this.pollTimer = setTimeout(() => {
        this.schedule(0);
        poll();
      }, this.opts.pollMs);
      this.pollTimer.unref();
    };
    poll();
    this.schedule(0);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.blocks.stopped = true;
    this.timer.stop();
    if (this.pollTimer) clearTimeout(this.pollTimer);
    await this.running;
  }

  /**
   * Runs a round after `delayMs` (at least the current backoff); never postpones a round already due
   * sooner. It only pulls while local changes wait for their quiet time (see RoundTimer).
   */
  schedule(delayMs: number): void {
    this.timer.runIn(delayMs); // nothing once stopped
  }

  /**
   * Runs a round now, or one more right after the one running. That one's kind is decided when it
   * starts (RoundTimer): a full round asked for before an edit made meanwhile would take that edit
   * before its quiet time.
   */
  private async run(kind: RoundKind = 'full'): Promise<void> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      let ok = false;
      try {
        if (kind === 'full') await this.syncOnce();
        else await this.pullOnce();
        ok = true;
        this.timer.succeeded();
        this.setOnline(true);
      } catch (err) {
        const offline = err instanceof CofferError && (err.code === 'offline' || err.code === 'unavailable');
        this.setOnline(!offline);
        const retryInMs = this.timer.failed();
        if (offline) this.logger.warn({ retryInMs, reason: (err as Error).message }, 'server unreachable; changes stay queued locally');
        else this.logger.error({ err: (err as Error).message, retryInMs }, 'sync failed; will retry');
        this.schedule(retryInMs);
      } finally {
        this.running = null;
      }
      // After a failure the retry is already scheduled, after the backoff.
      if (this.again && ok) this.schedule(0);
      this.again = false;
    })();
    return this.running;
  }

  private setOnline(online: boolean): void {
    if (online !== this.online) this.logger.info({ online }, online ? 'connected to the server' : 'working offline');
    this.online = online;
    // Advisory (for `coffer status`): a local store that cannot take it (disk full) must not turn a
    // failed round into an unhandled rejection, which killed the mount (test/e2e/disk-full.test.ts).
    try {
      this.store.setMeta('state', online ? 'online' : 'offline');
    } catch (err) {
      this.logger.warn({ err: (err as Error).message }, 'could not record the connection state locally');
    }
  }

  /** One full round: upload everything pending, then pull remote changes. */
  async syncOnce(): Promise<void> {
    this.timer.fullRoundStarted();
    const complete = await this.outbound();
    await this.inbound();
    await this.opts.afterRound?.();
    if (complete) this.store.setMeta('last_sync', String(Date.now()));
    else {
      this.timer.roundYielded();
      this.logger.info('sync round paused for a burst of local changes; the rest goes up after it');
    }
  }

  /** A round that only pulls remote changes (local ones wait for their quiet time). */
  private async pullOnce(): Promise<void> {
    await this.inbound();
    await this.opts.afterRound?.();
  }

  private depth(e: Entry): number {
    let d = 0;
    let m: Manifest | undefined = e.manifest;
    while (m && (m.type === 'file' || m.type === 'folder') && d < 1000) {
      d++;
      m = this.entries.peek(m.parent)?.manifest;
    }
    return d;
  }

  /** The name of an entry in its parent folder (undefined: not referenced, e.g. unlinked). */
  private nameOf(e: Entry, names: Map<string, Map<string, string>>): string | undefined {
    const m = e.manifest;
    if (m.type !== 'file' && m.type !== 'folder') return undefined;
    // One reverse index per parent and round: a linear scan per entry is quadratic in big folders.
    let byId = names.get(m.parent);
    if (!byId) {
      byId = new Map();
      const parent = this.entries.peek(m.parent)?.manifest;
      if (parent && (parent.type === 'folder' || parent.type === 'workspace')) for (const [name, id] of Object.entries(parent.children)) byId.set(id, name);
      names.set(m.parent, byId);
    }
    return byId.get(e.id);
  }

  /** Local-only entries are recomputed each round: a rename to an ordinary name makes them sync. */
  private markLocalOnly(e: Entry, names: Map<string, Map<string, string>>): boolean {
    // Local-only when its name, or the name of any folder above it (a desktop's .Trash-1000), matches.
    let localOnly = false;
    for (let cur: Entry | undefined = e, depth = 0; cur && cur.manifest.type !== 'workspace' && depth < 1000; depth++) {
      const name = this.nameOf(cur, names);
      if (name === undefined || this.opts.isLocalOnlyName(name)) {
        localOnly = true;
        break;
      }
      const m: Manifest = cur.manifest;
      cur = m.type === 'file' || m.type === 'folder' ? this.entries.peek(m.parent) : undefined;
    }
    if (localOnly !== (e.localOnly === true)) {
      e.localOnly = localOnly;
      this.entries.bookkeeping(e); // persist the flag: status counts only what will be uploaded
    }
    return localOnly;
  }

  /** Uploads what is pending; false when it stopped early for a burst of local changes (RoundTimer.shouldYield). */
  async outbound(): Promise<boolean> {
    let yielded = false;
    // Checked before each upload starts (those under way finish). drain() waits for everything.
    const halt = () => this.stopped || (yielded ||= this.drains === 0 && this.timer.shouldYield());
    const names = new Map<string, Map<string, string>>();
    const all = this.entries.pending().filter((e) => !this.markLocalOnly(e, names));
    const ready = all.filter((e) => !this.opts.isBusy(e.id));
    // Children before parents: files first, then folders deepest first, the workspace root last.
    // Entries of one level do not depend on each other: many at once, so that their manifest
    // writes travel together (ServerConnection batches them); block uploads have their own limit.
    const uploadAll = (level: Entry[]) => forEachLimit(level, MANIFESTS_IN_FLIGHT, (e) => this.upload(e), halt);
    await uploadAll(ready.filter((e) => e.manifest.type === 'file'));
    const byDepth = new Map<number, Entry[]>();
    for (const e of ready) {
      if (e.manifest.type === 'file') continue;
      const d = this.depth(e);
      const level = byDepth.get(d);
      if (level) level.push(e);
      else byDepth.set(d, [e]);
    }
    for (const d of [...byDepth.keys()].sort((a, b) => b - a)) {
      if (halt()) break;
      await uploadAll(byDepth.get(d)!);
    }
    return !yielded;
  }

  /**
   * Uploads one entry, unless it must wait for a later round (a block vanished because the entry
   * changed meanwhile, or a folder names a child not on the server yet).
   */
  private async upload(e: Entry): Promise<void> {
    const m = e.manifest;
    // A folder waits for a round where all its children are on the server: checked as it is signed,
    // since a child may have been created after this round listed what is pending.
    if ((m.type === 'folder' || m.type === 'workspace') && Object.entries(m.children).some(([name, id]) => !this.opts.isLocalOnlyName(name) && this.entries.peek(id)?.baseVersion === 0)) return;
    const rev = e.rev;
    // A deep copy: what was sent must not change with edits made while it is on its way. It is
    // validated once, as it is sealed (sealVlob); an encode/decode round trip here cost two more
    // schema passes per upload.
    const snapshot = structuredClone(m);
    if (snapshot.type === 'folder' || snapshot.type === 'workspace') {
      for (const name of Object.keys(snapshot.children)) if (this.opts.isLocalOnlyName(name)) delete snapshot.children[name];
    }
    if (snapshot.type === 'file') {
      const dirty = snapshot.blocks.filter((b) => this.store.isDirtyBlock(b.id));
      // All at once: the uploader bounds concurrency (and joins uploads already under way).
      const done = await Promise.all(dirty.map((ref) => this.blocks.upload(ref)));
      if (done.includes(false)) return;
    }
    const version = e.baseVersion + 1;
    try {
      await this.remote.uploadManifest(snapshot, version);
    } catch (err) {
      if (err instanceof CofferError && err.code === 'conflict') {
        await this.resolveConflict(e);
        return;
      }
      throw err;
    }
    this.entries.markSynced(e, rev, version, snapshot);
  }

  private async resolveConflict(e: Entry): Promise<void> {
    const remote = await this.remote.fetchManifest(e.id);
    if (remote.version <= e.baseVersion) throw new IntegrityError(`server rolled back ${e.id} to version ${remote.version}`);
    const local = e.manifest;
    const theirs = remote.manifest;
    if (sameBytes(local, theirs)) {
      // Our own upload landed but its answer was lost.
      this.entries.markSynced(e, e.rev, remote.version, theirs);
      return;
    }
    if (remote.author === this.opts.deviceId && remote.version === e.baseVersion + 1 && local.type === theirs.type) {
      // Our own upload landed, its answer was lost (network fault, or a crash before the new base
      // version was saved), and the entry changed again since: that version is an earlier state of
      // this device's own history, not another device's edit. Take it as the base and upload the
      // local state as the next version. Treated as a conflict, it moved the latest write to a
      // "conflicting copy" and put the older one back under the name (found by
      // test/e2e/faults-network.test.ts). One device = one local store per workspace (the mount record).
      this.entries.markSynced(e, -1, remote.version, theirs); // -1: still pending
      this.logger.info({ entry: e.id, version: remote.version }, 'our upload landed but its answer was lost; rebased on it');
      return;
    }
    if ((local.type === 'folder' || local.type === 'workspace') && (theirs.type === 'folder' || theirs.type === 'workspace')) {
      const base = e.base && (e.base.type === 'folder' || e.base.type === 'workspace') ? e.base.children : {};
      const edited = await this.editedAcross(e, base, local.children, theirs.children);
      const merged = mergeChildren(base, local.children, theirs.children, (n, seq) => conflictCopyName(n, this.opts.deviceId, new Date(), seq), edited);
      // In place: the engine may hold this very object.
      for (const k of Object.keys(local.children)) delete local.children[k];
      Object.assign(local.children, merged);
      local.updated = Math.max(local.updated, theirs.updated);
      e.baseVersion = remote.version;
      e.base = theirs;
      this.entries.changed(e);
      this.logger.info({ entry: e.id, version: remote.version }, 'merged a folder changed on two devices');
      return;
    }
    if (local.type === 'file' && theirs.type === 'file') {
      // Both edited the file: the remote version keeps the name, ours becomes a conflicting copy.
      const parent = await this.entries.get(local.parent);
      // Bytes of ours still in memory (written while the 409 was on its way, not sealed yet): a copy
      // made now would read as zeros there, and sealing them later would land in the adopted remote
      // version. Resolve on a later round, once they are sealed (the entry stays pending).
      if (this.opts.isBusy(e.id)) return;
      const pm = parent.manifest;
      const copyId = newId();
      const copy = { ...local, id: copyId, blocks: local.blocks.map((b) => ({ ...b })) };
      this.entries.create(copy);
      if (pm.type === 'folder' || pm.type === 'workspace') {
        const name = Object.entries(pm.children).find(([, id]) => id === e.id)?.[0] ?? 'file';
        const now = new Date();
        const alt = freeConflictName(pm.children, name, (n, seq) => conflictCopyName(n, this.opts.deviceId, now, seq));
        pm.children[alt] = copyId;
        this.entries.changed(parent);
        this.logger.warn({ entry: e.id, copy: copyId }, 'file changed on two devices: kept ours as a conflicting copy');
      }
      Object.assign(local, theirs);
      e.garbage = [];
      this.entries.adoptRemote(e.id, local, remote.version);
      this.opts.onRemoteChange?.([e.id]);
      return;
    }
    throw new IntegrityError(`entry ${e.id} changed type on the server`);
  }

  /**
   * Children one side removed while the other edited them: deleted here but changed on the server since
   * we deleted them, or deleted there but changed here since we last took the folder's state.
   */
  private async editedAcross(folder: Entry, base: Record<string, string>, local: Record<string, string>, remote: Record<string, string>): Promise<Set<string>> {
    const edited = new Set<string>();
    const deletedHere = Object.entries(base).filter(([n, id]) => local[n] === undefined && remote[n] === id && this.entries.tombstones.has(id)).map(([, id]) => id);
    if (deletedHere.length > 0) {
      // Only another device's newer version is an edit against our delete (our own late upload is not).
      for (const [id, r] of await this.remote.fetchManifests(deletedHere)) {
        if (r.version > (this.entries.tombstones.get(id) ?? 0) && r.author !== this.opts.deviceId) edited.add(id);
      }
    }
    for (const [n, id] of Object.entries(base)) {
      if (local[n] !== id || remote[n] !== undefined) continue;
      const child = this.entries.peek(id);
      if (child && (child.needSync || (child.editedAt ?? 0) > (folder.baseAt ?? 0))) edited.add(id);
    }
    return edited;
  }

  async inbound(): Promise<void> {
    const since = Number(this.store.getMeta('checkpoint') ?? '0');
    const { checkpoint, changes } = await this.remote.listChanges(since);
    const stale: string[] = [];
    let busy = false;
    for (const c of changes) {
      const e = this.entries.peek(c.vlobId);
      if (e && !e.needSync && c.version > e.baseVersion) stale.push(c.vlobId);
    }
    if (stale.length > 0) {
      const fetched = await this.remote.fetchManifests(stale);
      const replaced: string[] = [];
      for (const [id, r] of fetched) {
        const e = this.entries.peek(id);
        if (!e || e.needSync || r.version <= e.baseVersion) continue; // changed locally meanwhile: merged on upload
        if (this.opts.isBusy(id)) {
          // A write is reading the current blocks and has not recorded its change yet: replacing them
          // now would put its bytes on top of the remote version. Not now; keep the checkpoint so that
          // the next round asks again (if the write changes the file, the upload merges instead).
          busy = true;
          continue;
        }
        const m = e.manifest;
        // In place, so that open handles and path walks see the new state.
        for (const k of Object.keys(m)) delete (m as unknown as Record<string, unknown>)[k];
        Object.assign(m, r.manifest);
        this.entries.adoptRemote(id, m, r.version);
        replaced.push(id);
      }
      if (replaced.length) this.opts.onRemoteChange?.(replaced);
    }
    if (!busy) this.store.setMeta('checkpoint', String(checkpoint));
  }

  /** Resolves when nothing is left to upload (or rejects when that cannot happen now). */
  async drain(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    this.drains++;
    try {
      await this.drainUntil(deadline);
    } finally {
      this.drains--;
    }
  }

  private async drainUntil(deadline: number): Promise<void> {
    for (;;) {
      await this.run();
      const names = new Map<string, Map<string, string>>();
      const left = this.entries.pending().filter((e) => !this.markLocalOnly(e, names));
      if (left.length === 0) {
        this.entries.persist(false);
        return;
      }
      if (Date.now() > deadline) throw new CofferError('busy', `still ${left.length} entries to upload`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}
