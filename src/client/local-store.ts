import Database from 'better-sqlite3';
import { closeSync, fsyncSync, mkdirSync, openSync, readdirSync, rmSync, statfsSync } from 'node:fs';
import { open, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { forEachLimit } from '../concurrency.js';
import { xchachaDecrypt, xchachaEncrypt } from '../crypto/index.js';
import type { Logger } from 'pino';
import { statementCache } from '../sqlite-statements.js';
import { decodeManifest, encodeOwnManifest, type Manifest } from '../model/manifests.js';
import { WalCheckpointer } from './wal-checkpointer.js';

/** Block files fsync'd at once by syncBlockFiles (the thread pool has 4 threads by default). */
const FSYNC_CONCURRENCY = 4;
/** How long a big dirty block's row may wait for a save to commit it with (see stagedFiles). */
const STAGED_ROWS_MS = 100;

/** fsync(2) of a file or folder; one removed meanwhile (a block dropped) needs none. */
async function syncFile(path: string): Promise<void> {
  let fh;
  try {
    fh = await open(path, 'r');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * Durable per-device, per-workspace storage: local manifests (encrypted with the device-local key),
 * dirty blocks not yet uploaded and a bounded cache of clean blocks. Blocks are kept exactly as they
 * travel: AEAD ciphertext under their own block key (the key lives only in the encrypted manifest),
 * so a block is encrypted once and the very same bytes are uploaded.
 *
 * Big blocks live in files beside the database (SQLite rewrites a whole row, overflow pages
 * included, on every update: 512 KiB blobs made it the bottleneck); SQLite keeps their state.
 * A block file is written before its row exists, so a row always has its file; files without a
 * row (a crash in between) are removed at open. Small blocks (a small file's only block) live in
 * the database itself, in `block_data` apart from their row so state updates never rewrite them:
 * creating a file in the blocks folder cost ≈0.2–0.8 ms here, an insert a few µs.
 */
export interface StoredManifest {
  manifest: Manifest;
  baseVersion: number;
  /** The remote manifest at baseVersion, for three-way merges (null when never synced). */
  base: Manifest | null;
  needSync: boolean;
  /** Changed locally but kept local (a prevent-sync name: swap, lock, temp files): stored as need_sync = 2. */
  localOnly?: boolean;
}

/**
 * A change of a folder's children only (names bound or removed, and its mtime), saved as a small row
 * beside the folder's manifest instead of rewriting the whole manifest: creating a file in a folder
 * of n entries then costs O(1), not O(n). Applied in order on load; a whole save drops them.
 */
export interface FolderPatch {
  /** name -> entry id, or null when the name was removed. */
  set: Array<[string, string | null]>;
  updated: number;
}

export interface PendingStats {
  manifests: number;
  blocks: number;
  bytes: number;
}

const SCHEMA = `
  CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
  CREATE TABLE IF NOT EXISTS manifests (
    id TEXT PRIMARY KEY, base_version INTEGER NOT NULL, need_sync INTEGER NOT NULL, data BLOB NOT NULL, base BLOB);
  CREATE TABLE IF NOT EXISTS blocks (
    id TEXT PRIMARY KEY, size INTEGER NOT NULL, dirty INTEGER NOT NULL, last_access INTEGER NOT NULL);
  CREATE INDEX IF NOT EXISTS blocks_lru ON blocks (dirty, last_access);
  CREATE TABLE IF NOT EXISTS certificates (idx INTEGER PRIMARY KEY, blob BLOB NOT NULL);
  CREATE TABLE IF NOT EXISTS pins (path TEXT PRIMARY KEY);
  CREATE TABLE IF NOT EXISTS manifest_patches (id TEXT NOT NULL, seq INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (id, seq));
  CREATE TABLE IF NOT EXISTS block_data (id TEXT PRIMARY KEY, data BLOB NOT NULL);
  CREATE TRIGGER IF NOT EXISTS block_data_follows AFTER DELETE ON blocks BEGIN DELETE FROM block_data WHERE id = old.id; END;
`;

type Row = Record<string, unknown>;

export interface LocalStoreOptions {
  /** Checkpoint the WAL from a worker thread instead of inside commits (long-lived stores: a mount). */
  backgroundCheckpoints?: { logger: Logger; minDelayMs?: number; maxDelayMs?: number };
}

/** With background checkpoints, this connection still checkpoints past this many WAL pages (40 MiB). */
const FAR_AUTOCHECKPOINT_PAGES = 10_000;

/** Blocks up to this size are kept in the database (block_data), bigger ones in files. */
const INLINE_BLOCK_BYTES = 64 * 1024;

export class LocalStore {
  private readonly db: Database.Database;
  private cleanBytes: number;
  private readonly touched = new Map<string, number>();
  /** Prepared statements, cached by text. */
  private readonly sql: (text: string) => Database.Statement;
  /** A block's row, and its bytes when inline, in one transaction (built once: it runs per block). */
  private readonly insertBlock: (id: string, ciphertext: Buffer, dirty: boolean, inline: boolean) => boolean;
  private readonly blockDir: string;
  /** Background WAL checkpoints (options.backgroundCheckpoints). */
  readonly checkpointer: WalCheckpointer | null = null;
  /** Block files written since the last durable persist: fsync(2) flushes them. */
  private readonly unsynced = new Set<string>();
  /**
   * Small dirty blocks staged (stageDirtyBlock) for the next saveManifests: committed in the same
   * transaction as the manifest that references them. Visible to reads meanwhile.
   */
  private readonly staged = new Map<string, Buffer>();
  /**
   * Big dirty blocks whose file is written and whose row waits (id → size): committed together by
   * the next saveManifests, or by a timer (STAGED_ROWS_MS) when none comes. A commit per 512 KiB
   * block cost a sequential write a fifth of its JS thread (WAL frames, and reads of WAL pages not in
   * the page cache). A crash before the commit leaves the files as strays (removed at the next open),
   * never a manifest without its blocks' rows: saveManifests commits them in the same transaction.
   */
  private readonly stagedFiles = new Map<string, number>();
  private stagedTimer: NodeJS.Timeout | null = null;
  /** Blocks uploaded whose rows are still dirty (see markBlockClean). */
  private readonly uploaded = new Set<string>();
  private uploadedTimer: NodeJS.Immediate | null = null;

  constructor(
    file: string,
    private readonly localKey: Uint8Array,
    private readonly cacheLimitBytes: number,
    options: LocalStoreOptions = {},
  ) {
    mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
    this.db = new Database(file);
    this.sql = statementCache(this.db);
    this.db.pragma('journal_mode = WAL');
    // NORMAL in WAL mode: a committed transaction survives a crash of this process; fsync(2) asks for FULL.
    this.db.pragma('synchronous = NORMAL');
    this.db.exec(SCHEMA);
    // Added after the first stores were written: pinned blocks are exempt from eviction.
    const cols = this.db.prepare('PRAGMA table_info(blocks)').all() as Row[];
    if (!cols.some((c) => c.name === 'pinned')) this.db.exec('ALTER TABLE blocks ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0');
    if (!cols.some((c) => c.name === 'inline')) this.db.exec('ALTER TABLE blocks ADD COLUMN inline INTEGER NOT NULL DEFAULT 0');
    this.insertBlock = this.db.transaction((id: string, ciphertext: Buffer, dirty: boolean, inline: boolean) => this.insertBlockRows(id, ciphertext.length, dirty, inline ? ciphertext : null));
    this.blockDir = `${file}.blocks`;
    mkdirSync(this.blockDir, { recursive: true, mode: 0o700 });
    this.removeStrayBlockFiles();
    this.cleanBytes = (this.sql('SELECT COALESCE(SUM(size), 0) AS n FROM blocks WHERE dirty = 0').get() as Row).n as number;
    const bg = options.backgroundCheckpoints;
    if (bg) {
      // The worker copies the WAL into the database; this connection's own checkpoint only if it falls far behind.
      this.db.pragma(`wal_autocheckpoint = ${FAR_AUTOCHECKPOINT_PAGES}`);
      this.checkpointer = new WalCheckpointer(file, bg.logger, () => {
        if (this.db.open) this.db.pragma('wal_autocheckpoint = 1000'); // SQLite's default
      }, bg);
    }
  }

  /** A block's row, and its bytes when inline (`data`); false when it was there already. Inside a transaction. */
  private insertBlockRows(id: string, size: number, dirty: boolean, data: Buffer | null): boolean {
    const row = this.sql('INSERT INTO blocks (id, size, dirty, last_access, inline) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING');
    if (row.run(id, size, dirty ? 1 : 0, Date.now(), data ? 1 : 0).changes === 0) return false;
    if (data) this.sql('INSERT OR REPLACE INTO block_data (id, data) VALUES (?, ?)').run(id, data);
    return true;
  }

  close(): void {
    if (this.stagedTimer) clearTimeout(this.stagedTimer);
    this.stagedTimer = null;
    this.flushTouches();
    this.commitStaged();
    this.commitUploaded();
    this.checkpointer?.close();
    this.db.close();
  }

  private seal(kind: string, id: string, plain: Uint8Array): Buffer {
    return xchachaEncrypt(this.localKey, plain, Buffer.from(`coffer-local/1|${kind}|${id}`));
  }

  /**
   * A manifest's base (the remote version it builds on) is saved with it at every save but changes
   * only when a sync replaces it (a new object; bases are never modified in place): sealed once.
   */
  private readonly sealedBases = new WeakMap<Manifest, Buffer>();
  private sealedBase(id: string, base: Manifest): Buffer {
    let sealed = this.sealedBases.get(base);
    // A base was validated where it came from: decoded from the server, or sealed to go there.
    if (!sealed) this.sealedBases.set(base, (sealed = this.seal('base', id, encodeOwnManifest(base))));
    return sealed;
  }

  private open(kind: string, id: string, sealed: Uint8Array): Uint8Array {
    return xchachaDecrypt(this.localKey, sealed, Buffer.from(`coffer-local/1|${kind}|${id}`));
  }

  private blockPath(id: string): string {
    return join(this.blockDir, id);
  }

  private removeStrayBlockFiles(): void {
    const known = new Set((this.sql('SELECT id FROM blocks WHERE inline = 0').all() as Row[]).map((r) => r.id as string));
    for (const name of readdirSync(this.blockDir)) if (!known.has(name)) rmSync(join(this.blockDir, name), { force: true });
  }

  /** Off the event loop: a 512 KiB block is ~0.3 ms of syscalls. */
  private async writeBytes(id: string, data: Buffer): Promise<void> {
    await writeFile(this.blockPath(id), data, { mode: 0o600 });
  }

  /** The caller awaits it before the row exists. */
  private async writeBlockFile(id: string, data: Buffer): Promise<void> {
    this.keepRoom(data.length);
    try {
      await this.writeBytes(id, data);
    } catch (err) {
      // Never leave a partial file behind: it would hold disk space until the next open.
      rmSync(this.blockPath(id), { force: true });
      // Disk full: clean blocks are only a cache of what the server has (the cache limit may exceed
      // the disk's free space). Give their room to this write and retry; otherwise ENOSPC
      // reaches the caller (found by test/e2e/disk-full.test.ts).
      // Concurrent writers (several blocks seal at once) may take the room first: a few rounds.
      let last: unknown = err;
      for (let attempt = 0; attempt < 3; attempt++) {
        if ((last as NodeJS.ErrnoException).code !== 'ENOSPC' || this.evictForSpace(data.length) === 0) throw last;
        try {
          await this.writeBytes(id, data);
          return;
        } catch (again) {
          rmSync(this.blockPath(id), { force: true });
          last = again;
        }
      }
      throw last;
    }
  }

  /**
   * Keeps some room on the store's disk before a block is written, taken from the clean cache when
   * the disk runs low: the database needs room for its log too (SQLITE_FULL otherwise), and several
   * blocks are written at once. Cheap (one statfs) and only when there is a cache to give.
   */
  private keepRoom(size: number): void {
    if (this.cleanBytes <= 0) return;
    try {
      const s = statfsSync(this.blockDir);
      const free = s.bavail * s.bsize;
      const want = size * 8 + 16 * 1024 * 1024;
      if (free < want) this.evictForSpace((want - free) / 4);
    } catch {
      // statfs unavailable: the ENOSPC path below still applies
    }
  }

  /**
   * Drops least recently used clean, unpinned blocks until about four times `needed` bytes (plus
   * 8 MiB) are free; returns the bytes freed. Files go first (that is what frees the space; a row whose
   * file is gone reads as not cached and is fetched again), then their rows.
   */
  private evictForSpace(needed: number): number {
    const goal = needed * 4 + 8 * 1024 * 1024;
    const rows = this.sql('SELECT id, size, inline FROM blocks WHERE dirty = 0 AND pinned = 0 ORDER BY last_access').all() as Row[];
    const victims: Row[] = [];
    let freed = 0;
    for (const r of rows) {
      if (freed >= goal) break;
      this.removeBlockFile(r.id as string, r.inline === 1);
      victims.push(r);
      freed += r.size as number;
    }
    try {
      const drop = this.sql('DELETE FROM blocks WHERE id = ? AND dirty = 0');
      this.db.transaction(() => {
        for (const r of victims) drop.run(r.id);
      })();
      for (const r of victims) {
        this.touched.delete(r.id as string);
        this.cleanBytes -= r.size as number;
      }
    } catch {
      // The database could not record it (still full): the rows stay, their files are gone.
    }
    return freed;
  }

  /** `inline`: the block lived in the database (its row's deletion removed it): no file to remove. */
  private removeBlockFile(id: string, inline = false): void {
    if (!inline) rmSync(this.blockPath(id), { force: true });
    this.unsynced.delete(id);
  }

  getMeta(key: string): string | null {
    const row = this.sql('SELECT value FROM meta WHERE key = ?').get(key) as Row | undefined;
    return row ? (row.value as string) : null;
  }

  setMeta(key: string, value: string): void {
    this.sql('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT DO UPDATE SET value = excluded.value').run(key, value);
  }

  loadManifest(id: string): (StoredManifest & { patches: number }) | null {
    const row = this.sql('SELECT * FROM manifests WHERE id = ?').get(id) as Row | undefined;
    if (!row) return null;
    const stored = this.toStored(row);
    const m = stored.manifest;
    let patches = 0;
    for (const p of this.sql('SELECT seq, data FROM manifest_patches WHERE id = ? ORDER BY seq').all(id) as Row[]) {
      patches++;
      if (m.type !== 'folder' && m.type !== 'workspace') continue;
      const patch = JSON.parse(Buffer.from(this.open(`patch|${p.seq as number}`, id, p.data as Buffer)).toString('utf8')) as FolderPatch;
      for (const [name, child] of patch.set) {
        if (child === null) delete m.children[name];
        else m.children[name] = child;
      }
      m.updated = patch.updated;
    }
    return { ...stored, patches };
  }

  private toStored(row: Row): StoredManifest {
    const id = row.id as string;
    return {
      manifest: decodeManifest(this.open('manifest', id, row.data as Buffer)),
      baseVersion: row.base_version as number,
      base: row.base ? decodeManifest(this.open('base', id, row.base as Buffer)) : null,
      needSync: (row.need_sync as number) >= 1,
      localOnly: (row.need_sync as number) === 2,
    };
  }

  listNeedSync(): string[] {
    return (this.sql('SELECT id FROM manifests WHERE need_sync >= 1').all() as Row[]).map((r) => r.id as string);
  }

  /**
   * Writes manifests and forgets replaced dirty blocks in one transaction, so the store never points
   * at a block it no longer has. `durable` forces the WAL to disk (fsync semantics).
   */
  saveManifests(
    records: ReadonlyArray<{ id: string } & StoredManifest>,
    dropBlocks: readonly string[],
    durable = false,
    /** Folder changes saved as patches (see FolderPatch): `seq` numbers them per folder, from 1. */
    patches: ReadonlyArray<{ id: string; seq: number; patch: FolderPatch }> = [],
  ): void {
    const put = this.sql(
      `INSERT INTO manifests (id, base_version, need_sync, data, base) VALUES (?, ?, ?, ?, ?)
       ON CONFLICT DO UPDATE SET base_version = excluded.base_version, need_sync = excluded.need_sync, data = excluded.data, base = excluded.base`,
    );
    const clearPatches = this.sql('DELETE FROM manifest_patches WHERE id = ?');
    const putPatch = this.sql('INSERT OR REPLACE INTO manifest_patches (id, seq, data) VALUES (?, ?, ?)');
    const drop = this.sql('DELETE FROM blocks WHERE id = ? AND dirty = 1 RETURNING inline');
    const inlineDropped = new Set<string>();
    // Staged blocks replaced before they were ever committed need no row at all (their files go below).
    for (const b of dropBlocks) {
      this.staged.delete(b);
      this.stagedFiles.delete(b);
    }
    const staged = [...this.staged];
    const stagedFiles = [...this.stagedFiles];
    if (durable) {
      this.syncBlockFilesNow();
      this.db.pragma('synchronous = FULL');
    }
    try {
      const write = this.db.transaction(() => {
        for (const [id, ciphertext] of staged) this.insertBlockRows(id, ciphertext.length, true, ciphertext);
        for (const [id, size] of stagedFiles) this.insertBlockRows(id, size, true, null);
        for (const r of records) {
          put.run(
            r.id,
            r.baseVersion,
            r.needSync ? (r.localOnly ? 2 : 1) : 0,
            this.seal('manifest', r.id, encodeOwnManifest(r.manifest)),
            r.base ? this.sealedBase(r.id, r.base) : null,
          );
          clearPatches.run(r.id);
        }
        for (const p of patches) putPatch.run(p.id, p.seq, this.seal(`patch|${p.seq}`, p.id, Buffer.from(JSON.stringify(p.patch), 'utf8')));
        for (const b of dropBlocks) if ((drop.get(b) as Row | undefined)?.inline === 1) inlineDropped.add(b);
      });
      try {
        write();
      } catch (err) {
        // Disk full under the database: give it room from the clean cache and retry once.
        if ((err as { code?: unknown }).code !== 'SQLITE_FULL' || this.evictForSpace(4 * 1024 * 1024) === 0) throw err;
        write();
      }
    } finally {
      if (durable) this.db.pragma('synchronous = NORMAL');
    }
    for (const [id] of staged) this.staged.delete(id);
    for (const [id] of stagedFiles) this.stagedFiles.delete(id);
    for (const b of dropBlocks) this.removeBlockFile(b, inlineDropped.has(b));
  }

  /**
   * fsync(2) of the block files written since the last durable save, on the thread pool, several at
   * a time, then of their folder. Done on the event loop one file after the other, the fsync of a
   * big file stalled every other request of the mount (512 files: 0.28 s of the main thread on this
   * machine's disk, seconds on a slow one). A durable save after it finds nothing left to sync.
   */
  async syncBlockFiles(): Promise<void> {
    while (this.unsynced.size > 0) {
      const ids = [...this.unsynced];
      this.unsynced.clear();
      try {
        await forEachLimit(ids, FSYNC_CONCURRENCY, (id) => syncFile(this.blockPath(id)));
        await syncFile(this.blockDir);
      } catch (err) {
        for (const id of ids) this.unsynced.add(id); // a later fsync(2) tries them again
        throw err;
      }
    }
  }

  /** What syncBlockFiles left (files written in the same turn as the durable save): synchronously. */
  private syncBlockFilesNow(): void {
    if (this.unsynced.size === 0) return;
    for (const id of this.unsynced) {
      const fd = openSync(this.blockPath(id), 'r');
      try {
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
    }
    this.unsynced.clear();
    const dir = openSync(this.blockDir, 'r');
    try {
      fsyncSync(dir);
    } finally {
      closeSync(dir);
    }
  }

  deleteManifest(id: string): void {
    this.db.transaction(() => {
      this.sql('DELETE FROM manifests WHERE id = ?').run(id);
      this.sql('DELETE FROM manifest_patches WHERE id = ?').run(id);
    })();
  }

  /** Every block id referenced by a stored manifest (used to drop orphans left by a crash). */
  dropOrphanDirtyBlocks(referenced: ReadonlySet<string>): number {
    this.commitStaged();
    this.commitUploaded();
    const rows = this.sql('SELECT id, inline FROM blocks WHERE dirty = 1').all() as Row[];
    const drop = this.sql('DELETE FROM blocks WHERE id = ?');
    const dropped = rows.filter((r) => !referenced.has(r.id as string));
    this.db.transaction(() => {
      for (const r of dropped) drop.run(r.id);
    })();
    for (const r of dropped) this.removeBlockFile(r.id as string, r.inline === 1);
    return dropped.length;
  }

  allManifestIds(): string[] {
    return (this.sql('SELECT id FROM manifests').all() as Row[]).map((r) => r.id as string);
  }

  /**
   * A small dirty block (≤ 64 KiB, stored inline) kept in memory until the next saveManifests, which
   * commits it in its own transaction: a close then writes the block and the manifests that
   * reference it in one commit, and a crash keeps both or neither. False (nothing staged) for a
   * block too big to live in the database: putDirtyBlock it. The store keeps `ciphertext` (copied
   * when it is shared pool memory, which its owner recycles).
   */
  stageDirtyBlock(id: string, ciphertext: Buffer): boolean {
    if (ciphertext.length > INLINE_BLOCK_BYTES) return false;
    this.staged.set(id, ciphertext.buffer instanceof SharedArrayBuffer ? Buffer.from(ciphertext) : ciphertext);
    return true;
  }

  /** Commits staged blocks on their own, before an operation on block rows that must see them. */
  private commitStaged(): void {
    if (this.staged.size > 0 || this.stagedFiles.size > 0) this.saveManifests([], []);
  }

  private isStaged(id: string): boolean {
    return this.staged.has(id) || this.stagedFiles.has(id);
  }

  /**
   * A dirty block: a small one inline, in its own commit; a big one as a file whose row is staged
   * (stagedFiles), visible to reads at once.
   */
  async putDirtyBlock(id: string, ciphertext: Buffer): Promise<void> {
    if (ciphertext.length <= INLINE_BLOCK_BYTES) {
      this.insertBlockRow(id, ciphertext, true, true);
      return;
    }
    await this.writeBlockFile(id, ciphertext);
    this.unsynced.add(id);
    this.stagedFiles.set(id, ciphertext.length);
    this.stagedTimer ??= setTimeout(() => {
      this.stagedTimer = null;
      try {
        if (this.db.open) this.commitStaged();
      } catch {
        // Kept staged: the next save commits them, and reports a failure to its caller.
      }
    }, STAGED_ROWS_MS).unref();
  }

  /** Caches a block fetched from the server, evicting least-recently-used clean blocks over the limit. */
  async putCleanBlock(id: string, ciphertext: Buffer): Promise<void> {
    if (this.hasBlock(id)) return;
    const inline = ciphertext.length <= INLINE_BLOCK_BYTES;
    if (!inline) {
      await this.writeBlockFile(id, ciphertext);
      if (this.hasBlock(id)) return; // raced with another writer of the same block
    }
    if (this.insertBlockRow(id, ciphertext, false, inline)) {
      this.cleanBytes += ciphertext.length;
      this.evict();
    }
  }

  /** The block's row (and its bytes when inline) in one transaction; false when the block was there already. */
  private insertBlockRow(id: string, ciphertext: Buffer, dirty: boolean, inline: boolean): boolean {

    try {
      return this.insertBlock(id, ciphertext, dirty, inline);
    } catch (err) {
      // The database's disk is full (its WAL grows): room from the clean cache, then once more.
      if ((err as { code?: unknown }).code !== 'SQLITE_FULL' || this.evictForSpace(4 * 1024 * 1024) === 0) throw err;
      return this.insertBlock(id, ciphertext, dirty, inline);
    }
  }

  /**
   * A block is on the server. Its row turns clean at the end of this event-loop turn, with the others
   * of the turn (a batch of uploads answered together), in one commit: a commit each cost a sync of
   * many small files several percent of its JS thread. A crash before it leaves the block dirty: it
   * is uploaded again (the server takes the same bytes twice).
   */
  markBlockClean(id: string): void {
    if (this.isStaged(id)) this.commitStaged(); // uploaded before its close was saved: it needs its row now
    this.uploaded.add(id);
    this.uploadedTimer ??= setImmediate(() => {
      try {
        this.commitUploaded();
      } catch {
        // Left dirty (a full disk): the next commit takes them, and a dirty block is only sent again.
      }
    });
  }

  /** Marks the uploaded blocks clean; first thing wherever rows are read or dropped by that flag. */
  private commitUploaded(): void {
    if (this.uploadedTimer) clearImmediate(this.uploadedTimer);
    this.uploadedTimer = null;
    if (this.uploaded.size === 0 || !this.db.open) return;
    const clean = this.sql('UPDATE blocks SET dirty = 0, last_access = ? WHERE id = ? AND dirty = 1 RETURNING size');
    const now = Date.now();
    let bytes = 0;
    this.db.transaction(() => {
      for (const id of this.uploaded) bytes += ((clean.get(now, id) as Row | undefined)?.size as number | undefined) ?? 0;
    })();
    this.uploaded.clear();
    this.cleanBytes += bytes;
    this.evict();
  }

  /** Asynchronous: block files are read off the event loop, so several reads (and read-ahead) overlap. */
  async getBlock(id: string): Promise<Buffer | null> {
    const staged = this.staged.get(id);
    if (staged) return Buffer.from(staged); // the reader owns what it gets (a decrypt may take it)
    const stagedSize = this.stagedFiles.get(id);
    if (stagedSize !== undefined) return (await this.readBlockFile(id, stagedSize)) ?? null;
    const row = this.sql('SELECT size, inline FROM blocks WHERE id = ?').get(id) as Row | undefined;
    if (row === undefined) return null;
    const data = row.inline === 1 ? this.readInlineBlock(id) : await this.readBlockFile(id, row.size as number);
    if (data === undefined) return null;
    // Record recency at most once a minute per block, in batches: reads must not turn into a write each.
    const now = Date.now();
    if ((this.touched.get(id) ?? 0) < now - 60_000) {
      this.touched.set(id, now);
      this.pendingTouches.set(id, now);
      if (this.pendingTouches.size >= 256) this.flushTouches();
      else if (!this.touchTimer) {
        this.touchTimer = setTimeout(() => this.flushTouches(), 1000);
        this.touchTimer.unref();
      }
      if (this.touched.size > 100_000) for (const [k, t] of this.touched) if (t < now - 60_000) this.touched.delete(k);
    }
    return data;
  }

  private readInlineBlock(id: string): Buffer | undefined {
    return (this.sql('SELECT data FROM block_data WHERE id = ?').get(id) as Row | undefined)?.data as Buffer | undefined;
  }

  /** The size is known: one read into a (recycled) buffer of that size, no fstat, no concatenation. */
  private async readBlockFile(id: string, size: number): Promise<Buffer | undefined> {
    try {
      const fh = await open(this.blockPath(id), 'r');
      try {
        const data = this.alloc(size);
        let got = 0;
        while (got < size) {
          const { bytesRead } = await fh.read(data, got, size - got, got);
          if (bytesRead === 0) break;
          got += bytesRead;
        }
        return got < size ? Buffer.from(data.subarray(0, got)) : data; // truncated file: fails its digest check
      } finally {
        await fh.close();
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  }

  /** Allocates the buffer a block is read into (the session hands in the crypto pool's recycler). */
  alloc: (size: number) => Buffer = (size) => Buffer.allocUnsafeSlow(size);
  private readonly pendingTouches = new Map<string, number>();
  private touchTimer: NodeJS.Timeout | null = null;

  private flushTouches(): void {
    if (this.touchTimer) clearTimeout(this.touchTimer);
    this.touchTimer = null;
    if (this.pendingTouches.size === 0 || !this.db.open) return;
    const st = this.sql('UPDATE blocks SET last_access = ? WHERE id = ?');
    try {
      this.db.transaction(() => {
        for (const [id, t] of this.pendingTouches) st.run(t, id);
      })();
    } catch (err) {
      // Recency is a hint for eviction: on a full disk it is dropped, not thrown at a read or, from
      // the timer, at the process (which it killed: test/e2e/disk-full.test.ts).
      if ((err as { code?: unknown }).code !== 'SQLITE_FULL') throw err;
    } finally {
      this.pendingTouches.clear();
    }
  }

  dropCleanBlock(id: string): void {
    this.commitUploaded();
    const row = this.sql('SELECT size, inline FROM blocks WHERE id = ? AND dirty = 0').get(id) as Row | undefined;
    if (!row) return;
    this.sql('DELETE FROM blocks WHERE id = ? AND dirty = 0').run(id);
    this.removeBlockFile(id, row.inline === 1);
    this.cleanBytes -= row.size as number;
  }

  isDirtyBlock(id: string): boolean {
    if (this.uploaded.has(id)) return false;
    if (this.isStaged(id)) return true;
    return this.sql('SELECT 1 FROM blocks WHERE id = ? AND dirty = 1').get(id) !== undefined;
  }

  private evict(): void {
    if (this.cleanBytes <= this.cacheLimitBytes) return;
    this.flushTouches(); // recency first
    const victims = this.sql('SELECT id, size, inline FROM blocks WHERE dirty = 0 AND pinned = 0 ORDER BY last_access LIMIT 64');
    const drop = this.sql('DELETE FROM blocks WHERE id = ? AND dirty = 0');
    this.db.transaction(() => {
      while (this.cleanBytes > this.cacheLimitBytes) {
        const rows = victims.all() as Row[];
        if (rows.length === 0) break;
        for (const r of rows) {
          if (this.cleanBytes <= this.cacheLimitBytes) break;
          drop.run(r.id);
          this.removeBlockFile(r.id as string, r.inline === 1);
          this.touched.delete(r.id as string);
          this.cleanBytes -= r.size as number;
        }
      }
    })();
  }

  pendingStats(): PendingStats {
    this.commitStaged();
    this.commitUploaded();
    const m = (this.sql('SELECT COUNT(*) AS n FROM manifests WHERE need_sync = 1').get() as Row).n as number;
    const b = this.sql('SELECT COUNT(*) AS n, COALESCE(SUM(size), 0) AS bytes FROM blocks WHERE dirty = 1').get() as Row;
    return { manifests: m, blocks: b.n as number, bytes: b.bytes as number };
  }

  cacheStats(): { cleanBytes: number; limitBytes: number } {
    return { cleanBytes: this.cleanBytes, limitBytes: this.cacheLimitBytes };
  }

  /** Paths (inside the workspace) kept fully downloaded; the mount process applies them. */
  listPins(): string[] {
    return (this.sql('SELECT path FROM pins ORDER BY path').all() as Row[]).map((r) => r.path as string);
  }

  setPin(path: string, pinned: boolean): void {
    if (pinned) this.sql('INSERT OR IGNORE INTO pins (path) VALUES (?)').run(path);
    else this.sql('DELETE FROM pins WHERE path = ?').run(path);
  }

  /** Marks the blocks of pinned entries (and only them) as exempt from eviction. */
  /** Returns how many blocks are pinned now (fewer than `ids` when some are not in the store). */
  setPinnedBlocks(ids: ReadonlySet<string>): number {
    this.commitStaged();
    // Only the difference is written: re-applying the same pins every sync round costs reads, not writes.
    const current = (this.sql('SELECT id FROM blocks WHERE pinned = 1').all() as Row[]).map((r) => r.id as string);
    const unpin = this.sql('UPDATE blocks SET pinned = 0 WHERE id = ?');
    const pin = this.sql('UPDATE blocks SET pinned = 1 WHERE id = ? AND pinned = 0');
    const was = new Set(current);
    this.db.transaction(() => {
      for (const id of current) if (!ids.has(id)) unpin.run(id);
      for (const id of ids) if (!was.has(id)) pin.run(id);
    })();
    return (this.sql('SELECT COUNT(*) AS n FROM blocks WHERE pinned = 1').get() as Row).n as number;
  }

  hasBlock(id: string): boolean {
    if (this.isStaged(id)) return true;
    return this.sql('SELECT 1 FROM blocks WHERE id = ?').get(id) !== undefined;
  }

  saveCertificates(certs: ReadonlyArray<{ index: number; blob: Buffer }>): void {
    const put = this.sql('INSERT OR REPLACE INTO certificates (idx, blob) VALUES (?, ?)');
    this.db.transaction(() => {
      for (const c of certs) put.run(c.index, c.blob);
    })();
  }

  loadCertificates(): Array<{ index: number; blob: Buffer }> {
    return (this.sql('SELECT idx, blob FROM certificates ORDER BY idx').all() as Row[]).map((r) => ({ index: r.idx as number, blob: r.blob as Buffer }));
  }
}

