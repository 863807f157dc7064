import Database from 'better-sqlite3';
import { closeSync, fsyncSync, mkdirSync, openSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { xchachaDecrypt, xchachaEncrypt } from '../crypto/index.js';
import { decodeManifest, encodeManifest, type Manifest } from '../model/manifests.js';

/**
 * Durable per-device, per-workspace storage: local manifests (encrypted with the device-local key),
 * dirty blocks not yet uploaded and a bounded cache of clean blocks. Blocks are kept exactly as they
 * travel: AEAD ciphertext under their own block key (the key lives only in the encrypted manifest),
 * so a block is encrypted once and the very same bytes are uploaded.
 *
 * Block bytes live in files beside the database (SQLite rewrites a whole row, overflow pages
 * included, on every update: 512 KiB blobs made it the bottleneck); SQLite keeps their state.
 * A block file is written before its row exists, so a row always has its file; files without a
 * row (a crash in between) are removed at open.
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
`;

type Row = Record<string, unknown>;

export class LocalStore {
  private readonly db: Database.Database;
  private cleanBytes: number;
  private readonly touched = new Map<string, number>();
  private readonly statements = new Map<string, Database.Statement>();
  private readonly blockDir: string;
  /** Block files written since the last durable persist: fsync(2) flushes them. */
  private readonly unsynced = new Set<string>();

  constructor(
    file: string,
    private readonly localKey: Uint8Array,
    private readonly cacheLimitBytes: number,
  ) {
    mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
    this.db = new Database(file);
    this.db.pragma('journal_mode = WAL');
    // NORMAL in WAL mode: a committed transaction survives a crash of this process; fsync(2) asks for FULL.
    this.db.pragma('synchronous = NORMAL');
    this.db.exec(SCHEMA);
    // Added after the first stores were written: pinned blocks are exempt from eviction.
    const cols = this.db.prepare('PRAGMA table_info(blocks)').all() as Row[];
    if (!cols.some((c) => c.name === 'pinned')) this.db.exec('ALTER TABLE blocks ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0');
    this.blockDir = `${file}.blocks`;
    mkdirSync(this.blockDir, { recursive: true, mode: 0o700 });
    this.removeStrayBlockFiles();
    this.cleanBytes = (this.sql('SELECT COALESCE(SUM(size), 0) AS n FROM blocks WHERE dirty = 0').get() as Row).n as number;
  }

  close(): void {
    this.db.close();
  }

  /** Prepared statements are cached: preparing costs more than running these small queries. */
  private sql(text: string): Database.Statement {
    let st = this.statements.get(text);
    if (!st) {
      st = this.db.prepare(text);
      this.statements.set(text, st);
    }
    return st;
  }

  private seal(kind: string, id: string, plain: Uint8Array): Buffer {
    return xchachaEncrypt(this.localKey, plain, Buffer.from(`coffer-local/1|${kind}|${id}`));
  }

  private open(kind: string, id: string, sealed: Uint8Array): Uint8Array {
    return xchachaDecrypt(this.localKey, sealed, Buffer.from(`coffer-local/1|${kind}|${id}`));
  }

  private blockPath(id: string): string {
    return join(this.blockDir, id);
  }

  private removeStrayBlockFiles(): void {
    const known = new Set((this.sql('SELECT id FROM blocks').all() as Row[]).map((r) => r.id as string));
    for (const name of readdirSync(this.blockDir)) if (!known.has(name)) rmSync(join(this.blockDir, name), { force: true });
  }

  private writeBlockFile(id: string, data: Buffer): void {
    writeFileSync(this.blockPath(id), data, { mode: 0o600 });
  }

  private removeBlockFile(id: string): void {
    rmSync(this.blockPath(id), { force: true });
    this.unsynced.delete(id);
  }

  getMeta(key: string): string | null {
    const row = this.sql('SELECT value FROM meta WHERE key = ?').get(key) as Row | undefined;
    return row ? (row.value as string) : null;
  }

  setMeta(key: string, value: string): void {
    this.sql('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT DO UPDATE SET value = excluded.value').run(key, value);
  }

  loadManifest(id: string): StoredManifest | null {
    const row = this.sql('SELECT * FROM manifests WHERE id = ?').get(id) as Row | undefined;
    return row ? this.toStored(row) : null;
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
  saveManifests(records: ReadonlyArray<{ id: string } & StoredManifest>, dropBlocks: readonly string[], durable = false): void {
    const put = this.sql(
      `INSERT INTO manifests (id, base_version, need_sync, data, base) VALUES (?, ?, ?, ?, ?)
       ON CONFLICT DO UPDATE SET base_version = excluded.base_version, need_sync = excluded.need_sync, data = excluded.data, base = excluded.base`,
    );
    const drop = this.sql('DELETE FROM blocks WHERE id = ? AND dirty = 1');
    if (durable) {
      this.syncBlockFiles();
      this.db.pragma('synchronous = FULL');
    }
    try {
      this.db.transaction(() => {
        for (const r of records) {
          put.run(
            r.id,
            r.baseVersion,
            r.needSync ? (r.localOnly ? 2 : 1) : 0,
            this.seal('manifest', r.id, encodeManifest(r.manifest)),
            r.base ? this.seal('base', r.id, encodeManifest(r.base)) : null,
          );
        }
        for (const b of dropBlocks) drop.run(b);
      })();
    } finally {
      if (durable) this.db.pragma('synchronous = NORMAL');
    }
    for (const b of dropBlocks) this.removeBlockFile(b);
  }

  /** fsync(2) semantics for block files: data, then the directory entries. */
  private syncBlockFiles(): void {
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
    this.sql('DELETE FROM manifests WHERE id = ?').run(id);
  }

  /** Every block id referenced by a stored manifest (used to drop orphans left by a crash). */
  dropOrphanDirtyBlocks(referenced: ReadonlySet<string>): number {
    const ids = (this.sql('SELECT id FROM blocks WHERE dirty = 1').all() as Row[]).map((r) => r.id as string);
    const drop = this.sql('DELETE FROM blocks WHERE id = ?');
    const dropped = ids.filter((id) => !referenced.has(id));
    this.db.transaction(() => {
      for (const id of dropped) drop.run(id);
    })();
    for (const id of dropped) this.removeBlockFile(id);
    return dropped.length;
  }

  allManifestIds(): string[] {
    return (this.sql('SELECT id FROM manifests').all() as Row[]).map((r) => r.id as string);
  }

  putDirtyBlock(id: string, ciphertext: Buffer): void {
    this.writeBlockFile(id, ciphertext);
    this.unsynced.add(id);
    this.sql('INSERT INTO blocks (id, size, dirty, last_access) VALUES (?, ?, 1, ?) ON CONFLICT DO NOTHING').run(id, ciphertext.length, Date.now());
  }

  /** Caches a block fetched from the server, evicting least-recently-used clean blocks over the limit. */
  putCleanBlock(id: string, ciphertext: Buffer): void {
    if (this.sql('SELECT 1 FROM blocks WHERE id = ?').get(id) !== undefined) return;
    this.writeBlockFile(id, ciphertext);
    const r = this.sql('INSERT INTO blocks (id, size, dirty, last_access) VALUES (?, ?, 0, ?) ON CONFLICT DO NOTHING').run(id, ciphertext.length, Date.now());
    if (r.changes === 1) {
      this.cleanBytes += ciphertext.length;
      this.evict();
    }
  }

  markBlockClean(id: string): void {
    const r = this.sql('UPDATE blocks SET dirty = 0, last_access = ? WHERE id = ? AND dirty = 1').run(Date.now(), id);
    if (r.changes === 1) {
      this.cleanBytes += (this.sql('SELECT size FROM blocks WHERE id = ?').get(id) as Row).size as number;
      this.evict();
    }
  }

  /** Asynchronous: block files are read off the event loop, so several reads (and read-ahead) overlap. */
  async getBlock(id: string): Promise<Buffer | null> {
    if (this.sql('SELECT 1 FROM blocks WHERE id = ?').get(id) === undefined) return null;
    let data: Buffer;
    try {
      data = await readFile(this.blockPath(id));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
    // Record recency at most once a minute per block: reads must not turn into a write each.
    const now = Date.now();
    if ((this.touched.get(id) ?? 0) < now - 60_000) {
      this.touched.set(id, now);
      this.sql('UPDATE blocks SET last_access = ? WHERE id = ?').run(now, id);
    }
    return data;
  }

  dropCleanBlock(id: string): void {
    const row = this.sql('SELECT size FROM blocks WHERE id = ? AND dirty = 0').get(id) as Row | undefined;
    if (!row) return;
    this.sql('DELETE FROM blocks WHERE id = ? AND dirty = 0').run(id);
    this.removeBlockFile(id);
    this.cleanBytes -= row.size as number;
  }

  isDirtyBlock(id: string): boolean {
    return this.sql('SELECT 1 FROM blocks WHERE id = ? AND dirty = 1').get(id) !== undefined;
  }

  private evict(): void {
    if (this.cleanBytes <= this.cacheLimitBytes) return;
    const victims = this.sql('SELECT id, size FROM blocks WHERE dirty = 0 AND pinned = 0 ORDER BY last_access LIMIT 64');
    const drop = this.sql('DELETE FROM blocks WHERE id = ? AND dirty = 0');
    this.db.transaction(() => {
      while (this.cleanBytes > this.cacheLimitBytes) {
        const rows = victims.all() as Row[];
        if (rows.length === 0) break;
        for (const r of rows) {
          if (this.cleanBytes <= this.cacheLimitBytes) break;
          drop.run(r.id);
          this.removeBlockFile(r.id as string);
          this.touched.delete(r.id as string);
          this.cleanBytes -= r.size as number;
        }
      }
    })();
  }

  pendingStats(): PendingStats {
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
  setPinnedBlocks(ids: ReadonlySet<string>): void {
    const pin = this.sql('UPDATE blocks SET pinned = 1 WHERE id = ? AND pinned = 0');
    this.db.transaction(() => {
      this.sql('UPDATE blocks SET pinned = 0 WHERE pinned = 1').run();
      for (const id of ids) pin.run(id);
    })();
  }

  hasBlock(id: string): boolean {
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

