import pg from 'pg';
import type { Logger } from 'pino';
import { CofferError } from '../../errors.js';
import { ROLE_RANK, type Role } from '../../protocol/schemas.js';
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

/**
 * Schema migrations, applied in order inside one transaction under an advisory lock (several
 * instances may start at once); schema_migrations records which ran. Same tables and keys as the
 * SQLite store: the primary key (org_id, vlob_id, version) is the last guard against two writers
 * creating the same vlob version.
 */
const MIGRATIONS: string[] = [
  `CREATE TABLE organizations (
     org_id TEXT PRIMARY KEY, bootstrap_token_hash BYTEA NOT NULL, root_verify_key BYTEA,
     created_at BIGINT NOT NULL, bootstrapped_at BIGINT);
   CREATE TABLE certificates (
     org_id TEXT NOT NULL, idx INTEGER NOT NULL, blob BYTEA NOT NULL, timestamp BIGINT NOT NULL,
     PRIMARY KEY (org_id, idx));
   CREATE TABLE users (
     org_id TEXT NOT NULL, user_id TEXT NOT NULL, public_key BYTEA NOT NULL, profile TEXT NOT NULL,
     revoked_at BIGINT, PRIMARY KEY (org_id, user_id));
   CREATE TABLE devices (
     org_id TEXT NOT NULL, device_id TEXT NOT NULL, user_id TEXT NOT NULL, verify_key BYTEA NOT NULL,
     PRIMARY KEY (org_id, device_id));
   CREATE TABLE realms (
     org_id TEXT NOT NULL, realm_id TEXT NOT NULL, checkpoint BIGINT NOT NULL DEFAULT 0, created_at BIGINT NOT NULL,
     PRIMARY KEY (org_id, realm_id));
   CREATE TABLE realm_roles (
     org_id TEXT NOT NULL, realm_id TEXT NOT NULL, user_id TEXT NOT NULL, role TEXT NOT NULL,
     PRIMARY KEY (org_id, realm_id, user_id));
   CREATE TABLE realm_keys (
     org_id TEXT NOT NULL, realm_id TEXT NOT NULL, key_index INTEGER NOT NULL, user_id TEXT NOT NULL, sealed_key BYTEA NOT NULL,
     PRIMARY KEY (org_id, realm_id, key_index, user_id));
   CREATE TABLE vlobs (
     org_id TEXT NOT NULL, realm_id TEXT NOT NULL, vlob_id TEXT NOT NULL, version INTEGER NOT NULL,
     key_index INTEGER NOT NULL, author TEXT NOT NULL, timestamp BIGINT NOT NULL, created_at BIGINT NOT NULL,
     checkpoint BIGINT NOT NULL, blob BYTEA NOT NULL,
     PRIMARY KEY (org_id, vlob_id, version));
   CREATE INDEX vlobs_changes ON vlobs (org_id, realm_id, checkpoint);
   CREATE TABLE blocks (
     org_id TEXT NOT NULL, block_id TEXT NOT NULL, realm_id TEXT NOT NULL, size INTEGER NOT NULL, digest BYTEA NOT NULL,
     author TEXT NOT NULL, created_at BIGINT NOT NULL, PRIMARY KEY (org_id, block_id));`,
  `CREATE TABLE invitations (
     org_id TEXT NOT NULL, invitation_id TEXT NOT NULL, token_hash BYTEA NOT NULL, type TEXT NOT NULL, handle TEXT,
     greeter_user_id TEXT NOT NULL, greeter_device_id TEXT NOT NULL, status TEXT NOT NULL, created_at BIGINT NOT NULL,
     claimer_public_key BYTEA, claimer_commitment BYTEA, claimer_nonce BYTEA, claimer_payload BYTEA,
     greeter_public_key BYTEA, greeter_nonce BYTEA, greeter_payload BYTEA,
     PRIMARY KEY (org_id, invitation_id));
   CREATE UNIQUE INDEX invitations_token ON invitations (org_id, token_hash);`,
  `ALTER TABLE realms ADD COLUMN rotation_needed BOOLEAN NOT NULL DEFAULT false;`,
  `CREATE TABLE groups_ (org_id TEXT NOT NULL, group_id TEXT NOT NULL, PRIMARY KEY (org_id, group_id));
   CREATE TABLE group_members (org_id TEXT NOT NULL, group_id TEXT NOT NULL, user_id TEXT NOT NULL, PRIMARY KEY (org_id, group_id, user_id));
   CREATE INDEX group_members_user ON group_members (org_id, user_id);
   CREATE TABLE realm_group_roles (
     org_id TEXT NOT NULL, realm_id TEXT NOT NULL, group_id TEXT NOT NULL, role TEXT NOT NULL, PRIMARY KEY (org_id, realm_id, group_id));`,
  `ALTER TABLE blocks ADD COLUMN released_at BIGINT;
   ALTER TABLE blocks ADD COLUMN released_by TEXT;
   ALTER TABLE blocks ADD COLUMN deleting_at BIGINT;
   CREATE INDEX blocks_realm ON blocks (org_id, realm_id, block_id);
   CREATE INDEX blocks_released ON blocks (released_at) WHERE released_at IS NOT NULL;`,
];

/** pg_advisory_xact_lock key serialising migrations between instances starting together ("coffer" in ASCII). */
const MIGRATION_LOCK = 0x636f66666572;

const INVITATION_COLUMNS: Record<keyof InvitationUpdate, string> = {
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
type Db = pg.Pool | pg.PoolClient;

const UNIQUE_VIOLATION = '23505';
/** Node socket errors meaning "the database is not reachable right now". */
const NETWORK_ERRORS = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'ECONNABORTED']);

/**
 * True for errors a client may retry: the database is down, restarting, overloaded, too slow, or
 * the transaction lost a serialization race. SQLSTATE classes 08 (connection), 53 (resources),
 * 57P01-57P03 (shutdown/starting), 57014 (statement timeout), 55P03 (lock timeout),
 * 40001/40P01 (serialization failure, deadlock).
 */
export function isTransientPgError(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string') {
    if (NETWORK_ERRORS.has(code)) return true;
    if (/^(08|53)/.test(code) || ['57P01', '57P02', '57P03', '57014', '55P03', '40001', '40P01'].includes(code)) return true;
  }
  // pg's own messages for a dropped or impossible connection carry no code.
  return /Connection terminated|timeout exceeded when trying to connect|Client has encountered a connection error|connect ECONNREFUSED/i.test(err.message);
}

function mapError(err: unknown): unknown {
  if (err instanceof CofferError) return err;
  if (isTransientPgError(err)) return new CofferError('unavailable', 'metadata database unavailable, retry later');
  return err;
}

/** BIGINT (int8) columns come back as numbers: every value stored here is below 2^53. */
const TYPES: pg.CustomTypesConfig = {
  getTypeParser: ((oid: number, format?: string) =>
    oid === pg.types.builtins.INT8 ? (v: string) => Number(v) : pg.types.getTypeParser(oid, format as 'text')) as pg.CustomTypesConfig['getTypeParser'],
};

export interface PostgresOptions {
  /** postgresql://user[:password]@host:port/database (libpq-style parameters in the query are passed to pg). */
  url: string;
  /** Connections in this instance's pool (default 10). */
  poolSize?: number;
  /** How long a request waits for a connection before failing as unavailable (default 5 s). */
  connectTimeoutMs?: number;
  logger?: Logger;
}

/**
 * Metadata in PostgreSQL, shared by any number of server instances. Same behaviour as the SQLite
 * store; concurrency comes from the database: vlob writes and key rotations lock their realm's row
 * (SELECT … FOR UPDATE) so checkpoints and key indexes are assigned and committed in order,
 * certificate appends lock the organization row, and the primary keys catch the remaining races (a
 * duplicate is "already exists" or a version conflict, never a 500). Lock order, to rule out
 * deadlocks: organization row first, then realm rows. A database that cannot be reached is
 * CofferError('unavailable').
 */
export class PostgresMetadataStore implements MetadataStore {
  /** The schema version this code migrates to (kept equal to the SQLite store's, migration for migration). */
  static readonly SCHEMA_VERSION = MIGRATIONS.length;
  private readonly pool: pg.Pool;

  private constructor(pool: pg.Pool) {
    this.pool = pool;
  }

  /** Connects, applies pending migrations and returns the store (throws when the database is unreachable). */
  static async open(opts: PostgresOptions): Promise<PostgresMetadataStore> {
    const pool = new pg.Pool({
      connectionString: opts.url,
      max: opts.poolSize ?? 10,
      connectionTimeoutMillis: opts.connectTimeoutMs ?? 5000,
      idleTimeoutMillis: 30_000,
      // A request never waits forever on a slow database or a held lock: it fails as unavailable (503).
      statement_timeout: 30_000,
      lock_timeout: 10_000,
      idle_in_transaction_session_timeout: 60_000,
      types: TYPES,
      application_name: 'coffer-server',
    });
    // An idle connection that dies (database restart) must not crash the process: the pool drops it.
    pool.on('error', (err) => opts.logger?.warn({ err: err.message }, 'idle PostgreSQL connection lost'));
    const store = new PostgresMetadataStore(pool);
    try {
      await store.migrate();
    } catch (err) {
      await pool.end().catch(() => undefined);
      throw err;
    }
    return store;
  }

  private async migrate(): Promise<void> {
    await this.tx(async (c) => {
      // A migration may take long (an index on a big table), and so may waiting for another instance's.
      await c.query('SET LOCAL statement_timeout = 0');
      await c.query('SET LOCAL lock_timeout = 0');
      await c.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK]);
      await c.query('CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())');
      const r = await c.query('SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations');
      const current = (r.rows[0] as Row).v as number;
      if (current > MIGRATIONS.length) {
        throw new Error(`database schema version ${current} is newer than this server knows (${MIGRATIONS.length}): upgrade the server`);
      }
      for (let i = current; i < MIGRATIONS.length; i++) {
        await c.query(MIGRATIONS[i]!);
        await c.query('INSERT INTO schema_migrations (version) VALUES ($1)', [i + 1]);
      }
    }, false);
  }

  /** The schema version recorded in schema_migrations. */
  async schemaVersion(): Promise<number> {
    return this.run(async () => ((await this.pool.query('SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations')).rows[0] as Row).v as number);
  }

  /** One statement (autocommit), with connection errors mapped to 'unavailable'. */
  private async run<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      throw mapError(err);
    }
  }

  /** One transaction on one pooled connection; rolled back on any error. */
  private async tx<T>(fn: (c: pg.PoolClient) => Promise<T>, mapErrors = true, begin = 'BEGIN'): Promise<T> {
    let client: pg.PoolClient;
    try {
      client = await this.pool.connect();
    } catch (err) {
      throw mapErrors ? mapError(err) : err;
    }
    let broken = false;
    try {
      await client.query(begin);
      const out = await fn(client);
      await client.query('COMMIT');
      return out;
    } catch (err) {
      try {
        await client.query('ROLLBACK');
      } catch {
        broken = true; // the connection is gone: do not give it back to the pool
      }
      throw mapErrors ? mapError(err) : err;
    } finally {
      client.release(broken);
    }
  }

  private one(db: Db, sql: string, args: unknown[]): Promise<Row | undefined> {
    return db.query(sql, args).then((r) => r.rows[0] as Row | undefined);
  }

  async createOrganization(orgId: string, tokenHash: Buffer, now: number): Promise<boolean> {
    return this.run(async () => {
      const r = await this.pool.query(
        'INSERT INTO organizations (org_id, bootstrap_token_hash, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING',
        [orgId, tokenHash, now],
      );
      return r.rowCount === 1;
    });
  }

  async getOrganization(orgId: string): Promise<OrganizationRow | null> {
    return this.run(async () => {
      const row = await this.one(this.pool, 'SELECT * FROM organizations WHERE org_id = $1', [orgId]);
      if (!row) return null;
      return {
        orgId: row.org_id as string,
        bootstrapTokenHash: row.bootstrap_token_hash as Buffer,
        rootVerifyKey: (row.root_verify_key as Buffer | null) ?? null,
        createdAt: row.created_at as number,
        bootstrappedAt: (row.bootstrapped_at as number | null) ?? null,
      };
    });
  }

  async bootstrapOrganization(orgId: string, rootVerifyKey: Buffer, user: NewUser, device: NewDevice, now: number): Promise<boolean> {
    return this.tx(async (c) => {
      // The row lock makes a concurrent bootstrap wait, then re-check `bootstrapped_at IS NULL` and lose.
      const r = await c.query('UPDATE organizations SET root_verify_key = $1, bootstrapped_at = $2 WHERE org_id = $3 AND bootstrapped_at IS NULL', [
        rootVerifyKey,
        now,
        orgId,
      ]);
      if (r.rowCount !== 1) return false;
      await this.insertUserAndDevice(c, orgId, user, device);
      await this.appendCertificate(c, orgId, user.certificate, user.timestamp);
      await this.appendCertificate(c, orgId, device.certificate, device.timestamp);
      return true;
    });
  }

  private async insertUserAndDevice(c: pg.PoolClient, orgId: string, user: NewUser, device: NewDevice): Promise<void> {
    await c.query('INSERT INTO users (org_id, user_id, public_key, profile) VALUES ($1, $2, $3, $4)', [orgId, user.userId, user.publicKey, user.profile]);
    await c.query('INSERT INTO devices (org_id, device_id, user_id, verify_key) VALUES ($1, $2, $3, $4)', [orgId, device.deviceId, device.userId, device.verifyKey]);
  }

  /** Serialises certificate appends (and user/device creation) of one organization across instances. */
  private async lockOrganization(c: pg.PoolClient, orgId: string): Promise<void> {
    await c.query('SELECT 1 FROM organizations WHERE org_id = $1 FOR UPDATE', [orgId]);
  }

  /** Runs `fn` in a transaction; a unique violation (a concurrent insert of the same id) means false. */
  private async insertOrFalse(fn: (c: pg.PoolClient) => Promise<boolean>): Promise<boolean> {
    try {
      return await this.tx(fn, false);
    } catch (err) {
      if ((err as { code?: unknown }).code === UNIQUE_VIOLATION) return false;
      throw mapError(err);
    }
  }

  async createUser(orgId: string, user: NewUser, device: NewDevice): Promise<boolean> {
    return this.insertOrFalse(async (c) => {
      await this.lockOrganization(c, orgId);
      const exists = await this.one(c, 'SELECT 1 FROM users WHERE org_id = $1 AND user_id = $2', [orgId, user.userId]);
      const devExists = await this.one(c, 'SELECT 1 FROM devices WHERE org_id = $1 AND device_id = $2', [orgId, device.deviceId]);
      if (exists || devExists) return false;
      await this.insertUserAndDevice(c, orgId, user, device);
      await this.appendCertificate(c, orgId, user.certificate, user.timestamp);
      await this.appendCertificate(c, orgId, device.certificate, device.timestamp);
      return true;
    });
  }

  async getUser(orgId: string, userId: string) {
    return this.run(async () => {
      const row = await this.one(this.pool, 'SELECT user_id, profile, public_key, revoked_at FROM users WHERE org_id = $1 AND user_id = $2', [orgId, userId]);
      if (!row) return null;
      return {
        userId: row.user_id as string,
        profile: row.profile as string,
        publicKey: row.public_key as Buffer,
        revokedAt: (row.revoked_at as number | null) ?? null,
      };
    });
  }

  /**
   * Appends at MAX(idx)+1. Callers took the organization row lock first (lockOrganization, or the
   * bootstrap UPDATE), so appends of one organization are serialised across instances.
   */
  private async appendCertificate(c: pg.PoolClient, orgId: string, blob: Buffer, timestamp: number): Promise<void> {
    const last = await this.one(c, 'SELECT COALESCE(MAX(idx), 0) + 1 AS n, COALESCE(MAX(timestamp), 0) AS last FROM certificates WHERE org_id = $1', [orgId]);
    // Clients refuse a chain whose time goes backwards: order is enforced here.
    if (timestamp < (last!.last as number)) throw new CofferError('conflict', 'certificate older than the last one of the organization: sign it again with the current time');
    await c.query('INSERT INTO certificates (org_id, idx, blob, timestamp) VALUES ($1, $2, $3, $4)', [orgId, last!.n, blob, timestamp]);
  }

  async getDevice(orgId: string, deviceId: string): Promise<DeviceRow | null> {
    return this.run(async () => {
      const row = await this.one(
        this.pool,
        `SELECT d.device_id, d.user_id, d.verify_key, u.revoked_at FROM devices d
         JOIN users u ON u.org_id = d.org_id AND u.user_id = d.user_id WHERE d.org_id = $1 AND d.device_id = $2`,
        [orgId, deviceId],
      );
      if (!row) return null;
      return {
        orgId,
        deviceId: row.device_id as string,
        userId: row.user_id as string,
        verifyKey: row.verify_key as Buffer,
        userRevokedAt: (row.revoked_at as number | null) ?? null,
      };
    });
  }

  async listCertificates(orgId: string, since: number): Promise<Array<{ index: number; blob: Buffer }>> {
    return this.run(async () => {
      const r = await this.pool.query('SELECT idx, blob FROM certificates WHERE org_id = $1 AND idx > $2 ORDER BY idx', [orgId, since]);
      return (r.rows as Row[]).map((row) => ({ index: row.idx as number, blob: row.blob as Buffer }));
    });
  }

  async createRealm(orgId: string, realmId: string, owner: string, keyIndex: number, sealedKey: Buffer, now: number, certificates: CertificateBlob[]): Promise<boolean> {
    return this.insertOrFalse(async (c) => {
      await this.lockOrganization(c, orgId);
      const r = await c.query('INSERT INTO realms (org_id, realm_id, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING', [orgId, realmId, now]);
      if (r.rowCount !== 1) return false;
      await c.query("INSERT INTO realm_roles (org_id, realm_id, user_id, role) VALUES ($1, $2, $3, 'owner')", [orgId, realmId, owner]);
      await c.query('INSERT INTO realm_keys (org_id, realm_id, key_index, user_id, sealed_key) VALUES ($1, $2, $3, $4, $5)', [
        orgId,
        realmId,
        keyIndex,
        owner,
        sealedKey,
      ]);
      for (const cert of certificates) await this.appendCertificate(c, orgId, cert.blob, cert.timestamp);
      return true;
    });
  }

  /** A direct role set explicitly wins; otherwise the highest role inherited through groups. */
  async getRole(orgId: string, realmId: string, userId: string): Promise<Role | null> {
    return this.run(() => this.effectiveRole(this.pool, orgId, realmId, userId));
  }

  private async effectiveRole(db: Db, orgId: string, realmId: string, userId: string): Promise<Role | null> {
    const direct = await this.one(db, 'SELECT role FROM realm_roles WHERE org_id = $1 AND realm_id = $2 AND user_id = $3', [orgId, realmId, userId]);
    if (direct) return direct.role as Role;
    const inherited = (
      await db.query(
        `SELECT rgr.role FROM realm_group_roles rgr JOIN group_members gm ON gm.org_id = rgr.org_id AND gm.group_id = rgr.group_id
         WHERE rgr.org_id = $1 AND rgr.realm_id = $2 AND gm.user_id = $3`,
        [orgId, realmId, userId],
      )
    ).rows as Row[];
    let best: Role | null = null;
    for (const r of inherited) if (best === null || ROLE_RANK[r.role as Role] > ROLE_RANK[best]) best = r.role as Role;
    return best;
  }

  /** Every user with an effective role on the realm (directly or through a group). */
  private async memberIds(db: Db, orgId: string, realmId: string): Promise<string[]> {
    const rows = (
      await db.query(
        `SELECT user_id FROM realm_roles WHERE org_id = $1 AND realm_id = $2
         UNION SELECT gm.user_id FROM realm_group_roles rgr JOIN group_members gm ON gm.org_id = rgr.org_id AND gm.group_id = rgr.group_id
         WHERE rgr.org_id = $1 AND rgr.realm_id = $2`,
        [orgId, realmId],
      )
    ).rows as Row[];
    return rows.map((r) => r.user_id as string);
  }

  /** The user no longer reaches the realm: drop their keys and flag it for rotation (they keep the old keys). */
  private async dropKeysAndFlag(c: pg.PoolClient, orgId: string, realmId: string, userId: string): Promise<void> {
    await c.query('DELETE FROM realm_keys WHERE org_id = $1 AND realm_id = $2 AND user_id = $3', [orgId, realmId, userId]);
    await c.query('UPDATE realms SET rotation_needed = true WHERE org_id = $1 AND realm_id = $2', [orgId, realmId]);
  }

  async setRole(orgId: string, realmId: string, userId: string, role: Role | null, keys: RealmKeyRow[], certificate: CertificateBlob): Promise<void> {
    await this.tx(async (c) => {
      await this.lockOrganization(c, orgId);
      await this.appendCertificate(c, orgId, certificate.blob, certificate.timestamp);
      if (role === null) {
        await c.query('DELETE FROM realm_roles WHERE org_id = $1 AND realm_id = $2 AND user_id = $3', [orgId, realmId, userId]);
        // Still reaching it through a group: keep the keys. Otherwise drop them and rotate.
        if ((await this.effectiveRole(c, orgId, realmId, userId)) === null) await this.dropKeysAndFlag(c, orgId, realmId, userId);
        return;
      }
      await c.query(
        `INSERT INTO realm_roles (org_id, realm_id, user_id, role) VALUES ($1, $2, $3, $4)
         ON CONFLICT (org_id, realm_id, user_id) DO UPDATE SET role = EXCLUDED.role`,
        [orgId, realmId, userId, role],
      );
      for (const k of keys) {
        await c.query(
          `INSERT INTO realm_keys (org_id, realm_id, key_index, user_id, sealed_key) VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (org_id, realm_id, key_index, user_id) DO UPDATE SET sealed_key = EXCLUDED.sealed_key`,
          [orgId, realmId, k.keyIndex, userId, k.sealedKey],
        );
      }
    });
  }

  async realmExists(orgId: string, realmId: string): Promise<boolean> {
    return this.run(async () => (await this.one(this.pool, 'SELECT 1 FROM realms WHERE org_id = $1 AND realm_id = $2', [orgId, realmId])) !== undefined);
  }

  async listRealms(orgId: string, userId: string): Promise<RealmMembership[]> {
    // One snapshot for roles, keys and flags.
    return this.tx(
      async (c) => {
        const realms = (
          await c.query(
            `SELECT r.realm_id, r.rotation_needed FROM realms r WHERE r.org_id = $1 AND r.realm_id IN (
               SELECT realm_id FROM realm_roles WHERE org_id = $1 AND user_id = $2
               UNION SELECT rgr.realm_id FROM realm_group_roles rgr JOIN group_members gm ON gm.org_id = rgr.org_id AND gm.group_id = rgr.group_id
               WHERE rgr.org_id = $1 AND gm.user_id = $2) ORDER BY r.realm_id`,
            [orgId, userId],
          )
        ).rows as Row[];
        const keys = (
          await c.query('SELECT realm_id, key_index, sealed_key FROM realm_keys WHERE org_id = $1 AND user_id = $2 ORDER BY realm_id, key_index', [orgId, userId])
        ).rows as Row[];
        const out: RealmMembership[] = [];
        for (const r of realms) {
          const realmId = r.realm_id as string;
          const role = await this.effectiveRole(c, orgId, realmId, userId);
          if (role === null) continue;
          out.push({
            realmId,
            role,
            keys: keys.filter((k) => k.realm_id === realmId).map((k) => ({ keyIndex: k.key_index as number, sealedKey: k.sealed_key as Buffer })),
            rotationNeeded: r.rotation_needed === true,
            keysMissing: await this.keysMissing(c, orgId, realmId),
          });
        }
        return out;
      },
      true,
      'BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY',
    );
  }

  /** Some member has no copy of the realm's latest key. */
  private async keysMissing(db: Db, orgId: string, realmId: string): Promise<boolean> {
    const latest = (await this.one(db, 'SELECT COALESCE(MAX(key_index), 0) AS k FROM realm_keys WHERE org_id = $1 AND realm_id = $2', [orgId, realmId]))!.k as number;
    const has = new Set(
      ((await db.query('SELECT user_id FROM realm_keys WHERE org_id = $1 AND realm_id = $2 AND key_index = $3', [orgId, realmId, latest])).rows as Row[]).map(
        (r) => r.user_id as string,
      ),
    );
    return (await this.memberIds(db, orgId, realmId)).some((u) => !has.has(u));
  }

  private async currentVersion(db: Db, orgId: string, vlobId: string): Promise<{ version: number | null; realmId: string | null }> {
    const row = await this.one(db, 'SELECT MAX(version) AS v, MIN(realm_id) AS realm FROM vlobs WHERE org_id = $1 AND vlob_id = $2', [orgId, vlobId]);
    return { version: (row?.v as number | null) ?? null, realmId: (row?.realm as string | null) ?? null };
  }

  /**
   * Version check + checkpoint + insert in one transaction. The realm row lock serialises writers of
   * one realm across instances: the loser waits, then reads the winner's committed version (read
   * committed takes a fresh snapshot per statement) and gets a conflict. Writers of one vlob id through
   * two realms are not serialised by that lock: the (org, vlob, version) primary key refuses the second.
   */
  private async writeVlob(w: VlobWrite, expectedPrevious: number): Promise<VlobWriteResult> {
    try {
      return await this.tx(async (c): Promise<VlobWriteResult> => {
        const realm = await this.one(c, 'SELECT checkpoint FROM realms WHERE org_id = $1 AND realm_id = $2 FOR UPDATE', [w.orgId, w.realmId]);
        if (!realm) throw new CofferError('not_found', 'no such workspace');
        const cur = await this.currentVersion(c, w.orgId, w.vlobId);
        // A vlob id belongs to one realm forever: writing it through another realm is a conflict.
        if ((cur.version ?? 0) !== expectedPrevious || (cur.version !== null && cur.realmId !== w.realmId)) return { ok: false, currentVersion: cur.version };
        const cp = ((await this.one(c, 'UPDATE realms SET checkpoint = checkpoint + 1 WHERE org_id = $1 AND realm_id = $2 RETURNING checkpoint', [w.orgId, w.realmId]))!
          .checkpoint) as number;
        await c.query(
          `INSERT INTO vlobs (org_id, realm_id, vlob_id, version, key_index, author, timestamp, created_at, checkpoint, blob)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
          [w.orgId, w.realmId, w.vlobId, w.version, w.keyIndex, w.author, w.timestamp, w.createdAt, cp, w.blob],
        );
        return { ok: true, checkpoint: cp };
      }, false);
    } catch (err) {
      if ((err as { code?: unknown }).code !== UNIQUE_VIOLATION) throw mapError(err);
      // Lost a race on the primary key: report what is stored now.
      const cur = await this.run(() => this.currentVersion(this.pool, w.orgId, w.vlobId));
      return { ok: false, currentVersion: cur.version };
    }
  }

  async createVlob(w: VlobWrite): Promise<VlobWriteResult> {
    return this.writeVlob(w, 0);
  }

  async updateVlob(w: VlobWrite): Promise<VlobWriteResult> {
    return this.writeVlob(w, w.version - 1);
  }

  async readVlob(orgId: string, realmId: string, vlobId: string, opts: { version?: number; at?: number }): Promise<VlobRow | null> {
    let sql = 'SELECT * FROM vlobs WHERE org_id = $1 AND realm_id = $2 AND vlob_id = $3';
    const args: unknown[] = [orgId, realmId, vlobId];
    if (opts.version !== undefined) {
      args.push(opts.version);
      sql += ` AND version = $${args.length}`;
    }
    if (opts.at !== undefined) {
      args.push(opts.at);
      sql += ` AND created_at <= $${args.length}`;
    }
    return this.run(async () => {
      const row = await this.one(this.pool, `${sql} ORDER BY version DESC LIMIT 1`, args);
      return row ? toVlobRow(row) : null;
    });
  }

  async readVlobs(orgId: string, realmId: string, vlobIds: readonly string[], at?: number): Promise<VlobRow[]> {
    if (vlobIds.length === 0) return [];
    return this.run(async () => {
      // One statement: one snapshot for the whole batch.
      const r = await this.pool.query(
        `SELECT DISTINCT ON (vlob_id) * FROM vlobs WHERE org_id = $1 AND realm_id = $2 AND vlob_id = ANY($3::text[]) AND created_at <= $4
         ORDER BY vlob_id, version DESC`,
        [orgId, realmId, [...new Set(vlobIds)], at ?? Number.MAX_SAFE_INTEGER],
      );
      const byId = new Map((r.rows as Row[]).map((row) => [row.vlob_id as string, toVlobRow(row)]));
      const out: VlobRow[] = [];
      for (const id of vlobIds) {
        const row = byId.get(id);
        if (row) out.push(row);
      }
      return out;
    });
  }

  async listChanges(orgId: string, realmId: string, since: number) {
    // One snapshot: the checkpoint returned covers exactly the changes listed.
    return this.tx(
      async (c) => {
        const cp = await this.one(c, 'SELECT checkpoint FROM realms WHERE org_id = $1 AND realm_id = $2', [orgId, realmId]);
        // Latest version per vlob changed after `since` (older intermediate versions are not interesting).
        const rows = (
          await c.query(
            `SELECT vlob_id, MAX(version) AS version, MAX(checkpoint) AS checkpoint FROM vlobs
             WHERE org_id = $1 AND realm_id = $2 AND checkpoint > $3 GROUP BY vlob_id ORDER BY 3`,
            [orgId, realmId, since],
          )
        ).rows as Row[];
        return {
          checkpoint: (cp?.checkpoint as number | undefined) ?? 0,
          changes: rows.map((r) => ({ vlobId: r.vlob_id as string, version: r.version as number, checkpoint: r.checkpoint as number })),
        };
      },
      true,
      'BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY',
    );
  }

  async getBlockMeta(orgId: string, blockId: string): Promise<BlockMeta | null> {
    return this.run(async () => {
      const row = await this.one(this.pool, 'SELECT realm_id, size, digest FROM blocks WHERE org_id = $1 AND block_id = $2', [orgId, blockId]);
      return row ? { realmId: row.realm_id as string, size: row.size as number, digest: row.digest as Buffer } : null;
    });
  }

  async insertBlockMeta(orgId: string, blockId: string, meta: BlockMeta, author: string, now: number): Promise<boolean> {
    return this.run(async () => {
      const r = await this.pool.query(
        `INSERT INTO blocks (org_id, block_id, realm_id, size, digest, author, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT DO NOTHING`,
        [orgId, blockId, meta.realmId, meta.size, meta.digest, author, now],
      );
      return r.rowCount === 1;
    });
  }

  async listBlocks(orgId: string, realmId: string, after: string, limit: number): Promise<BlockListRow[]> {
    return this.run(async () => {
      const r = await this.pool.query(
        `SELECT block_id, size, created_at, released_at FROM blocks
         WHERE org_id = $1 AND realm_id = $2 AND block_id > $3 AND deleting_at IS NULL ORDER BY block_id COLLATE "C" LIMIT $4`,
        [orgId, realmId, after, limit],
      );
      return (r.rows as Row[]).map((x) => ({ blockId: x.block_id as string, size: x.size as number, createdAt: x.created_at as number, releasedAt: (x.released_at as number | null) ?? null }));
    });
  }

  async releaseBlocks(orgId: string, realmId: string, blockIds: readonly string[], deviceId: string, now: number): Promise<ReleaseResult> {
    const ids = [...new Set(blockIds)];
    return this.tx(async (c): Promise<ReleaseResult> => {
      // Row locks: a concurrent GC claim or revival waits for this transaction.
      const r = await c.query(
        'SELECT block_id, released_at FROM blocks WHERE org_id = $1 AND realm_id = $2 AND block_id = ANY($3::text[]) AND deleting_at IS NULL FOR UPDATE',
        [orgId, realmId, ids],
      );
      const found = new Map((r.rows as Row[]).map((x) => [x.block_id as string, x.released_at]));
      const unknown = ids.filter((id) => !found.has(id));
      if (unknown.length > 0) return { ok: false, unknown };
      const already = [...found.values()].filter((v) => v !== null).length;
      const u = await c.query(
        'UPDATE blocks SET released_at = $1, released_by = $2 WHERE org_id = $3 AND block_id = ANY($4::text[]) AND released_at IS NULL',
        [now, deviceId, orgId, ids],
      );
      return { ok: true, released: u.rowCount ?? 0, alreadyReleased: already };
    });
  }

  async reviveBlock(orgId: string, blockId: string): Promise<'live' | 'revived' | 'deleting' | 'absent'> {
    return this.tx(async (c) => {
      const row = await this.one(c, 'SELECT released_at, deleting_at FROM blocks WHERE org_id = $1 AND block_id = $2 FOR UPDATE', [orgId, blockId]);
      if (!row) return 'absent' as const;
      if (row.deleting_at !== null) return 'deleting' as const;
      if (row.released_at === null) return 'live' as const;
      await c.query('UPDATE blocks SET released_at = NULL, released_by = NULL WHERE org_id = $1 AND block_id = $2', [orgId, blockId]);
      return 'revived' as const;
    });
  }

  async listReleasedBlocks(releasedBefore: number, limit: number): Promise<ReleasedBlockRow[]> {
    return this.run(async () => {
      const r = await this.pool.query(
        `SELECT org_id, realm_id, block_id, size, released_at, released_by, deleting_at FROM blocks
         WHERE released_at IS NOT NULL AND (released_at <= $1 OR deleting_at IS NOT NULL)
         ORDER BY released_at, org_id COLLATE "C", block_id COLLATE "C" LIMIT $2`,
        [releasedBefore, limit],
      );
      return (r.rows as Row[]).map(releasedBlockFromRow);
    });
  }

  async markBlockDeleting(orgId: string, blockId: string, releasedBefore: number, now: number): Promise<boolean> {
    return this.run(async () => {
      const r = await this.pool.query(
        `UPDATE blocks SET deleting_at = COALESCE(deleting_at, $1)
         WHERE org_id = $2 AND block_id = $3 AND released_at IS NOT NULL AND (released_at <= $4 OR deleting_at IS NOT NULL)`,
        [now, orgId, blockId, releasedBefore],
      );
      return r.rowCount === 1;
    });
  }

  async deleteBlockMeta(orgId: string, blockId: string): Promise<boolean> {
    return this.run(async () => {
      const r = await this.pool.query('DELETE FROM blocks WHERE org_id = $1 AND block_id = $2 AND deleting_at IS NOT NULL', [orgId, blockId]);
      return r.rowCount === 1;
    });
  }

  async createInvitation(orgId: string, r: InvitationRow): Promise<void> {
    await this.run(() =>
      this.pool.query(
        `INSERT INTO invitations (org_id, invitation_id, token_hash, type, handle, greeter_user_id, greeter_device_id, status, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
        [orgId, r.invitationId, r.tokenHash, r.type, r.handle, r.greeterUserId, r.greeterDeviceId, r.status, r.createdAt],
      ),
    );
  }

  async getInvitation(orgId: string, invitationId: string): Promise<InvitationRow | null> {
    return this.run(async () => {
      const row = await this.one(this.pool, 'SELECT * FROM invitations WHERE org_id = $1 AND invitation_id = $2', [orgId, invitationId]);
      return row ? toInvitationRow(row) : null;
    });
  }

  async getInvitationByToken(orgId: string, tokenHash: Buffer): Promise<InvitationRow | null> {
    return this.run(async () => {
      const row = await this.one(this.pool, 'SELECT * FROM invitations WHERE org_id = $1 AND token_hash = $2', [orgId, tokenHash]);
      return row ? toInvitationRow(row) : null;
    });
  }

  async listInvitations(orgId: string, greeterUserId: string): Promise<InvitationRow[]> {
    return this.run(async () => {
      const r = await this.pool.query(
        "SELECT * FROM invitations WHERE org_id = $1 AND greeter_user_id = $2 AND status IN ('pending', 'claiming') ORDER BY created_at, invitation_id",
        [orgId, greeterUserId],
      );
      return (r.rows as Row[]).map(toInvitationRow);
    });
  }

  /** One UPDATE whose WHERE carries the guard: of two racing steps, the second re-checks it after the first commits and matches nothing. */
  async updateInvitation(
    orgId: string,
    invitationId: string,
    update: InvitationUpdate,
    guard: { unset: Array<keyof InvitationUpdate>; statuses: InvitationStatus[] },
  ): Promise<boolean> {
    const entries = Object.entries(update) as Array<[keyof InvitationUpdate, unknown]>;
    if (entries.length === 0 || guard.statuses.length === 0) return false;
    const args: unknown[] = [];
    const p = (v: unknown) => {
      args.push(v);
      return `$${args.length}`;
    };
    const sets = entries.map(([k, v]) => `${column(k)} = ${p(v)}`);
    const where = [
      `org_id = ${p(orgId)}`,
      `invitation_id = ${p(invitationId)}`,
      ...guard.unset.map((k) => `${column(k)} IS NULL`),
      `status IN (${guard.statuses.map((s) => p(s)).join(', ')})`,
    ];
    return this.run(async () => (await this.pool.query(`UPDATE invitations SET ${sets.join(', ')} WHERE ${where.join(' AND ')}`, args)).rowCount === 1);
  }

  async createDevice(orgId: string, device: NewDevice): Promise<boolean> {
    return this.insertOrFalse(async (c) => {
      await this.lockOrganization(c, orgId);
      if (await this.one(c, 'SELECT 1 FROM devices WHERE org_id = $1 AND device_id = $2', [orgId, device.deviceId])) return false;
      await c.query('INSERT INTO devices (org_id, device_id, user_id, verify_key) VALUES ($1, $2, $3, $4)', [orgId, device.deviceId, device.userId, device.verifyKey]);
      await this.appendCertificate(c, orgId, device.certificate, device.timestamp);
      return true;
    });
  }

  async listMembers(orgId: string, realmId: string): Promise<Array<{ userId: string; role: Role }>> {
    return this.tx(
      async (c) => {
        const out: Array<{ userId: string; role: Role }> = [];
        for (const userId of (await this.memberIds(c, orgId, realmId)).sort()) out.push({ userId, role: (await this.effectiveRole(c, orgId, realmId, userId))! });
        return out;
      },
      true,
      'BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY',
    );
  }

  async revokeUser(orgId: string, userId: string, certificate: Buffer, timestamp: number, now: number): Promise<boolean> {
    return this.tx(async (c) => {
      await this.lockOrganization(c, orgId);
      const r = await c.query('UPDATE users SET revoked_at = $1 WHERE org_id = $2 AND user_id = $3 AND revoked_at IS NULL', [now, orgId, userId]);
      if (r.rowCount !== 1) return false;
      await c.query(
        `UPDATE realms SET rotation_needed = true WHERE org_id = $1 AND realm_id IN (
           SELECT realm_id FROM realm_roles WHERE org_id = $1 AND user_id = $2
           UNION SELECT rgr.realm_id FROM realm_group_roles rgr JOIN group_members gm ON gm.org_id = rgr.org_id AND gm.group_id = rgr.group_id
           WHERE rgr.org_id = $1 AND gm.user_id = $2)`,
        [orgId, userId],
      );
      await c.query('DELETE FROM realm_roles WHERE org_id = $1 AND user_id = $2', [orgId, userId]);
      await c.query('DELETE FROM group_members WHERE org_id = $1 AND user_id = $2', [orgId, userId]);
      await c.query('DELETE FROM realm_keys WHERE org_id = $1 AND user_id = $2', [orgId, userId]);
      await this.appendCertificate(c, orgId, certificate, timestamp);
      return true;
    });
  }

  /** The row locks make two concurrent rotations to the same index wait, re-read and lose. */
  async addRealmKey(orgId: string, realmId: string, keyIndex: number, keys: Array<{ userId: string; sealedKey: Buffer }>, certificate: CertificateBlob): Promise<boolean> {
    return this.insertOrFalse(async (c) => {
      await this.lockOrganization(c, orgId);
      await c.query('SELECT 1 FROM realms WHERE org_id = $1 AND realm_id = $2 FOR UPDATE', [orgId, realmId]);
      const cur = await this.one(c, 'SELECT COALESCE(MAX(key_index), 0) AS k FROM realm_keys WHERE org_id = $1 AND realm_id = $2', [orgId, realmId]);
      if ((cur!.k as number) + 1 !== keyIndex) return false;
      await this.appendCertificate(c, orgId, certificate.blob, certificate.timestamp);
      for (const k of keys) {
        await c.query('INSERT INTO realm_keys (org_id, realm_id, key_index, user_id, sealed_key) VALUES ($1, $2, $3, $4, $5)', [
          orgId,
          realmId,
          keyIndex,
          k.userId,
          k.sealedKey,
        ]);
      }
      await c.query('UPDATE realms SET rotation_needed = false WHERE org_id = $1 AND realm_id = $2', [orgId, realmId]);
      return true;
    });
  }

  async createGroup(orgId: string, groupId: string, certificate: CertificateBlob): Promise<boolean> {
    return this.insertOrFalse(async (c) => {
      await this.lockOrganization(c, orgId);
      const r = await c.query('INSERT INTO groups_ (org_id, group_id) VALUES ($1, $2) ON CONFLICT DO NOTHING', [orgId, groupId]);
      if (r.rowCount !== 1) return false;
      await this.appendCertificate(c, orgId, certificate.blob, certificate.timestamp);
      return true;
    });
  }

  async groupExists(orgId: string, groupId: string): Promise<boolean> {
    return this.run(async () => (await this.one(this.pool, 'SELECT 1 FROM groups_ WHERE org_id = $1 AND group_id = $2', [orgId, groupId])) !== undefined);
  }

  async setGroupMember(orgId: string, groupId: string, userId: string, member: boolean, certificate: CertificateBlob): Promise<void> {
    await this.tx(async (c) => {
      await this.lockOrganization(c, orgId);
      await this.appendCertificate(c, orgId, certificate.blob, certificate.timestamp);
      if (member) {
        await c.query('INSERT INTO group_members (org_id, group_id, user_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING', [orgId, groupId, userId]);
        return;
      }
      await c.query('DELETE FROM group_members WHERE org_id = $1 AND group_id = $2 AND user_id = $3', [orgId, groupId, userId]);
      // Realms the member no longer reaches lose their keys and get new ones (the old ones stay with them).
      const realms = ((await c.query('SELECT realm_id FROM realm_group_roles WHERE org_id = $1 AND group_id = $2 ORDER BY realm_id', [orgId, groupId])).rows as Row[]).map(
        (r) => r.realm_id as string,
      );
      for (const realmId of realms) {
        if ((await this.effectiveRole(c, orgId, realmId, userId)) !== null) continue;
        await this.dropKeysAndFlag(c, orgId, realmId, userId);
      }
    });
  }

  async setGroupRole(orgId: string, realmId: string, groupId: string, role: Role | null, keys: MemberKeyRow[], certificate: CertificateBlob): Promise<void> {
    await this.tx(async (c) => {
      await this.lockOrganization(c, orgId);
      await this.appendCertificate(c, orgId, certificate.blob, certificate.timestamp);
      if (role === null) {
        await c.query('DELETE FROM realm_group_roles WHERE org_id = $1 AND realm_id = $2 AND group_id = $3', [orgId, realmId, groupId]);
        await c.query('UPDATE realms SET rotation_needed = true WHERE org_id = $1 AND realm_id = $2', [orgId, realmId]);
        return;
      }
      await c.query(
        `INSERT INTO realm_group_roles (org_id, realm_id, group_id, role) VALUES ($1, $2, $3, $4)
         ON CONFLICT (org_id, realm_id, group_id) DO UPDATE SET role = EXCLUDED.role`,
        [orgId, realmId, groupId, role],
      );
      await this.insertMemberKeys(c, orgId, realmId, keys);
    });
  }

  async getGroupRole(orgId: string, realmId: string, groupId: string): Promise<Role | null> {
    return this.run(async () => {
      const row = await this.one(this.pool, 'SELECT role FROM realm_group_roles WHERE org_id = $1 AND realm_id = $2 AND group_id = $3', [orgId, realmId, groupId]);
      return row ? (row.role as Role) : null;
    });
  }

  async addMemberKeys(orgId: string, realmId: string, keys: MemberKeyRow[]): Promise<void> {
    await this.tx((c) => this.insertMemberKeys(c, orgId, realmId, keys));
  }

  /** Never replaces a key already stored (ON CONFLICT DO NOTHING). */
  private async insertMemberKeys(c: pg.PoolClient, orgId: string, realmId: string, keys: MemberKeyRow[]): Promise<void> {
    for (const k of keys) {
      await c.query('INSERT INTO realm_keys (org_id, realm_id, key_index, user_id, sealed_key) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING', [
        orgId,
        realmId,
        k.keyIndex,
        k.userId,
        k.sealedKey,
      ]);
    }
  }

  async close(): Promise<void> {
    await this.pool.end();
  }
}

function column(k: keyof InvitationUpdate): string {
  const c = INVITATION_COLUMNS[k];
  if (!c) throw new CofferError('internal', `unknown invitation field ${String(k)}`);
  return c;
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
