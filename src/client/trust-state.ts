/**
 * What this device has already verified, kept on disk so that a hostile server cannot take it back:
 *
 * - per vlob: the highest version seen (fetched and verified, or uploaded and acknowledged) and the
 *   SHA-256 of that version's blob: a latest read answering an older version is a rollback, the same
 *   version with other bytes is a fork (the server showing two histories);
 * - per realm: the highest change-log checkpoint the server reported (it never goes back);
 * - the certificate chain: how many certificates were verified and the hash chain up to there: a
 *   later list that is shorter, or whose prefix hashes differently, dropped or rewrote certificates.
 *
 * One small SQLite file per device (`trust.sqlite` in the device's data directory), shared by every
 * process of the device (mounts, `coffer history`, `coffer fsck`): WAL, a busy timeout, and
 * monotonic upserts (`MAX`), so concurrent writers can only raise the floors. It is deliberately
 * separate from the per-workspace local store (whose manifests cache may be wiped or rebuilt):
 * clearing the cache does not clear what the device knows.
 *
 * Values are ids, versions and digests (no names, no content): the server knows all of them anyway.
 * A thief with write access to the disk can lower them; that attacker can also replace the client.
 */
import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';

/** The certificate chain as a device verified it before (see CertificateChain.refresh). */
export interface CertificateMemory {
  knownCertificates(): { count: number; hash: Uint8Array } | null;
  rememberCertificates(count: number, hash: Uint8Array): void;
}

export interface SeenVersion {
  version: number;
  /** SHA-256 of the blob of that version (null: known only as a lower bound). */
  digest: Uint8Array | null;
}

const SCHEMA = `
  CREATE TABLE IF NOT EXISTS seen_vlobs (
    realm_id TEXT NOT NULL, vlob_id TEXT NOT NULL, version INTEGER NOT NULL, digest BLOB,
    PRIMARY KEY (realm_id, vlob_id)) WITHOUT ROWID;
  CREATE TABLE IF NOT EXISTS seen_checkpoints (realm_id TEXT PRIMARY KEY, checkpoint INTEGER NOT NULL);
  CREATE TABLE IF NOT EXISTS seen_certificates (id INTEGER PRIMARY KEY CHECK (id = 1), count INTEGER NOT NULL, hash BLOB NOT NULL);
`;

type Row = Record<string, unknown>;

export function trustStateFile(deviceDataDir: string): string {
  return join(deviceDataDir, 'trust.sqlite');
}

export class TrustState implements CertificateMemory {
  private readonly db: Database.Database;
  private readonly getVlob: Database.Statement;
  private readonly putVlob: Database.Statement;
  private readonly getCheckpoint: Database.Statement;
  private readonly putCheckpoint: Database.Statement;

  private constructor(file: string) {
    mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
    this.db = new Database(file);
    this.db.pragma('busy_timeout = 5000');
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = NORMAL');
    this.db.exec(SCHEMA);
    this.getVlob = this.db.prepare('SELECT version, digest FROM seen_vlobs WHERE realm_id = ? AND vlob_id = ?');
    // Only ever raises the floor; the digest follows the highest version (kept if the version is the same).
    this.putVlob = this.db.prepare(
      `INSERT INTO seen_vlobs (realm_id, vlob_id, version, digest) VALUES (?, ?, ?, ?)
       ON CONFLICT DO UPDATE SET
         digest = CASE WHEN excluded.version > version THEN excluded.digest
                       WHEN excluded.version = version THEN COALESCE(digest, excluded.digest) ELSE digest END,
         version = MAX(version, excluded.version)`,
    );
    this.getCheckpoint = this.db.prepare('SELECT checkpoint FROM seen_checkpoints WHERE realm_id = ?');
    this.putCheckpoint = this.db.prepare(
      'INSERT INTO seen_checkpoints (realm_id, checkpoint) VALUES (?, ?) ON CONFLICT DO UPDATE SET checkpoint = MAX(checkpoint, excluded.checkpoint)',
    );
  }

  static open(file: string): TrustState {
    return new TrustState(file);
  }

  close(): void {
    this.flushFloors();
    if (this.db.open) this.db.close();
  }

  vlob(realmId: string, vlobId: string): SeenVersion | null {
    this.flushFloors();
    const row = this.getVlob.get(realmId, vlobId) as Row | undefined;
    return row ? { version: row.version as number, digest: (row.digest as Buffer | null) ?? null } : null;
  }

  /** Snapshot of several vlobs (taken before a request: anything recorded later may postdate the answer). */
  vlobs(realmId: string, vlobIds: readonly string[]): Map<string, SeenVersion> {
    const out = new Map<string, SeenVersion>();
    for (const id of vlobIds) {
      const s = this.vlob(realmId, id);
      if (s) out.set(id, s);
    }
    return out;
  }

  /**
   * Raises the floors of `seen` (and the realm's checkpoint, when given). Written at the end of the
   * current turn of the event loop, in one transaction with the others of that turn (a batch of
   * uploads answered together records its floors in one commit, not one each); every read here
   * writes them first, so readers never miss one. A crash in between loses floors learnt in the
   * last moment: a later answer below them goes unnoticed once, as for a new device.
   */
  rememberVlobs(realmId: string, seen: ReadonlyArray<{ vlobId: string; version: number; digest: Uint8Array | null }>, checkpoint?: number): void {
    if (seen.length === 0 && checkpoint === undefined) return;
    this.pendingFloors.push({ realmId, seen: seen.map((s) => ({ ...s, digest: s.digest === null ? null : Buffer.from(s.digest) })), checkpoint });
    if (this.pendingFloors.length === 1) setImmediate(() => this.flushFloors());
  }

  private readonly pendingFloors: Array<{ realmId: string; seen: Array<{ vlobId: string; version: number; digest: Buffer | null }>; checkpoint: number | undefined }> = [];

  private flushFloors(): void {
    if (this.pendingFloors.length === 0 || !this.db.open) return;
    const batch = this.pendingFloors.splice(0);
    this.db.transaction(() => {
      for (const b of batch) {
        for (const s of b.seen) this.putVlob.run(b.realmId, s.vlobId, s.version, s.digest);
        if (b.checkpoint !== undefined) this.putCheckpoint.run(b.realmId, b.checkpoint);
      }
    })();
  }

  checkpoint(realmId: string): number {
    this.flushFloors();
    const row = this.getCheckpoint.get(realmId) as Row | undefined;
    return (row?.checkpoint as number | undefined) ?? 0;
  }

  rememberCheckpoint(realmId: string, checkpoint: number): void {
    this.putCheckpoint.run(realmId, checkpoint);
  }

  knownCertificates(): { count: number; hash: Uint8Array } | null {
    const row = this.db.prepare('SELECT count, hash FROM seen_certificates WHERE id = 1').get() as Row | undefined;
    return row ? { count: row.count as number, hash: row.hash as Buffer } : null;
  }

  /** Keeps the longest chain (the caller checked that it extends the one known). */
  rememberCertificates(count: number, hash: Uint8Array): void {
    this.db
      .prepare(
        `INSERT INTO seen_certificates (id, count, hash) VALUES (1, ?, ?)
         ON CONFLICT DO UPDATE SET hash = CASE WHEN excluded.count > count THEN excluded.hash ELSE hash END, count = MAX(count, excluded.count)`,
      )
      .run(count, Buffer.from(hash));
  }
}
