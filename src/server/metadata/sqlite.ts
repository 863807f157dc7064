import Database from 'better-sqlite3';
import type { Role } from '../../protocol/schemas.js';
import { CofferError } from '../../errors.js';
import { statementCache } from '../../sqlite-statements.js';
import { WalGroupCommit } from './group-commit.js';
import type {
  BlockListRow,
  BlockMeta,
  ReleasedBlockRow,
  ReleaseResult,
  CertificateBlob,
  DeviceRow,
  InvitationRow,
  InvitationStatus,
  InvitationUpdate,
  MemberKeyRow,
  MetadataStore,
  NewDevice,
  NewUser,
  OrganizationRow,
  RealmKeyRow,
  RealmMembership,
  VlobRow,
  VlobWrite,
  VlobWriteResult,
} from './types.js';
import { releasedBlockFromRow } from './types.js';

/** Schema migrations, applied in order; PRAGMA user_version records how many ran. */
const MIGRATIONS: string[] = [
  `CREATE TABLE organizations (
     org_id TEXT PRIMARY KEY, bootstrap_token_hash BLOB NOT NULL, root_verify_key BLOB,
     created_at INTEGER NOT NULL, bootstrapped_at INTEGER);
   CREATE TABLE certificates (
     org_id TEXT NOT NULL, idx INTEGER NOT NULL, blob BLOB NOT NULL, timestamp INTEGER NOT NULL,
     PRIMARY KEY (org_id, idx));
   CREATE TABLE users (
     org_id TEXT NOT NULL, user_id TEXT NOT NULL, public_key BLOB NOT NULL, profile TEXT NOT NULL,
     revoked_at INTEGER, PRIMARY KEY (org_id, user_id));
   CREATE TABLE devices (
     org_id TEXT NOT NULL, device_id TEXT NOT NULL, user_id TEXT NOT NULL, verify_key BLOB NOT NULL,
     PRIMARY KEY (org_id, device_id));
   CREATE TABLE realms (
     org_id TEXT NOT NULL, realm_id TEXT NOT NULL, checkpoint INTEGER NOT NULL DEFAULT 0, created_at INTEGER NOT NULL,
     PRIMARY KEY (org_id, realm_id));
   CREATE TABLE realm_roles (
     org_id TEXT NOT NULL, realm_id TEXT NOT NULL, user_id TEXT NOT NULL, role TEXT NOT NULL,
     PRIMARY KEY (org_id, realm_id, user_id));
   CREATE TABLE realm_keys (
     org_id TEXT NOT NULL, realm_id TEXT NOT NULL, key_index INTEGER NOT NULL, user_id TEXT NOT NULL, sealed_key BLOB NOT NULL,
     PRIMARY KEY (org_id, realm_id, key_index, user_id));
   CREATE TABLE vlobs (
     org_id TEXT NOT NULL, realm_id TEXT NOT NULL, vlob_id TEXT NOT NULL, version INTEGER NOT NULL,
     key_index INTEGER NOT NULL, author TEXT NOT NULL, timestamp INTEGER NOT NULL, created_at INTEGER NOT NULL,
     checkpoint INTEGER NOT NULL, blob BLOB NOT NULL,
     PRIMARY KEY (org_id, vlob_id, version));
   CREATE INDEX vlobs_changes ON vlobs (org_id, realm_id, checkpoint);
   CREATE TABLE blocks (
     org_id TEXT NOT NULL, block_id TEXT NOT NULL, realm_id TEXT NOT NULL, size INTEGER NOT NULL, digest BLOB NOT NULL,
     author TEXT NOT NULL, created_at INTEGER NOT NULL, PRIMARY KEY (org_id, block_id));`,
  `CREATE TABLE invitations (
     org_id TEXT NOT NULL, invitation_id TEXT NOT NULL, token_hash BLOB NOT NULL, type TEXT NOT NULL, handle TEXT,
     greeter_user_id TEXT NOT NULL, greeter_device_id TEXT NOT NULL, status TEXT NOT NULL, created_at INTEGER NOT NULL,
     claimer_public_key BLOB, claimer_commitment BLOB, claimer_nonce BLOB, claimer_payload BLOB,
     greeter_public_key BLOB, greeter_nonce BLOB, greeter_payload BLOB,
     PRIMARY KEY (org_id, invitation_id));
   CREATE UNIQUE INDEX invitations_token ON invitations (org_id, token_hash);`,
  `ALTER TABLE realms ADD COLUMN rotation_needed INTEGER NOT NULL DEFAULT 0;`,
  `CREATE TABLE groups_ (org_id TEXT NOT NULL, group_id TEXT NOT NULL, PRIMARY KEY (org_id, group_id));
   CREATE TABLE group_members (org_id TEXT NOT NULL, group_id TEXT NOT NULL, user_id TEXT NOT NULL, PRIMARY KEY (org_id, group_id, user_id));
   CREATE TABLE realm_group_roles (
     org_id TEXT NOT NULL, realm_id TEXT NOT NULL, group_id TEXT NOT NULL, role TEXT NOT NULL, PRIMARY KEY (org_id, realm_id, group_id));`,
  `ALTER TABLE blocks ADD COLUMN released_at INTEGER;
   ALTER TABLE blocks ADD COLUMN released_by TEXT;
   ALTER TABLE blocks ADD COLUMN deleting_at INTEGER;
   CREATE INDEX blocks_realm ON blocks (org_id, realm_id, block_id);
   CREATE INDEX blocks_released ON blocks (released_at) WHERE released_at IS NOT NULL;`,
];

const RANK: Record<Role, number> = { reader: 1, contributor: 2, manager: 3, owner: 4 };

const INVITATION_COLUMNS: Record<string, string> = {
  status: 'status',
  claimerPublicKey: 'claimer_public_key',
  claimerCommitment: 'claimer_commitment',
  claimerNonce: 'claimer_nonce',
  claimerPayload: 'claimer_payload',
  greeterPublicKey: 'greeter_public_key',
  greeterNonce: 'greeter_nonce',
  greeterPayload: 'greeter_payload',
};

type Row = Record<string, unknown>;

export class SqliteMetadataStore implements MetadataStore {
  private readonly db: Database.Database;
  /** Vlob and block writes (the hot path) share WAL flushes; null for an in-memory database. */
  private readonly groupCommit: WalGroupCommit | null;
  /** Prepared statements, cached by text. */
  private readonly sql: (text: string) => Database.Statement;

  constructor(file: string) {
    this.db = new Database(file);
    this.sql = statementCache(this.db);
    const wal = this.db.pragma('journal_mode = WAL', { simple: true }) === 'wal';
    this.db.pragma('synchronous = FULL'); // an acknowledged write survives a power cut
    this.db.pragma('foreign_keys = ON');
    this.db.pragma('busy_timeout = 5000');
    this.groupCommit = wal ? new WalGroupCommit(`${this.db.name}-wal`) : null;
    this.migrate();
  }

  /**
   * Runs a write transaction that is acknowledged only once durable, its WAL flush shared with
   * concurrent writers (see WalGroupCommit). Writes asked for in the same run of microtasks (the
   * items of one batched request) commit together: each in its own savepoint, so one that fails
   * leaves the others, in one transaction, which writes each touched page once instead of once per
   * write. better-sqlite3 is synchronous: nothing interleaves between switching to NORMAL,
   * committing, and switching back.
   */
  private durableWrite<T>(write: () => T): Promise<T> {
    if (!this.groupCommit) return new Promise<T>((resolve) => resolve(write()));
    return new Promise<T>((resolve, reject) => {
      this.queuedWrites.push({ write, resolve: resolve as (value: unknown) => void, reject });
      if (this.queuedWrites.length === 1) queueMicrotask(() => void this.commitQueuedWrites());
    });
  }

  private readonly queuedWrites: Array<{ write: () => unknown; resolve: (value: unknown) => void; reject: (err: unknown) => void }> = [];

  private async commitQueuedWrites(): Promise<void> {
    const batch = this.queuedWrites.splice(0);
    const outcomes: Array<{ ok: true; value: unknown } | { ok: false; err: unknown }> = [];
    try {
      this.db.pragma('synchronous = NORMAL');
      try {
        this.db.transaction(() => {
          for (const q of batch) {
            try {
              outcomes.push({ ok: true, value: this.db.transaction(q.write)() });
            } catch (err) {
              // SQLite rolled the whole transaction back (a full disk, an I/O error): none of it stands.
              if (!this.db.inTransaction) throw err;
              outcomes.push({ ok: false, err });
            }
          }
        })();
      } finally {
        this.db.pragma('synchronous = FULL');
      }
      await this.groupCommit!.committedDurably();
    } catch (err) {
      for (const q of batch) q.reject(err);
      return;
    }
    batch.forEach((q, i) => {
      const o = outcomes[i]!;
      if (o.ok) q.resolve(o.value);
      else q.reject(o.err);
    });
  }

  private migrate(): void {
    const current = this.db.pragma('user_version', { simple: true }) as number;
    for (let i = current; i < MIGRATIONS.length; i++) {
      this.db.transaction(() => {
        this.db.exec(MIGRATIONS[i]!);
        this.db.pragma(`user_version = ${i + 1}`);
      })();
    }
  }

  async createOrganization(orgId: string, tokenHash: Buffer, now: number): Promise<boolean> {
    const r = this
      .sql('INSERT OR IGNORE INTO organizations (org_id, bootstrap_token_hash, created_at) VALUES (?, ?, ?)')
      .run(orgId, tokenHash, now);
    return r.changes === 1;
  }

  async getOrganization(orgId: string): Promise<OrganizationRow | null> {
    const row = this.sql('SELECT * FROM organizations WHERE org_id = ?').get(orgId) as Row | undefined;
    if (!row) return null;
    return {
      orgId: row.org_id as string,
      bootstrapTokenHash: row.bootstrap_token_hash as Buffer,
      rootVerifyKey: (row.root_verify_key as Buffer | null) ?? null,
      createdAt: row.created_at as number,
      bootstrappedAt: (row.bootstrapped_at as number | null) ?? null,
    };
  }

  async bootstrapOrganization(orgId: string, rootVerifyKey: Buffer, user: NewUser, device: NewDevice, now: number): Promise<boolean> {
    return this.db.transaction(() => {
      const r = this
        .sql('UPDATE organizations SET root_verify_key = ?, bootstrapped_at = ? WHERE org_id = ? AND bootstrapped_at IS NULL')
        .run(rootVerifyKey, now, orgId);
      if (r.changes !== 1) return false;
      this
        .sql('INSERT INTO users (org_id, user_id, public_key, profile) VALUES (?, ?, ?, ?)')
        .run(orgId, user.userId, user.publicKey, user.profile);
      this
        .sql('INSERT INTO devices (org_id, device_id, user_id, verify_key) VALUES (?, ?, ?, ?)')
        .run(orgId, device.deviceId, device.userId, device.verifyKey);
      this.appendCertificate(orgId, user.certificate, user.timestamp);
      this.appendCertificate(orgId, device.certificate, device.timestamp);
      return true;
    })();
  }

  async createUser(orgId: string, user: NewUser, device: NewDevice): Promise<boolean> {
    return this.db.transaction(() => {
      const exists = this.sql('SELECT 1 FROM users WHERE org_id = ? AND user_id = ?').get(orgId, user.userId);
      const devExists = this.sql('SELECT 1 FROM devices WHERE org_id = ? AND device_id = ?').get(orgId, device.deviceId);
      if (exists || devExists) return false;
      this
        .sql('INSERT INTO users (org_id, user_id, public_key, profile) VALUES (?, ?, ?, ?)')
        .run(orgId, user.userId, user.publicKey, user.profile);
      this
        .sql('INSERT INTO devices (org_id, device_id, user_id, verify_key) VALUES (?, ?, ?, ?)')
        .run(orgId, device.deviceId, device.userId, device.verifyKey);
      this.appendCertificate(orgId, user.certificate, user.timestamp);
      this.appendCertificate(orgId, device.certificate, device.timestamp);
      return true;
    })();
  }

  async getUser(orgId: string, userId: string) {
    const row = this.sql('SELECT user_id, profile, public_key, revoked_at FROM users WHERE org_id = ? AND user_id = ?').get(orgId, userId) as
      | Row
      | undefined;
    if (!row) return null;
    return {
      userId: row.user_id as string,
      profile: row.profile as string,
      publicKey: row.public_key as Buffer,
      revokedAt: (row.revoked_at as number | null) ?? null,
    };
  }

  private appendCertificate(orgId: string, blob: Buffer, timestamp: number): void {
    const next = this.sql('SELECT COALESCE(MAX(idx), 0) + 1 AS n, COALESCE(MAX(timestamp), 0) AS last FROM certificates WHERE org_id = ?').get(orgId) as Row;
    // Clients refuse a chain whose time goes backwards: order is enforced here.
    if (timestamp < (next.last as number)) throw new CofferError('conflict', 'certificate older than the last one of the organization: sign it again with the current time');
    this.sql('INSERT INTO certificates (org_id, idx, blob, timestamp) VALUES (?, ?, ?, ?)').run(orgId, next.n, blob, timestamp);
  }

  async getDevice(orgId: string, deviceId: string): Promise<DeviceRow | null> {
    const row = this
      .sql(
        `SELECT d.device_id, d.user_id, d.verify_key, u.revoked_at FROM devices d
         JOIN users u ON u.org_id = d.org_id AND u.user_id = d.user_id WHERE d.org_id = ? AND d.device_id = ?`,
      )
      .get(orgId, deviceId) as Row | undefined;
    if (!row) return null;
    return {
      orgId,
      deviceId: row.device_id as string,
      userId: row.user_id as string,
      verifyKey: row.verify_key as Buffer,
      userRevokedAt: (row.revoked_at as number | null) ?? null,
    };
  }

  async listCertificates(orgId: string, since: number): Promise<Array<{ index: number; blob: Buffer }>> {
    const rows = this.sql('SELECT idx, blob FROM certificates WHERE org_id = ? AND idx > ? ORDER BY idx').all(orgId, since) as Row[];
    return rows.map((r) => ({ index: r.idx as number, blob: r.blob as Buffer }));
  }

  async createRealm(orgId: string, realmId: string, owner: string, keyIndex: number, sealedKey: Buffer, now: number, certificates: CertificateBlob[]): Promise<boolean> {
    return this.db.transaction(() => {
      const r = this.sql('INSERT OR IGNORE INTO realms (org_id, realm_id, created_at) VALUES (?, ?, ?)').run(orgId, realmId, now);
      if (r.changes !== 1) return false;
      this.sql("INSERT INTO realm_roles (org_id, realm_id, user_id, role) VALUES (?, ?, ?, 'owner')").run(orgId, realmId, owner);
      this
        .sql('INSERT INTO realm_keys (org_id, realm_id, key_index, user_id, sealed_key) VALUES (?, ?, ?, ?, ?)')
        .run(orgId, realmId, keyIndex, owner, sealedKey);
      for (const c of certificates) this.appendCertificate(orgId, c.blob, c.timestamp);
      return true;
    })();
  }

  /** A direct role set explicitly wins; otherwise the highest role inherited through groups. */
  async getRole(orgId: string, realmId: string, userId: string): Promise<Role | null> {
    return this.effectiveRole(orgId, realmId, userId);
  }

  private effectiveRole(orgId: string, realmId: string, userId: string): Role | null {
    const row = this.sql('SELECT role FROM realm_roles WHERE org_id = ? AND realm_id = ? AND user_id = ?').get(orgId, realmId, userId) as Row | undefined;
    if (row) return row.role as Role;
    const inherited = this
      .sql(
        `SELECT rgr.role FROM realm_group_roles rgr JOIN group_members gm ON gm.org_id = rgr.org_id AND gm.group_id = rgr.group_id
         WHERE rgr.org_id = ? AND rgr.realm_id = ? AND gm.user_id = ?`,
      )
      .all(orgId, realmId, userId) as Row[];
    let best: Role | null = null;
    for (const r of inherited) if (best === null || RANK[r.role as Role] > RANK[best]) best = r.role as Role;
    return best;
  }

  /** Every user with an effective role on the realm. */
  private memberIds(orgId: string, realmId: string): string[] {
    const rows = this
      .sql(
        `SELECT user_id FROM realm_roles WHERE org_id = ? AND realm_id = ?
         UNION SELECT gm.user_id FROM realm_group_roles rgr JOIN group_members gm ON gm.org_id = rgr.org_id AND gm.group_id = rgr.group_id
         WHERE rgr.org_id = ? AND rgr.realm_id = ?`,
      )
      .all(orgId, realmId, orgId, realmId) as Row[];
    return rows.map((r) => r.user_id as string);
  }

  async setRole(orgId: string, realmId: string, userId: string, role: Role | null, keys: RealmKeyRow[], certificate: CertificateBlob): Promise<void> {
    this.db.transaction(() => {
      this.appendCertificate(orgId, certificate.blob, certificate.timestamp);
      if (role === null) {
        this.sql('DELETE FROM realm_roles WHERE org_id = ? AND realm_id = ? AND user_id = ?').run(orgId, realmId, userId);
        // Still reaching it through a group: keep the keys. Otherwise drop them and rotate (they keep the old ones).
        if (this.effectiveRole(orgId, realmId, userId) === null) {
          this.sql('DELETE FROM realm_keys WHERE org_id = ? AND realm_id = ? AND user_id = ?').run(orgId, realmId, userId);
          this.sql('UPDATE realms SET rotation_needed = 1 WHERE org_id = ? AND realm_id = ?').run(orgId, realmId);
        }
        return;
      }
      this
        .sql('INSERT INTO realm_roles (org_id, realm_id, user_id, role) VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET role = excluded.role')
        .run(orgId, realmId, userId, role);
      const put = this.sql(
        'INSERT INTO realm_keys (org_id, realm_id, key_index, user_id, sealed_key) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET sealed_key = excluded.sealed_key',
      );
      for (const k of keys) put.run(orgId, realmId, k.keyIndex, userId, k.sealedKey);
    })();
  }

  async realmExists(orgId: string, realmId: string): Promise<boolean> {
    return this.sql('SELECT 1 FROM realms WHERE org_id = ? AND realm_id = ?').get(orgId, realmId) !== undefined;
  }

  async listRealms(orgId: string, userId: string): Promise<RealmMembership[]> {
    const realms = this
      .sql(
        `SELECT r.realm_id, r.rotation_needed FROM realms r WHERE r.org_id = ? AND r.realm_id IN (
           SELECT realm_id FROM realm_roles WHERE org_id = ? AND user_id = ?
           UNION SELECT rgr.realm_id FROM realm_group_roles rgr JOIN group_members gm ON gm.org_id = rgr.org_id AND gm.group_id = rgr.group_id
           WHERE rgr.org_id = ? AND gm.user_id = ?) ORDER BY r.realm_id`,
      )
      .all(orgId, orgId, userId, orgId, userId) as Row[];
    const keys = this.sql('SELECT key_index, sealed_key FROM realm_keys WHERE org_id = ? AND realm_id = ? AND user_id = ? ORDER BY key_index');
    const out: RealmMembership[] = [];
    for (const r of realms) {
      const realmId = r.realm_id as string;
      const role = this.effectiveRole(orgId, realmId, userId);
      if (role === null) continue;
      out.push({
        realmId,
        role,
        keys: (keys.all(orgId, realmId, userId) as Row[]).map((k) => ({ keyIndex: k.key_index as number, sealedKey: k.sealed_key as Buffer })),
        rotationNeeded: (r.rotation_needed as number) === 1,
        keysMissing: this.keysMissing(orgId, realmId),
      });
    }
    return out;
  }

  private keysMissing(orgId: string, realmId: string): boolean {
    const latest = (this.sql('SELECT COALESCE(MAX(key_index), 0) AS k FROM realm_keys WHERE org_id = ? AND realm_id = ?').get(orgId, realmId) as Row).k as number;
    const has = new Set(
      (this.sql('SELECT user_id FROM realm_keys WHERE org_id = ? AND realm_id = ? AND key_index = ?').all(orgId, realmId, latest) as Row[]).map((r) => r.user_id as string),
    );
    return this.memberIds(orgId, realmId).some((u) => !has.has(u));
  }

  private writeVlob(w: VlobWrite, expectedPrevious: number): Promise<VlobWriteResult> {
    return this.durableWrite((): VlobWriteResult => {
      const cur = this
        .sql('SELECT MAX(version) AS v, MIN(realm_id) AS realm FROM vlobs WHERE org_id = ? AND vlob_id = ?')
        .get(w.orgId, w.vlobId) as Row;
      const current = (cur.v as number | null) ?? null;
      // A vlob id belongs to one realm forever: writing it through another realm is a conflict.
      if ((current ?? 0) !== expectedPrevious || (current !== null && cur.realm !== w.realmId)) return { ok: false, currentVersion: current };
      this.sql('UPDATE realms SET checkpoint = checkpoint + 1 WHERE org_id = ? AND realm_id = ?').run(w.orgId, w.realmId);
      const cp = (this.sql('SELECT checkpoint FROM realms WHERE org_id = ? AND realm_id = ?').get(w.orgId, w.realmId) as Row).checkpoint as number;
      this
        .sql(
          `INSERT INTO vlobs (org_id, realm_id, vlob_id, version, key_index, author, timestamp, created_at, checkpoint, blob)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
        )
        .run(w.orgId, w.realmId, w.vlobId, w.version, w.keyIndex, w.author, w.timestamp, w.createdAt, cp, w.blob);
      return { ok: true, checkpoint: cp };
    });
  }

  async createVlob(w: VlobWrite): Promise<VlobWriteResult> {
    return this.writeVlob(w, 0);
  }

  async updateVlob(w: VlobWrite): Promise<VlobWriteResult> {
    return this.writeVlob(w, w.version - 1);
  }

  async readVlob(orgId: string, realmId: string, vlobId: string, opts: { version?: number; at?: number }): Promise<VlobRow | null> {
    let sql = 'SELECT * FROM vlobs WHERE org_id = ? AND realm_id = ? AND vlob_id = ?';
    const args: unknown[] = [orgId, realmId, vlobId];
    if (opts.version !== undefined) {
      sql += ' AND version = ?';
      args.push(opts.version);
    }
    if (opts.at !== undefined) {
      sql += ' AND created_at <= ?';
      args.push(opts.at);
    }
    const row = this.sql(`${sql} ORDER BY version DESC LIMIT 1`).get(...args) as Row | undefined;
    return row ? toVlobRow(row) : null;
  }

  async readVlobs(orgId: string, realmId: string, vlobIds: readonly string[], at?: number): Promise<VlobRow[]> {
    const stmt = this.sql('SELECT * FROM vlobs WHERE org_id = ? AND realm_id = ? AND vlob_id = ? AND created_at <= ? ORDER BY version DESC LIMIT 1');
    const out: VlobRow[] = [];
    this.db.transaction(() => {
      for (const id of vlobIds) {
        const row = stmt.get(orgId, realmId, id, at ?? Number.MAX_SAFE_INTEGER) as Row | undefined;
        if (row) out.push(toVlobRow(row));
      }
    })();
    return out;
  }

  async listChanges(orgId: string, realmId: string, since: number) {
    return this.db.transaction(() => {
      const cp = this.sql('SELECT checkpoint FROM realms WHERE org_id = ? AND realm_id = ?').get(orgId, realmId) as Row | undefined;
      // Latest version per vlob changed after `since` (older intermediate versions are not interesting).
      const rows = this
        .sql(
          `SELECT vlob_id, MAX(version) AS version, MAX(checkpoint) AS checkpoint FROM vlobs
           WHERE org_id = ? AND realm_id = ? AND checkpoint > ? GROUP BY vlob_id ORDER BY checkpoint`,
        )
        .all(orgId, realmId, since) as Row[];
      return {
        checkpoint: (cp?.checkpoint as number | undefined) ?? 0,
        changes: rows.map((r) => ({ vlobId: r.vlob_id as string, version: r.version as number, checkpoint: r.checkpoint as number })),
      };
    })();
  }

  async getBlockMeta(orgId: string, blockId: string): Promise<BlockMeta | null> {
    const row = this.sql('SELECT realm_id, size, digest FROM blocks WHERE org_id = ? AND block_id = ?').get(orgId, blockId) as Row | undefined;
    return row ? { realmId: row.realm_id as string, size: row.size as number, digest: row.digest as Buffer } : null;
  }

  async insertBlockMeta(orgId: string, blockId: string, meta: BlockMeta, author: string, now: number): Promise<boolean> {
    return this.durableWrite(
      () =>
        this
          .sql('INSERT OR IGNORE INTO blocks (org_id, block_id, realm_id, size, digest, author, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)')
          .run(orgId, blockId, meta.realmId, meta.size, meta.digest, author, now).changes === 1,
    );
  }

  async listBlocks(orgId: string, realmId: string, after: string, limit: number): Promise<BlockListRow[]> {
    const rows = this
      .sql(
        `SELECT block_id, size, created_at, released_at FROM blocks
         WHERE org_id = ? AND realm_id = ? AND block_id > ? AND deleting_at IS NULL ORDER BY block_id LIMIT ?`,
      )
      .all(orgId, realmId, after, limit) as Row[];
    return rows.map((r) => ({ blockId: r.block_id as string, size: r.size as number, createdAt: r.created_at as number, releasedAt: (r.released_at as number | null) ?? null }));
  }

  async releaseBlocks(orgId: string, realmId: string, blockIds: readonly string[], deviceId: string, now: number): Promise<ReleaseResult> {
    return this.db.transaction((): ReleaseResult => {
      const ids = [...new Set(blockIds)];
      const check = this.sql('SELECT released_at FROM blocks WHERE org_id = ? AND block_id = ? AND realm_id = ? AND deleting_at IS NULL');
      const unknown: string[] = [];
      let already = 0;
      for (const id of ids) {
        const row = check.get(orgId, id, realmId) as Row | undefined;
        if (!row) unknown.push(id);
        else if (row.released_at !== null) already++;
      }
      if (unknown.length > 0) return { ok: false, unknown };
      const mark = this.sql('UPDATE blocks SET released_at = ?, released_by = ? WHERE org_id = ? AND block_id = ? AND released_at IS NULL');
      let released = 0;
      for (const id of ids) released += mark.run(now, deviceId, orgId, id).changes;
      return { ok: true, released, alreadyReleased: already };
    })();
  }

  async reviveBlock(orgId: string, blockId: string): Promise<'live' | 'revived' | 'deleting' | 'absent'> {
    return this.db.transaction(() => {
      const row = this.sql('SELECT released_at, deleting_at FROM blocks WHERE org_id = ? AND block_id = ?').get(orgId, blockId) as Row | undefined;
      if (!row) return 'absent' as const;
      if (row.deleting_at !== null) return 'deleting' as const;
      if (row.released_at === null) return 'live' as const;
      this.sql('UPDATE blocks SET released_at = NULL, released_by = NULL WHERE org_id = ? AND block_id = ?').run(orgId, blockId);
      return 'revived' as const;
    })();
  }

  async listReleasedBlocks(releasedBefore: number, limit: number): Promise<ReleasedBlockRow[]> {
    const rows = this
      .sql(
        `SELECT org_id, realm_id, block_id, size, released_at, released_by, deleting_at FROM blocks
         WHERE released_at IS NOT NULL AND (released_at <= ? OR deleting_at IS NOT NULL) ORDER BY released_at, org_id, block_id LIMIT ?`,
      )
      .all(releasedBefore, limit) as Row[];
    return rows.map(releasedBlockFromRow);
  }

  async markBlockDeleting(orgId: string, blockId: string, releasedBefore: number, now: number): Promise<boolean> {
    const r = this
      .sql(
        `UPDATE blocks SET deleting_at = COALESCE(deleting_at, ?)
         WHERE org_id = ? AND block_id = ? AND released_at IS NOT NULL AND (released_at <= ? OR deleting_at IS NOT NULL)`,
      )
      .run(now, orgId, blockId, releasedBefore);
    return r.changes === 1;
  }

  async deleteBlockMeta(orgId: string, blockId: string): Promise<boolean> {
    return this.sql('DELETE FROM blocks WHERE org_id = ? AND block_id = ? AND deleting_at IS NOT NULL').run(orgId, blockId).changes === 1;
  }

  async createInvitation(orgId: string, r: InvitationRow): Promise<void> {
    this
      .sql(
        `INSERT INTO invitations (org_id, invitation_id, token_hash, type, handle, greeter_user_id, greeter_device_id, status, created_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      )
      .run(orgId, r.invitationId, r.tokenHash, r.type, r.handle, r.greeterUserId, r.greeterDeviceId, r.status, r.createdAt);
  }

  async getInvitation(orgId: string, invitationId: string): Promise<InvitationRow | null> {
    const row = this.sql('SELECT * FROM invitations WHERE org_id = ? AND invitation_id = ?').get(orgId, invitationId) as Row | undefined;
    return row ? toInvitationRow(row) : null;
  }

  async getInvitationByToken(orgId: string, tokenHash: Buffer): Promise<InvitationRow | null> {
    const row = this.sql('SELECT * FROM invitations WHERE org_id = ? AND token_hash = ?').get(orgId, tokenHash) as Row | undefined;
    return row ? toInvitationRow(row) : null;
  }

  async listInvitations(orgId: string, greeterUserId: string): Promise<InvitationRow[]> {
    const rows = this
      .sql("SELECT * FROM invitations WHERE org_id = ? AND greeter_user_id = ? AND status IN ('pending', 'claiming') ORDER BY created_at")
      .all(orgId, greeterUserId) as Row[];
    return rows.map(toInvitationRow);
  }

  async updateInvitation(
    orgId: string,
    invitationId: string,
    update: InvitationUpdate,
    guard: { unset: Array<keyof InvitationUpdate>; statuses: InvitationStatus[] },
  ): Promise<boolean> {
    const sets = Object.keys(update).map((k) => `${INVITATION_COLUMNS[k]} = ?`);
    const where = [...guard.unset.map((k) => `${INVITATION_COLUMNS[k]} IS NULL`), `status IN (${guard.statuses.map(() => '?').join(', ')})`];
    const r = this
      .sql(`UPDATE invitations SET ${sets.join(', ')} WHERE org_id = ? AND invitation_id = ? AND ${where.join(' AND ')}`)
      .run(...Object.values(update), orgId, invitationId, ...guard.statuses);
    return r.changes === 1;
  }

  async createDevice(orgId: string, device: NewDevice): Promise<boolean> {
    return this.db.transaction(() => {
      if (this.sql('SELECT 1 FROM devices WHERE org_id = ? AND device_id = ?').get(orgId, device.deviceId)) return false;
      this
        .sql('INSERT INTO devices (org_id, device_id, user_id, verify_key) VALUES (?, ?, ?, ?)')
        .run(orgId, device.deviceId, device.userId, device.verifyKey);
      this.appendCertificate(orgId, device.certificate, device.timestamp);
      return true;
    })();
  }

  async listMembers(orgId: string, realmId: string): Promise<Array<{ userId: string; role: Role }>> {
    return this.memberIds(orgId, realmId)
      .sort()
      .map((userId) => ({ userId, role: this.effectiveRole(orgId, realmId, userId)! }));
  }

  async revokeUser(orgId: string, userId: string, certificate: Buffer, timestamp: number, now: number): Promise<boolean> {
    return this.db.transaction(() => {
      const r = this.sql('UPDATE users SET revoked_at = ? WHERE org_id = ? AND user_id = ? AND revoked_at IS NULL').run(now, orgId, userId);
      if (r.changes !== 1) return false;
      this
        .sql('UPDATE realms SET rotation_needed = 1 WHERE org_id = ? AND realm_id IN (SELECT realm_id FROM realm_roles WHERE org_id = ? AND user_id = ?)')
        .run(orgId, orgId, userId);
      this
        .sql(
          `UPDATE realms SET rotation_needed = 1 WHERE org_id = ? AND realm_id IN (SELECT rgr.realm_id FROM realm_group_roles rgr
           JOIN group_members gm ON gm.org_id = rgr.org_id AND gm.group_id = rgr.group_id WHERE rgr.org_id = ? AND gm.user_id = ?)`,
        )
        .run(orgId, orgId, userId);
      this.sql('DELETE FROM realm_roles WHERE org_id = ? AND user_id = ?').run(orgId, userId);
      this.sql('DELETE FROM group_members WHERE org_id = ? AND user_id = ?').run(orgId, userId);
      this.sql('DELETE FROM realm_keys WHERE org_id = ? AND user_id = ?').run(orgId, userId);
      this.appendCertificate(orgId, certificate, timestamp);
      return true;
    })();
  }

  async addRealmKey(orgId: string, realmId: string, keyIndex: number, keys: Array<{ userId: string; sealedKey: Buffer }>, certificate: CertificateBlob): Promise<boolean> {
    return this.db.transaction(() => {
      const cur = this.sql('SELECT COALESCE(MAX(key_index), 0) AS k FROM realm_keys WHERE org_id = ? AND realm_id = ?').get(orgId, realmId) as Row;
      if ((cur.k as number) + 1 !== keyIndex) return false;
      this.appendCertificate(orgId, certificate.blob, certificate.timestamp);
      const put = this.sql('INSERT INTO realm_keys (org_id, realm_id, key_index, user_id, sealed_key) VALUES (?, ?, ?, ?, ?)');
      for (const k of keys) put.run(orgId, realmId, keyIndex, k.userId, k.sealedKey);
      this.sql('UPDATE realms SET rotation_needed = 0 WHERE org_id = ? AND realm_id = ?').run(orgId, realmId);
      return true;
    })();
  }

  async createGroup(orgId: string, groupId: string, certificate: CertificateBlob): Promise<boolean> {
    return this.db.transaction(() => {
      if (this.sql('INSERT OR IGNORE INTO groups_ (org_id, group_id) VALUES (?, ?)').run(orgId, groupId).changes !== 1) return false;
      this.appendCertificate(orgId, certificate.blob, certificate.timestamp);
      return true;
    })();
  }

  async groupExists(orgId: string, groupId: string): Promise<boolean> {
    return this.sql('SELECT 1 FROM groups_ WHERE org_id = ? AND group_id = ?').get(orgId, groupId) !== undefined;
  }

  async setGroupMember(orgId: string, groupId: string, userId: string, member: boolean, certificate: CertificateBlob): Promise<void> {
    this.db.transaction(() => {
      this.appendCertificate(orgId, certificate.blob, certificate.timestamp);
      if (member) {
        this.sql('INSERT OR IGNORE INTO group_members (org_id, group_id, user_id) VALUES (?, ?, ?)').run(orgId, groupId, userId);
        return;
      }
      this.sql('DELETE FROM group_members WHERE org_id = ? AND group_id = ? AND user_id = ?').run(orgId, groupId, userId);
      // Realms the member no longer reaches lose their keys and get new ones (the old ones stay with them).
      const realms = (this.sql('SELECT realm_id FROM realm_group_roles WHERE org_id = ? AND group_id = ?').all(orgId, groupId) as Row[]).map((r) => r.realm_id as string);
      for (const realmId of realms) {
        if (this.effectiveRole(orgId, realmId, userId) !== null) continue;
        this.sql('DELETE FROM realm_keys WHERE org_id = ? AND realm_id = ? AND user_id = ?').run(orgId, realmId, userId);
        this.sql('UPDATE realms SET rotation_needed = 1 WHERE org_id = ? AND realm_id = ?').run(orgId, realmId);
      }
    })();
  }

  async setGroupRole(orgId: string, realmId: string, groupId: string, role: Role | null, keys: MemberKeyRow[], certificate: CertificateBlob): Promise<void> {
    this.db.transaction(() => {
      this.appendCertificate(orgId, certificate.blob, certificate.timestamp);
      if (role === null) {
        this.sql('DELETE FROM realm_group_roles WHERE org_id = ? AND realm_id = ? AND group_id = ?').run(orgId, realmId, groupId);
        this.sql('UPDATE realms SET rotation_needed = 1 WHERE org_id = ? AND realm_id = ?').run(orgId, realmId);
        return;
      }
      this
        .sql('INSERT INTO realm_group_roles (org_id, realm_id, group_id, role) VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET role = excluded.role')
        .run(orgId, realmId, groupId, role);
      this.insertMemberKeys(orgId, realmId, keys);
    })();
  }

  async getGroupRole(orgId: string, realmId: string, groupId: string): Promise<Role | null> {
    const row = this.sql('SELECT role FROM realm_group_roles WHERE org_id = ? AND realm_id = ? AND group_id = ?').get(orgId, realmId, groupId) as Row | undefined;
    return row ? (row.role as Role) : null;
  }

  async addMemberKeys(orgId: string, realmId: string, keys: MemberKeyRow[]): Promise<void> {
    this.db.transaction(() => this.insertMemberKeys(orgId, realmId, keys))();
  }

  private insertMemberKeys(orgId: string, realmId: string, keys: MemberKeyRow[]): void {
    const put = this.sql('INSERT OR IGNORE INTO realm_keys (org_id, realm_id, key_index, user_id, sealed_key) VALUES (?, ?, ?, ?, ?)');
    for (const k of keys) put.run(orgId, realmId, k.keyIndex, k.userId, k.sealedKey);
  }

  async close(): Promise<void> {
    this.db.close();
  }
}

function toInvitationRow(row: Row): InvitationRow {
  const b = (k: string) => (row[k] as Buffer | null) ?? null;
  return {
    invitationId: row.invitation_id as string,
    tokenHash: row.token_hash as Buffer,
    type: row.type as 'user' | 'device',
    handle: (row.handle as string | null) ?? null,
    greeterUserId: row.greeter_user_id as string,
    greeterDeviceId: row.greeter_device_id as string,
    status: row.status as InvitationStatus,
    createdAt: row.created_at as number,
    claimerPublicKey: b('claimer_public_key'),
    claimerCommitment: b('claimer_commitment'),
    claimerNonce: b('claimer_nonce'),
    claimerPayload: b('claimer_payload'),
    greeterPublicKey: b('greeter_public_key'),
    greeterNonce: b('greeter_nonce'),
    greeterPayload: b('greeter_payload'),
  };
}

function toVlobRow(row: Row): VlobRow {
  return {
    vlobId: row.vlob_id as string,
    version: row.version as number,
    keyIndex: row.key_index as number,
    author: row.author as string,
    timestamp: row.timestamp as number,
    createdAt: row.created_at as number,
    blob: row.blob as Buffer,
  };
}
