import type { Logger } from 'pino';
import { openSealed, type BlockCryptoPool } from '../crypto/index.js';
import { CofferError, IntegrityError } from '../errors.js';
import type { BlockRef, Manifest } from '../model/manifests.js';
import { openVlob, sealVlob } from '../model/vlob.js';
import type { CertificateChain } from './certificates.js';
import type { ServerConnection, VlobRecordData } from './connection.js';

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
  ) {}

  /** After a key rotation: new data is sealed with the newest key, old data still opens. */
  setKeys(keys: WorkspaceKeys): void {
    this.keys = keys;
  }

  get keyIndex(): number {
    return this.keys.currentIndex;
  }

  private async open(id: string, rec: VlobRecordData): Promise<RemoteManifest> {
    if (rec.vlobId !== id) throw new IntegrityError(`server returned vlob ${rec.vlobId} for ${id}`);
    const ctx = { realmId: this.realmId, vlobId: id, version: rec.version, keyIndex: rec.keyIndex };
    if (!this.chain.verifyKeyOf(rec.author)) await this.refreshCertificates();
    try {
      const opened = openVlob(rec.blob, ctx, this.keys.key(rec.keyIndex), (d) => this.chain.verifyKeyAt(d, rec.timestamp));
      if (opened.author !== rec.author) throw new IntegrityError('vlob signed by another device than the server claims');
      // Checked against the certified roles, not the server's word: a reader's write is refused.
      if (!this.chain.canWrite(this.realmId, opened.author, opened.timestamp)) await this.refreshCertificates();
      if (!this.chain.canWrite(this.realmId, opened.author, opened.timestamp)) {
        throw new IntegrityError(`manifest written by a device without write access at that time (${opened.author})`);
      }
      return { manifest: opened.manifest, version: rec.version, author: opened.author, timestamp: opened.timestamp, createdAt: rec.createdAt };
    } catch (err) {
      this.logger.error({ vlobId: id, version: rec.version, err: (err as Error).message }, 'refusing a manifest from the server: integrity check failed');
      throw err;
    }
  }

  async fetchManifest(id: string, opts: { version?: number; at?: number } = {}): Promise<RemoteManifest> {
    return this.open(id, await this.conn.readVlob(this.realmId, id, opts));
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
    const { vlobs } = await this.conn.readVlobs(this.realmId, ids, this.at ?? undefined);
    const wanted = new Set(ids);
    for (const rec of vlobs) {
      if (!wanted.has(rec.vlobId)) throw new IntegrityError(`server returned unrequested vlob ${rec.vlobId}`);
      out.set(rec.vlobId, await this.open(rec.vlobId, rec));
    }
    return out;
  }

  /** Uploads a manifest as `version`; CofferError('conflict') when someone else got there first. */
  async uploadManifest(manifest: Manifest, version: number): Promise<void> {
    const timestamp = Date.now();
    const keyIndex = this.keys.currentIndex;
    const ctx = { realmId: this.realmId, vlobId: manifest.id, version, keyIndex };
    const blob = sealVlob(manifest, ctx, { deviceId: this.device.deviceId, timestamp }, this.device.signingKey, this.keys.key(keyIndex));
    await this.conn.writeVlob(this.realmId, manifest.id, version, keyIndex, timestamp, blob);
  }

  async fetchBlockCiphertext(ref: BlockRef): Promise<Buffer> {
    return this.conn.getBlock(this.realmId, ref.id);
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

  async listChanges(since: number): Promise<{ checkpoint: number; changes: Array<{ vlobId: string; version: number }> }> {
    return this.conn.listChanges(this.realmId, since);
  }
}
