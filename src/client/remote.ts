import type { Logger } from 'pino';
import { BLOCK_OVERHEAD, openSealed, sha256, timingSafeEqualBytes, type BlockCryptoPool } from '../crypto/index.js';
import { CofferError, IntegrityError } from '../errors.js';
import type { BlockRef, Manifest } from '../model/manifests.js';
import { openVlob, sealVlob } from '../model/vlob.js';
import type { CertificateChain } from './certificates.js';
import type { ServerConnection, VlobRecordData } from './connection.js';
import type { SeenVersion, TrustState } from './trust-state.js';

/** The workspace keys this user holds, by key index (the highest is used for new data). */
export class WorkspaceKeys {
  constructor(private readonly keys: ReadonlyMap<number, Uint8Array>) {
    if (keys.size === 0) throw new CofferError('forbidden', 'no key for this workspace');
  }

  /** Opens the sealed keys and checks each against the certified digests of the chain. */
  static open(
    realmId: string,
    sealed: ReadonlyArray<{ keyIndex: number; sealedKey: Uint8Array }>,
    user: { userPublicKey: Uint8Array; userSecretKey: Uint8Array },
    chain: CertificateChain,
  ): WorkspaceKeys {
    const keys = new Map<number, Uint8Array>();
    for (const k of sealed) {
      const key = openSealed(k.sealedKey, user.userPublicKey, user.userSecretKey);
      chain.checkRealmKey(realmId, k.keyIndex, key);
      keys.set(k.keyIndex, key);
    }
    return new WorkspaceKeys(keys);
  }

  get currentIndex(): number {
    return Math.max(...this.keys.keys());
  }

  key(index: number): Uint8Array {
    const k = this.keys.get(index);
    if (!k) throw new IntegrityError(`manifest encrypted with unknown key index ${index}`);
    return k;
  }

  entries(): Array<[number, Uint8Array]> {
    return [...this.keys.entries()];
  }
}

export interface RemoteManifest {
  manifest: Manifest;
  version: number;
  author: string;
  timestamp: number;
  /** Server time of the upload (what `--at` compares with). */
  createdAt: number;
}

function strip(o: RemoteManifest & { digest?: Uint8Array }): RemoteManifest {
  const { digest: _digest, ...rest } = o;
  return rest;
}

/**
 * Everything that crosses the wire for one workspace, checked on the way in: vlobs are decrypted,
 * their signature verified against the certificate chain and their place (realm, id, version) checked;
 * blocks are checked by digest and AEAD in the worker pool. The server is never believed.
 */
export class RemoteWorkspace {
  constructor(
    readonly realmId: string,
    private readonly conn: ServerConnection,
    private keys: WorkspaceKeys,
    private readonly chain: CertificateChain,
    private readonly device: { deviceId: string; signingKey: Uint8Array },
    private readonly pool: BlockCryptoPool,
    private readonly logger: Logger,
    private readonly refreshCertificates: () => Promise<void>,
    /** A view of the past: manifests as they were at this server time (read-only). */
    readonly at: number | null = null,
    /** What this device verified before (rollback and fork detection); null: nothing remembered. */
    private readonly trust: TrustState | null = null,
  ) {}

  /** After a key rotation: new data is sealed with the newest key, old data still opens. */
  setKeys(keys: WorkspaceKeys): void {
    this.keys = keys;
  }

  get keyIndex(): number {
    return this.keys.currentIndex;
  }

  /**
   * Opens one vlob record: decryption (AAD binds realm, id, version, key index), signature against the
   * certificate chain, author's write right at the signed time; then the device's memory: a latest
   * read (`floor` given, taken before the request was sent) older than a version seen before is a
   * rollback; any version seen before must come back with the very same bytes (else: a fork).
   */
  private async open(id: string, rec: VlobRecordData, floor: SeenVersion | undefined, latest: boolean): Promise<RemoteManifest & { digest: Uint8Array }> {
    try {
      if (rec.vlobId !== id) throw new IntegrityError(`server returned vlob ${rec.vlobId} for ${id}`);
      const digest = sha256(rec.blob);
      if (floor && latest && rec.version < floor.version) {
        throw new IntegrityError(`rollback: the server served version ${rec.version} of ${id} after this device had seen version ${floor.version}`);
      }
      if (floor && rec.version === floor.version && floor.digest && !timingSafeEqualBytes(floor.digest, digest)) {
        throw new IntegrityError(`fork: the server served other bytes for version ${rec.version} of ${id} than this device saw before`);
      }
      const ctx = { realmId: this.realmId, vlobId: id, version: rec.version, keyIndex: rec.keyIndex };
      if (!this.chain.verifyKeyOf(rec.author)) await this.refreshCertificates();
      const opened = openVlob(rec.blob, ctx, this.keys.key(rec.keyIndex), (d) => this.chain.verifyKeyAt(d, rec.timestamp));
      if (opened.author !== rec.author) throw new IntegrityError('vlob signed by another device than the server claims');
      // Checked against the certified roles, not the server's word: a reader's write is refused.
      if (!this.chain.canWrite(this.realmId, opened.author, opened.timestamp)) await this.refreshCertificates();
      if (!this.chain.canWrite(this.realmId, opened.author, opened.timestamp)) {
        throw new IntegrityError(`manifest written by a device without write access at that time (${opened.author})`);
      }
      return { manifest: opened.manifest, version: rec.version, author: opened.author, timestamp: opened.timestamp, createdAt: rec.createdAt, digest };
    } catch (err) {
      this.logger.error({ vlobId: id, version: rec.version, err: (err as Error).message }, 'refusing a manifest from the server: integrity check failed');
      throw err;
    }
  }

  private remember(opened: ReadonlyArray<RemoteManifest & { digest: Uint8Array }>): void {
    this.trust?.rememberVlobs(
      this.realmId,
      opened.map((o) => ({ vlobId: o.manifest.id, version: o.version, digest: o.digest })),
    );
  }

  /** A vlob this device saw, now unknown to the server: the server dropped it (a rollback too). */
  private missingButSeen(id: string, floor: SeenVersion | undefined, latest: boolean): void {
    if (!floor || !latest) return;
    const err = new IntegrityError(`rollback: the server says ${id} does not exist, but this device had seen its version ${floor.version}`);
    this.logger.error({ vlobId: id, version: floor.version, err: err.message }, 'refusing a manifest from the server: integrity check failed');
    throw err;
  }

  async fetchManifest(id: string, opts: { version?: number; at?: number } = {}): Promise<RemoteManifest> {
    const latest = opts.version === undefined && opts.at === undefined && this.at === null;
    const floor = this.trust?.vlob(this.realmId, id) ?? undefined;
    let rec: VlobRecordData;
    try {
      rec = await this.conn.readVlob(this.realmId, id, opts);
    } catch (err) {
      if (err instanceof CofferError && err.code === 'not_found') this.missingButSeen(id, floor, latest);
      throw err;
    }
    if (opts.version !== undefined && rec.version !== opts.version) {
      const err = new IntegrityError(`asked for version ${opts.version} of ${id}, the server served version ${rec.version}`);
      this.logger.error({ vlobId: id, version: rec.version, err: err.message }, 'refusing a manifest from the server: integrity check failed');
      throw err;
    }
    const opened = await this.open(id, rec, floor, latest);
    this.remember([opened]);
    return strip(opened);
  }

  /** The versions of an entry, oldest first (read one by one: history is rare and short). */
  async history(id: string): Promise<RemoteManifest[]> {
    const latest = await this.fetchManifest(id);
    const out = [latest];
    for (let v = latest.version - 1; v >= 1; v--) out.unshift(await this.fetchManifest(id, { version: v }));
    return out;
  }

  /** Latest manifests of many entries in batched requests; entries the server lacks are left out. */
  async fetchManifests(ids: readonly string[]): Promise<Map<string, RemoteManifest>> {
    const out = new Map<string, RemoteManifest>();
    if (ids.length === 0) return out;
    const latest = this.at === null;
    const floors = this.trust?.vlobs(this.realmId, ids) ?? new Map<string, SeenVersion>();
    const { vlobs, missing } = await this.conn.readVlobs(this.realmId, ids, this.at ?? undefined);
    const wanted = new Set(ids);
    const opened: Array<RemoteManifest & { digest: Uint8Array }> = [];
    try {
      for (const rec of vlobs) {
        if (!wanted.has(rec.vlobId) || out.has(rec.vlobId)) {
          const err = new IntegrityError(`server returned ${out.has(rec.vlobId) ? 'twice' : 'unrequested'} vlob ${rec.vlobId}`);
          this.logger.error({ vlobId: rec.vlobId, err: err.message }, 'refusing a manifest from the server: integrity check failed');
          throw err;
        }
        const o = await this.open(rec.vlobId, rec, floors.get(rec.vlobId), latest);
        opened.push(o);
        out.set(rec.vlobId, strip(o));
      }
      for (const id of missing) if (wanted.has(id)) this.missingButSeen(id, floors.get(id), latest);
    } finally {
      this.remember(opened); // what verified is known now, even if another record of the batch failed
    }
    return out;
  }

  /** Uploads a manifest as `version`; CofferError('conflict') when someone else got there first. */
  async uploadManifest(manifest: Manifest, version: number): Promise<void> {
    const timestamp = Date.now();
    const keyIndex = this.keys.currentIndex;
    const ctx = { realmId: this.realmId, vlobId: manifest.id, version, keyIndex };
    const blob = sealVlob(manifest, ctx, { deviceId: this.device.deviceId, timestamp }, this.device.signingKey, this.keys.key(keyIndex));
    const checkpoint = await this.conn.writeVlob(this.realmId, manifest.id, version, keyIndex, timestamp, blob);
    // Acknowledged by the server: from now on it must serve this version (these bytes) or a newer one.
    this.trust?.rememberVlobs(this.realmId, [{ vlobId: manifest.id, version, digest: sha256(blob) }], checkpoint);
  }

  /**
   * The block's ciphertext, unchecked (decryptBlock checks it), received straight into the pool's
   * memory, which decrypt() lends to a worker instead of copying it into a message.
   */
  async fetchBlockCiphertext(ref: BlockRef): Promise<Buffer> {
    return this.conn.getBlock(this.realmId, ref.id, { sizeHint: ref.size + BLOCK_OVERHEAD, alloc: (size) => this.pool.buffer(size, false) });
  }

  async uploadBlock(ref: BlockRef, ciphertext: Buffer): Promise<void> {
    await this.conn.putBlock(this.realmId, ref.id, ciphertext, ref.digest);
  }

  /** Digest + AEAD check in the worker pool: IntegrityError, never wrong bytes. */
  async decryptBlock(ref: BlockRef, ciphertext: Buffer): Promise<Buffer> {
    try {
      return await this.pool.decrypt(ref.key, ciphertext, ref.digest);
    } catch (err) {
      if (err instanceof IntegrityError) this.logger.error({ blockId: ref.id }, 'block failed its digest or decryption check: tampered or corrupted');
      throw err;
    }
  }

  /**
   * The realm's change log since `since`. The checkpoint never goes back (below `since` or below the
   * highest this device was ever told), and each change lies between `since` and the checkpoint.
   */
  async listChanges(since: number): Promise<{ checkpoint: number; changes: Array<{ vlobId: string; version: number }> }> {
    const known = this.trust?.checkpoint(this.realmId) ?? 0; // read before the request (see fetchManifest)
    const r = await this.conn.listChanges(this.realmId, since);
    const floor = Math.max(since, known);
    let problem: string | null = null;
    if (r.checkpoint < floor) problem = `rollback: the server's change log went back to checkpoint ${r.checkpoint}, this device had seen checkpoint ${floor}`;
    const odd = r.changes.find((c) => c.checkpoint <= since || c.checkpoint > r.checkpoint);
    if (!problem && odd) problem = `the server's change log is inconsistent: change of ${odd.vlobId} at checkpoint ${odd.checkpoint}, outside (${since}, ${r.checkpoint}]`;
    if (problem) {
      this.logger.error({ realmId: this.realmId, checkpoint: r.checkpoint, since: floor, err: problem }, 'refusing the change list from the server: integrity check failed');
      throw new IntegrityError(problem);
    }
    this.trust?.rememberCheckpoint(this.realmId, r.checkpoint);
    return r;
  }
}
