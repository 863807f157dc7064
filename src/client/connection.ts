import { Agent } from 'node:http';
import got, { type Got, RequestError } from 'got';
import { CofferError } from '../errors.js';
import { buildAuthHeader } from '../protocol/auth.js';
import { BlockReadAnswerReader, encodeBlockBatch } from '../protocol/block-batch.js';
import { errorFromResponse } from '../protocol/errors.js';
import {
  BlockListResponse,
  ReleaseBlocksResponse,
  ChangesResponse,
  CertificateListResponse,
  CreateInvitationResponse,
  InvitationListResponse,
  InvitationState,
  MembersResponse,
  type InvitationStateBody,
  CreateOrgResponse,
  RealmListResponse,
  ReadVlobsResponse,
  ROUTES,
  routePath,
  VlobRecord,
  VlobWriteResponse,
  WriteVlobsResponse,
  WriteBlocksResponse,
  MAX_BLOCK_WRITE_BATCH,
  MAX_VLOB_WRITE_BATCH,
  MAX_BLOCK_READ_BATCH,
  MAX_BLOCK_READ_BYTES,
  MAX_JSON_BYTES,
  type Role,
  type VlobRecordBody,
} from '../protocol/schemas.js';
import { parseWith } from '../model/codec.js';
import type { z } from 'zod';
import { RequestBatcher, type BatchOutcome } from './request-batcher.js';
import { serverUnreachable, StreamedHttpClient, type AnswerSink } from './streamed-http.js';

/** One vlob write as the API takes it (blob sealed and signed by the author's device, in base64). */
export interface VlobWrite {
  vlobId: string;
  version: number;
  keyIndex: number;
  timestamp: number;
  blob: string;
}

/** Who signs requests: the device's identity and Ed25519 signing key. */
export interface DeviceIdentity {
  orgId: string;
  deviceId: string;
  signingKey: Uint8Array;
}

export interface VlobRecordData {
  vlobId: string;
  version: number;
  keyIndex: number;
  author: string;
  timestamp: number;
  createdAt: number;
  blob: Buffer;
}

type Method = 'GET' | 'POST' | 'PUT' | 'DELETE';

/** A workspace key sealed to one member. */
export interface MemberKey {
  userId: string;
  keyIndex: number;
  sealedKey: Uint8Array;
}

/** Blobs (base64) gathered into one vlob write request at most; a bigger blob goes alone. */
const VLOB_BATCH_BYTES = 4 * 1024 * 1024;
/** Blocks up to this size are batched (a small file's block); bytes of blocks in one batch at most. */
const SMALL_BLOCK_BYTES = 64 * 1024;
const BLOCK_BATCH_BYTES = 1024 * 1024;
/** Expected bytes of blocks read in one batch at most: half the server's limit, as sizes are estimates. */
const BLOCK_READ_BATCH_BYTES = MAX_BLOCK_READ_BYTES / 2;

function toRecord(v: VlobRecordBody): VlobRecordData {
  return { ...v, blob: Buffer.from(v.blob, 'base64') };
}

/**
 * HTTP/1.1 keep-alive connection to a Coffer server. Every request (except the anonymous ones) carries a
 * fresh device signature. Network failures become CofferError('offline'): offline is a normal state that
 * callers (the sync engine) handle by retrying later.
 */
export class ServerConnection {
  private readonly http: Got;
  private readonly agent: Agent;
  private readonly vlobWrites = new RequestBatcher<VlobWrite, number>((realmId, writes) => this.writeVlobs(realmId, writes), {
    maxItems: MAX_VLOB_WRITE_BATCH,
    maxBytes: VLOB_BATCH_BYTES,
    sizeOf: (w) => w.blob.length,
  });
  private readonly blockWrites = new RequestBatcher<{ blockId: string; data: Buffer }, void>((realmId, blocks) => this.writeBlocks(realmId, blocks), {
    maxItems: MAX_BLOCK_WRITE_BATCH,
    maxBytes: BLOCK_BATCH_BYTES,
    sizeOf: (b) => b.data.length,
  });

  private readonly blockReads = new RequestBatcher<{ blockId: string; size: number; alloc: (size: number) => Buffer }, Buffer>((realmId, blocks) => this.readBlocks(realmId, blocks), {
    maxItems: MAX_BLOCK_READ_BATCH,
    maxBytes: BLOCK_READ_BATCH_BYTES,
    sizeOf: (b) => b.size,
  });
  private readonly baseUrl: string;
  private readonly timeoutMs: number;
  private readonly streamed: StreamedHttpClient;

  constructor(
    readonly serverUrl: string,
    private readonly device: DeviceIdentity | null,
    options: { timeoutMs?: number } = {},
  ) {
    this.baseUrl = serverUrl.replace(/\/+$/, '');
    this.timeoutMs = options.timeoutMs ?? 30_000;
    this.agent = new Agent({ keepAlive: true, maxSockets: 16 });
    this.http = got.extend({
      prefixUrl: this.baseUrl,
      agent: { http: this.agent },
      throwHttpErrors: false,
      retry: { limit: 0 }, // retries are the sync engine's job, with its own backoff
      timeout: { request: this.timeoutMs },
      responseType: 'buffer',
    });
    this.streamed = new StreamedHttpClient(this.baseUrl, this.timeoutMs);
  }

  close(): void {
    this.agent.destroy();
    this.streamed.close();
  }

  private async send(method: Method, path: string, opts: { json?: unknown; raw?: Buffer; rawDigest?: Uint8Array; headers?: Record<string, string>; anonymous?: boolean } = {}): Promise<{ status: number; body: Buffer }> {
    const body = opts.raw ?? (opts.json !== undefined ? jsonBody(opts.json) : undefined);
    const headers: Record<string, string> = { ...opts.headers };
    if (body !== undefined) headers['content-type'] = opts.raw ? 'application/octet-stream' : 'application/json';
    if (!opts.anonymous) {
      if (!this.device) throw new CofferError('unauthorized', 'this connection has no device to sign requests');
      headers.authorization = buildAuthHeader(this.device.orgId, this.device.deviceId, this.device.signingKey, method, path, body ?? null, Date.now(), opts.rawDigest);
    }
    try {
      // got's prefixUrl wants a path without the leading slash.
      const res = await this.http(path.slice(1), { method, headers, responseType: 'buffer', ...(body !== undefined && { body }) });
      return { status: res.statusCode, body: res.body };
    } catch (err) {
      if (err instanceof RequestError) throw serverUnreachable(err.code ?? err.message);
      throw err;
    }
  }

  private async call<T>(method: Method, path: string, schema: z.ZodType<T>, opts: Parameters<ServerConnection['send']>[2] = {}): Promise<T> {
    const res = await this.send(method, path, opts);
    return checkedAnswer(res.status, safeJson(res.body), schema, `${method} ${path.split('?')[0]}`);
  }

  private org(): string {
    if (!this.device) throw new CofferError('unauthorized', 'no device');
    return this.device.orgId;
  }

  async health(): Promise<boolean> {
    try {
      const res = await this.send('GET', ROUTES.health, { anonymous: true });
      return res.status === 200;
    } catch {
      return false;
    }
  }

  async createOrganization(orgId: string, adminToken: string): Promise<z.infer<typeof CreateOrgResponse>> {
    return this.call('POST', ROUTES.orgs, CreateOrgResponse, { json: { orgId }, headers: { 'x-coffer-admin-token': adminToken }, anonymous: true });
  }

  async bootstrap(orgId: string, body: { token: string; rootVerifyKey: string; userCertificate: string; deviceCertificate: string }): Promise<void> {
    const res = await this.send('POST', routePath(ROUTES.bootstrap, { org: orgId }), { json: body, anonymous: true });
    if (res.status >= 400) throw errorFromResponse(res.status, safeJson(res.body));
  }

  async listCertificates(since: number): Promise<Array<{ index: number; blob: Buffer }>> {
    const r = await this.call('GET', `${routePath(ROUTES.certificates, { org: this.org() })}?since=${since}`, CertificateListResponse);
    return r.certificates.map((c) => ({ index: c.index, blob: Buffer.from(c.blob, 'base64') }));
  }

  async createRealm(realmId: string, keyIndex: number, sealedKey: Buffer, roleCertificate: Uint8Array, keyCertificate: Uint8Array): Promise<void> {
    const res = await this.send('POST', routePath(ROUTES.realms, { org: this.org() }), {
      json: { realmId, keyIndex, sealedKey: sealedKey.toString('base64'), roleCertificate: b64(roleCertificate), keyCertificate: b64(keyCertificate) },
    });
    if (res.status >= 400) throw errorFromResponse(res.status, safeJson(res.body));
  }

  async listRealms(): Promise<Array<{ realmId: string; role: Role; rotationNeeded: boolean; keysMissing: boolean; keys: Array<{ keyIndex: number; sealedKey: Buffer }> }>> {
    const r = await this.call('GET', routePath(ROUTES.realms, { org: this.org() }), RealmListResponse);
    return r.realms.map((realm) => ({ ...realm, keys: realm.keys.map((k) => ({ keyIndex: k.keyIndex, sealedKey: Buffer.from(k.sealedKey, 'base64') })) }));
  }

  /**
   * Stores a block (idempotent). Small blocks sent in the same turn of the event loop travel together
   * (see RequestBatcher). `digest` is the block's SHA-256 (known from its manifest): a block sent alone
   * is signed without hashing it again.
   */
  async putBlock(realmId: string, blockId: string, data: Buffer, digest?: Uint8Array): Promise<void> {
    if (data.length <= SMALL_BLOCK_BYTES) return this.blockWrites.submit(realmId, { blockId, data });
    const res = await this.send('PUT', routePath(ROUTES.block, { org: this.org(), realm: realmId, block: blockId }), { raw: data, ...(digest && { rawDigest: digest }) });
    if (res.status >= 400) throw errorFromResponse(res.status, safeJson(res.body));
  }

  /** Several blocks in one request (see BlockBatchIndex for the body); each answered on its own, in order. */
  async writeBlocks(realmId: string, blocks: Array<{ blockId: string; data: Buffer }>): Promise<Array<BatchOutcome<void>>> {
    const body = encodeBlockBatch(blocks);
    const path = routePath(ROUTES.writeBlocks, { org: this.org(), realm: realmId });
    const r = await this.postBatch(path, body, 'application/octet-stream', WriteBlocksResponse);
    return r.results.map((out, i) => {
      if (out.blockId !== blocks[i]?.blockId) throw new CofferError('integrity', `the server answered block write ${i} for another block`);
      return 'error' in out ? { error: new CofferError(out.error.error, out.error.message, out.error.details) } : { ok: undefined };
    });
  }

  /**
   * A block's stored bytes, unchecked (the caller checks digest and AEAD), in memory from `alloc` when
   * given. Reads started in the same turn of the event loop (read-ahead) travel together as one
   * `blocks-read` per realm; `sizeHint` (the expected bytes) keeps a batch under the server's byte
   * limit. A block the server left out of a batch for that limit is asked for again on its own.
   */
  async getBlock(realmId: string, blockId: string, opts: { sizeHint?: number; alloc?: (size: number) => Buffer } = {}): Promise<Buffer> {
    try {
      return await this.blockReads.submit(realmId, { blockId, size: opts.sizeHint ?? SMALL_BLOCK_BYTES, alloc: opts.alloc ?? Buffer.allocUnsafeSlow });
    } catch (err) {
      if (!(err instanceof CofferError && err.code === 'too_large')) throw err;
    }
    const res = await this.send('GET', routePath(ROUTES.block, { org: this.org(), realm: realmId, block: blockId }));
    if (res.status >= 400) throw errorFromResponse(res.status, safeJson(res.body));
    return res.body;
  }

  /** Several blocks in one request; each answered on its own, in order, in memory from its `alloc`. */
  async readBlocks(realmId: string, blocks: ReadonlyArray<{ blockId: string; alloc: (size: number) => Buffer }>): Promise<Array<BatchOutcome<Buffer>>> {
    const blockIds = blocks.map((b) => b.blockId);
    const path = routePath(ROUTES.readBlocks, { org: this.org(), realm: realmId });
    const items = await this.postStreamed(path, jsonBody({ blockIds }), 'application/json', (status) => {
      if (status >= 400) return errorSink(status);
      const reader = new BlockReadAnswerReader(blockIds, (i, size) => blocks[i]!.alloc(size));
      return { write: (chunk) => reader.write(chunk), end: () => reader.end() };
    });
    return items.map((it) => ('data' in it ? { ok: it.data } : { error: new CofferError(it.error.error, it.error.message, it.error.details) }));
  }

  /**
   * A signed POST over the StreamedHttpClient, its answer chunk by chunk to a sink. The sync's batched
   * requests go this way too: got and node:http cost the mount's JS thread ≈0.5 ms per request, a
   * tenth of a sync of small files (docs/performance.md).
   */
  private postStreamed<T>(path: string, body: Buffer, contentType: string, sink: (status: number) => AnswerSink<T>): Promise<T> {
    if (!this.device) throw new CofferError('unauthorized', 'this connection has no device to sign requests');
    const headers = {
      'content-type': contentType,
      authorization: buildAuthHeader(this.device.orgId, this.device.deviceId, this.device.signingKey, 'POST', path, body, Date.now()),
    };
    return this.streamed.post(path, headers, body, sink);
  }

  /** A batched write (see postStreamed) answered in JSON: validated against `schema`, or its error thrown. */
  private async postBatch<T>(path: string, body: Buffer, contentType: string, schema: z.ZodType<T>): Promise<T> {
    const { status, json } = await this.postStreamed(path, body, contentType, jsonSink);
    return checkedAnswer(status, json, schema, `POST ${path}`);
  }

  /**
   * Creates version 1 (version === 1) or updates to `version`; a version conflict is CofferError('conflict').
   * Writes made in the same turn of the event loop travel together (see RequestBatcher); a big one alone.
   */
  async writeVlob(realmId: string, vlobId: string, version: number, keyIndex: number, timestamp: number, blob: Uint8Array): Promise<number> {
    const b = Buffer.from(blob.buffer, blob.byteOffset, blob.byteLength).toString('base64');
    if (b.length <= VLOB_BATCH_BYTES) return this.vlobWrites.submit(realmId, { vlobId, version, keyIndex, timestamp, blob: b });
    const r =
      version === 1
        ? await this.call('POST', routePath(ROUTES.vlobs, { org: this.org(), realm: realmId }), VlobWriteResponse, { json: { vlobId, keyIndex, timestamp, blob: b } })
        : await this.call('PUT', routePath(ROUTES.vlob, { org: this.org(), realm: realmId, vlob: vlobId }), VlobWriteResponse, { json: { version, keyIndex, timestamp, blob: b } });
    return r.checkpoint;
  }

  /** Several writes in one request; each answered on its own, in order. */
  async writeVlobs(realmId: string, writes: VlobWrite[]): Promise<Array<BatchOutcome<number>>> {
    const r = await this.postBatch(routePath(ROUTES.writeVlobs, { org: this.org(), realm: realmId }), jsonBody({ writes }), 'application/json', WriteVlobsResponse);
    return r.results.map((res, i) => {
      if (res.vlobId !== writes[i]?.vlobId) throw new CofferError('integrity', `the server answered vlob write ${i} for another vlob`);
      if ('error' in res) return { error: new CofferError(res.error.error, res.error.message, res.error.details) };
      if (res.version !== writes[i]!.version) throw new CofferError('integrity', `the server answered vlob write ${i} with another version`);
      return { ok: res.checkpoint };
    });
  }

  async readVlob(realmId: string, vlobId: string, opts: { version?: number; at?: number } = {}): Promise<VlobRecordData> {
    const q = new URLSearchParams();
    if (opts.version !== undefined) q.set('version', String(opts.version));
    if (opts.at !== undefined) q.set('at', String(opts.at));
    const qs = q.size ? `?${q.toString()}` : '';
    return toRecord(await this.call('GET', `${routePath(ROUTES.vlob, { org: this.org(), realm: realmId, vlob: vlobId })}${qs}`, VlobRecord));
  }

  /** Latest versions of many vlobs, in batches of 500 per request. */
  async readVlobs(realmId: string, vlobIds: readonly string[], at?: number): Promise<{ vlobs: VlobRecordData[]; missing: string[] }> {
    const out: VlobRecordData[] = [];
    const missing: string[] = [];
    for (let i = 0; i < vlobIds.length; i += 500) {
      const r = await this.call('POST', routePath(ROUTES.readVlobs, { org: this.org(), realm: realmId }), ReadVlobsResponse, {
        json: { vlobIds: vlobIds.slice(i, i + 500), ...(at !== undefined && { at }) },
      });
      out.push(...r.vlobs.map(toRecord));
      missing.push(...r.missing);
    }
    return { vlobs: out, missing };
  }

  async createInvitation(type: 'user' | 'device', handle?: string): Promise<{ invitationId: string; token: string }> {
    return this.call('POST', routePath(ROUTES.invitations, { org: this.org() }), CreateInvitationResponse, { json: { type, ...(handle && { handle }) } });
  }

  async listInvitations(): Promise<InvitationStateBody[]> {
    return (await this.call('GET', routePath(ROUTES.invitations, { org: this.org() }), InvitationListResponse)).invitations;
  }

  async getInvitation(invitationId: string): Promise<InvitationStateBody> {
    return this.call('GET', routePath(ROUTES.invitation, { org: this.org(), invitation: invitationId }), InvitationState);
  }

  async cancelInvitation(invitationId: string): Promise<InvitationStateBody> {
    return this.call('DELETE', routePath(ROUTES.invitation, { org: this.org(), invitation: invitationId }), InvitationState);
  }

  async greeterStep(invitationId: string, step: { step: 'keys'; publicKey: string; nonce: string } | { step: 'payload'; payload: string }): Promise<InvitationStateBody> {
    return this.call('POST', routePath(ROUTES.greeterStep, { org: this.org(), invitation: invitationId }), InvitationState, { json: step });
  }

  /** Anonymous: the claimer has no device yet, only the invitation token. */
  async claimStep(orgId: string, step: Record<string, string>): Promise<InvitationStateBody> {
    return this.call('POST', routePath(ROUTES.claim, { org: orgId }), InvitationState, { json: step, anonymous: true });
  }

  async createUser(userCertificate: Uint8Array, deviceCertificate: Uint8Array): Promise<void> {
    const res = await this.send('POST', routePath(ROUTES.users, { org: this.org() }), { json: { userCertificate: b64(userCertificate), deviceCertificate: b64(deviceCertificate) } });
    if (res.status >= 400) throw errorFromResponse(res.status, safeJson(res.body));
  }

  async createDevice(deviceCertificate: Uint8Array): Promise<void> {
    const res = await this.send('POST', routePath(ROUTES.devices, { org: this.org() }), { json: { deviceCertificate: b64(deviceCertificate) } });
    if (res.status >= 400) throw errorFromResponse(res.status, safeJson(res.body));
  }

  async setRole(realmId: string, userId: string, role: Role | null, keys: Array<{ keyIndex: number; sealedKey: Uint8Array }>, certificate: Uint8Array): Promise<void> {
    const res = await this.send('PUT', routePath(ROUTES.role, { org: this.org(), realm: realmId, user: userId }), {
      json: { role, certificate: b64(certificate), keys: keys.map((k) => ({ keyIndex: k.keyIndex, sealedKey: b64(k.sealedKey) })) },
    });
    if (res.status >= 400) throw errorFromResponse(res.status, safeJson(res.body));
  }

  async revokeUser(userId: string, certificate: Uint8Array): Promise<void> {
    const res = await this.send('POST', routePath(ROUTES.revoke, { org: this.org(), user: userId }), { json: { certificate: b64(certificate) } });
    if (res.status >= 400) throw errorFromResponse(res.status, safeJson(res.body));
  }

  async addRealmKey(realmId: string, keyIndex: number, keys: Array<{ userId: string; sealedKey: Uint8Array }>, certificate: Uint8Array): Promise<void> {
    const res = await this.send('POST', routePath(ROUTES.realmKeys, { org: this.org(), realm: realmId }), {
      json: { keyIndex, certificate: b64(certificate), keys: keys.map((k) => ({ userId: k.userId, sealedKey: b64(k.sealedKey) })) },
    });
    if (res.status >= 400) throw errorFromResponse(res.status, safeJson(res.body));
  }

  private async post(path: string, json: unknown, method: Method = 'POST'): Promise<void> {
    const res = await this.send(method, path, { json });
    if (res.status >= 400) throw errorFromResponse(res.status, safeJson(res.body));
  }

  async createGroup(certificate: Uint8Array): Promise<void> {
    await this.post(routePath(ROUTES.groups, { org: this.org() }), { certificate: b64(certificate) });
  }

  async setGroupMember(groupId: string, certificate: Uint8Array): Promise<void> {
    await this.post(routePath(ROUTES.groupMembers, { org: this.org(), group: groupId }), { certificate: b64(certificate) });
  }

  async setGroupRole(realmId: string, groupId: string, role: Role | null, keys: MemberKey[], certificate: Uint8Array): Promise<void> {
    await this.post(
      routePath(ROUTES.groupRole, { org: this.org(), realm: realmId, group: groupId }),
      { role, certificate: b64(certificate), keys: keys.map((k) => ({ userId: k.userId, keyIndex: k.keyIndex, sealedKey: b64(k.sealedKey) })) },
      'PUT',
    );
  }

  async addMemberKeys(realmId: string, keys: MemberKey[]): Promise<void> {
    await this.post(routePath(ROUTES.memberKeys, { org: this.org(), realm: realmId }), {
      keys: keys.map((k) => ({ userId: k.userId, keyIndex: k.keyIndex, sealedKey: b64(k.sealedKey) })),
    });
  }

  async listMembers(realmId: string): Promise<Array<{ userId: string; role: Role }>> {
    return (await this.call('GET', routePath(ROUTES.members, { org: this.org(), realm: realmId }), MembersResponse)).members;
  }

  async listChanges(realmId: string, since: number): Promise<z.infer<typeof ChangesResponse>> {
    return this.call('GET', `${routePath(ROUTES.changes, { org: this.org(), realm: realmId })}?since=${since}`, ChangesResponse);
  }

  /** A page of the realm's blocks (owner or manager; block garbage collection, src/client/gc.ts). */
  async listBlocks(realmId: string, after: string | null, limit = 1000): Promise<z.infer<typeof BlockListResponse>> {
    const q = `?limit=${limit}${after !== null ? `&after=${after}` : ''}`;
    return this.call('GET', `${routePath(ROUTES.blocks, { org: this.org(), realm: realmId })}${q}`, BlockListResponse);
  }

  /** Releases blocks of the realm for garbage collection (owner or manager; all or nothing). */
  async releaseBlocks(realmId: string, blockIds: readonly string[]): Promise<z.infer<typeof ReleaseBlocksResponse>> {
    return this.call('POST', routePath(ROUTES.releaseBlocks, { org: this.org(), realm: realmId }), ReleaseBlocksResponse, { json: { blockIds } });
  }
}

function b64(data: Uint8Array): string {
  return Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString('base64');
}

/** Enough of an error answer for its JSON body; a longer one is cut (a server could send gigabytes). */
const MAX_ERROR_BODY_BYTES = 64 * 1024;

/** An error answer, gathered (copied: chunks are views of a reused buffer), then rebuilt as the typed error it carries. */
function errorSink(status: number): AnswerSink<never> {
  const chunks: Buffer[] = [];
  let kept = 0;
  return {
    write: (chunk) => {
      const n = Math.min(chunk.length, MAX_ERROR_BODY_BYTES - kept);
      if (n > 0) chunks.push(Buffer.from(chunk.subarray(0, n)));
      kept += n;
    },
    end: () => {
      throw errorFromResponse(status, safeJson(Buffer.concat(chunks)));
    },
  };
}

/** A JSON answer of a batched request, gathered (the sink's chunks are views of a reused buffer). */
function jsonSink(status: number): AnswerSink<{ status: number; json: unknown }> {
  const chunks: Buffer[] = [];
  let size = 0;
  return {
    write: (chunk) => {
      size += chunk.length;
      // Answers to batched writes are a few bytes per item: one this big is hostile (or broken).
      if (size > MAX_JSON_BYTES) throw new CofferError('integrity', `the server's answer is over ${MAX_JSON_BYTES} bytes`);
      chunks.push(Buffer.from(chunk));
    },
    end: () => ({ status, json: safeJson(Buffer.concat(chunks, size)) }),
  };
}

/** A JSON answer: its error when the status is one, else validated (a hostile server's answer is input like any other). */
function checkedAnswer<T>(status: number, json: unknown, schema: z.ZodType<T>, request: string): T {
  if (status >= 400) throw errorFromResponse(status, json);
  return parseWith(schema, json, `server response to ${request}`);
}

function jsonBody(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(value), 'utf8');
}

function safeJson(body: Buffer): unknown {
  try {
    return JSON.parse(body.toString('utf8'));
  } catch {
    return undefined;
  }
}
