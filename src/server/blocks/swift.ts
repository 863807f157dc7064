import { createHash } from 'node:crypto';
import { CofferError } from '../../errors.js';
import type { BlockStore } from './types.js';

/**
 * OpenStack Swift through its native object API (not the s3api layer): a second real protocol
 * beside S3. Authentication is TempAuth/Swauth v1 (`GET <auth>/auth/v1.0` with X-Auth-User and
 * X-Auth-Key → X-Auth-Token + X-Storage-Url); the token is cached, renewed before it expires and on
 * any 401 (one retry). Objects are `<storage url>/<container>/<prefix><org>/<block id>`.
 */
export interface SwiftOptions {
  /** v1 auth endpoint, e.g. http://127.0.0.1:8080/auth/v1.0 */
  authUrl: string;
  /** "account:user" (TempAuth's X-Auth-User). */
  user: string;
  key: string;
  container: string;
  /** Object name prefix ("" or ending with "/"). */
  prefix: string;
  /** Fails a request (connection included) that takes longer (default 30 s). */
  requestTimeoutMs?: number;
}

interface Session {
  token: string;
  storageUrl: string;
  /** Renew after this time (ms since epoch). */
  renewAt: number;
}

const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'ECONNABORTED', 'UND_ERR_SOCKET', 'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'UND_ERR_CLOSED']);

/** fetch() failed without an answer (refused, reset, timed out): the store is unreachable. */
function isNetworkError(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  if (err.name === 'TimeoutError' || err.name === 'AbortError') return true;
  const cause = (err as { cause?: { code?: string } }).cause;
  return err instanceof TypeError || (cause !== undefined && typeof cause.code === 'string' && NETWORK_CODES.has(cause.code));
}

function unavailable(what: string, detail: string): CofferError {
  return new CofferError('unavailable', `block store unavailable (${what}: ${detail}), retry later`);
}

export class SwiftBlockStore implements BlockStore {
  private session: Session | null = null;
  private authenticating: Promise<Session> | null = null;
  private readonly timeoutMs: number;

  constructor(private readonly opts: SwiftOptions) {
    this.timeoutMs = opts.requestTimeoutMs ?? 30_000;
  }

  /** Authenticates and checks that the container exists. */
  static async open(opts: SwiftOptions): Promise<SwiftBlockStore> {
    const store = new SwiftBlockStore(opts);
    let res: Response;
    try {
      res = await store.request('HEAD', '', 'a container check');
    } catch (err) {
      throw new Error(`Swift container ${opts.container} at ${opts.authUrl} is not usable: ${(err as Error).message}`, { cause: err });
    }
    if (res.status === 404) throw new Error(`Swift container ${opts.container} at ${opts.authUrl} does not exist (create it: swift post ${opts.container})`);
    if (res.status >= 300) throw new Error(`Swift container ${opts.container} at ${opts.authUrl} is not usable (HTTP ${res.status})`);
    return store;
  }

  private async authenticate(): Promise<Session> {
    this.authenticating ??= (async () => {
      let res: Response;
      try {
        res = await fetch(this.opts.authUrl, {
          headers: { 'x-auth-user': this.opts.user, 'x-auth-key': this.opts.key },
          signal: AbortSignal.timeout(this.timeoutMs),
        });
        await res.arrayBuffer();
      } catch (err) {
        if (isNetworkError(err)) throw unavailable('authentication', (err as Error).message);
        throw err;
      }
      if (res.status >= 500) throw unavailable('authentication', `HTTP ${res.status}`);
      if (res.status === 401 || res.status === 403) throw new CofferError('internal', `block store refused the Swift credentials of ${this.opts.user} (HTTP ${res.status})`);
      const token = res.headers.get('x-auth-token') ?? res.headers.get('x-storage-token');
      const storageUrl = res.headers.get('x-storage-url');
      if (res.status >= 300 || !token || !storageUrl) throw new CofferError('internal', `Swift authentication answered HTTP ${res.status} without a token and storage URL`);
      const expires = Number(res.headers.get('x-auth-token-expires') ?? '');
      // Renew a minute early (tokens without a stated lifetime: every hour); a 401 renews anyway.
      const lifetimeMs = Number.isFinite(expires) && expires > 0 ? Math.max(expires - 60, 1) * 1000 : 3_600_000;
      return { token, storageUrl: storageUrl.replace(/\/+$/, ''), renewAt: Date.now() + lifetimeMs };
    })();
    try {
      this.session = await this.authenticating;
      return this.session;
    } finally {
      this.authenticating = null;
    }
  }

  private objectPath(orgId: string, blockId: string): string {
    return `/${encodeURIComponent(`${this.opts.prefix}${orgId}/${blockId}`).replace(/%2F/g, '/')}`;
  }

  /** One request on the container (path "" = the container itself); a 401 renews the token once. */
  private async request(method: 'GET' | 'PUT' | 'HEAD' | 'DELETE', path: string, what: string, body?: Buffer, headers: Record<string, string> = {}): Promise<Response> {
    for (let attempt = 0; ; attempt++) {
      let s = this.session;
      if (!s || Date.now() >= s.renewAt) s = await this.authenticate();
      let res: Response;
      try {
        res = await fetch(`${s.storageUrl}/${encodeURIComponent(this.opts.container)}${path}`, {
          method,
          headers: { 'x-auth-token': s.token, ...headers },
          ...(body !== undefined && { body }),
          signal: AbortSignal.timeout(this.timeoutMs),
        });
      } catch (err) {
        if (isNetworkError(err)) throw unavailable(what, (err as Error).message);
        throw err;
      }
      if (res.status === 401 && attempt === 0) {
        await res.arrayBuffer();
        if (this.session === s) this.session = null;
        continue;
      }
      if (res.status >= 500 || res.status === 429) {
        await res.arrayBuffer().catch(() => undefined);
        throw unavailable(what, `HTTP ${res.status}`);
      }
      return res;
    }
  }

  async put(orgId: string, blockId: string, data: Buffer): Promise<void> {
    // Swift checks the body against the ETag (MD5) and refuses a mismatch with 422: no partial or
    // altered object is ever stored. An object PUT replaces the object atomically.
    const etag = createHash('md5').update(data).digest('hex');
    const res = await this.request('PUT', this.objectPath(orgId, blockId), 'a block write', data, {
      'content-type': 'application/octet-stream',
      'content-length': String(data.length),
      etag,
    });
    await res.arrayBuffer();
    if (res.status === 422) throw unavailable('a block write', 'the body arrived corrupted (ETag mismatch)');
    if (res.status !== 201) throw new CofferError('internal', `block store refused a block write: HTTP ${res.status}`);
  }

  async get(orgId: string, blockId: string): Promise<Buffer | null> {
    const res = await this.request('GET', this.objectPath(orgId, blockId), 'a block read');
    if (res.status === 404) {
      await res.arrayBuffer();
      return null;
    }
    if (res.status !== 200) {
      await res.arrayBuffer();
      throw new CofferError('internal', `block store refused a block read: HTTP ${res.status}`);
    }
    try {
      return Buffer.from(await res.arrayBuffer());
    } catch (err) {
      throw unavailable('a block read', (err as Error).message);
    }
  }

  async delete(orgId: string, blockId: string): Promise<void> {
    const res = await this.request('DELETE', this.objectPath(orgId, blockId), 'a block deletion');
    await res.arrayBuffer();
    if (res.status !== 204 && res.status !== 200 && res.status !== 404) throw new CofferError('internal', `block store refused a block deletion: HTTP ${res.status}`);
  }

  async close(): Promise<void> {
    this.session = null;
  }
}
