/**
 * A real Coffer server on a random loopback port, in a fresh temporary data directory, plus a
 * tiny signed HTTP client (node's global fetch) and a raw-socket client for malformed requests.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import Database from 'better-sqlite3';
import { pino } from 'pino';
import { buildAuthHeader } from '../../src/protocol/auth.js';
import { startServer, type RunningServer } from '../../src/server/main.js';

export interface TestServer {
  /** Base URL, e.g. http://127.0.0.1:41234 (kept across restarts). */
  url: string;
  dataDir: string;
  adminToken: string;
  /** Stops the server (idempotent). The data directory is kept until `destroy`. */
  close(): Promise<void>;
  /** Closes, then starts again on the same data directory (the port may change). */
  restart(): Promise<void>;
  /** Closes and removes the data directory. */
  destroy(): Promise<void>;
  /** Signed request against this server (see the standalone `request`). */
  request(method: string, path: string, opts?: RequestOptions): Promise<TestResponse>;
}

/** What a test needs to sign requests as a device. */
export interface DeviceCredentials {
  orgId: string;
  deviceId: string;
  signingKey: Uint8Array;
}

export interface StartOptions {
  /** Removes the data directory when the tap test that owns the server ends. */
  teardown?: (fn: () => Promise<void>) => void;
  /** Metadata store URL (default sqlite: in the data directory), e.g. postgresql://… (test/helpers/services.ts). */
  metadataUrl?: string;
  /** Block store URL (default folder: in the data directory), e.g. s3://… (test/helpers/services.ts). */
  blocksUrl?: string;
  /** Administration token (default random): instances sharing stores share it. */
  adminToken?: string;
}

export async function startTestServer(opts: StartOptions = {}): Promise<TestServer> {
  const dataDir = await mkdtemp(join(tmpdir(), 'coffer-it-'));
  const adminToken = opts.adminToken ?? randomBytes(24).toString('hex');
  const storage = { ...(opts.metadataUrl !== undefined && { metadataUrl: opts.metadataUrl }), ...(opts.blocksUrl !== undefined && { blocksUrl: opts.blocksUrl }) };
  // A restart keeps the port: clients (device files) know the server by its URL.
  let port = 0;
  const launch = async () => {
    const r = await startServer({ dataDir, host: '127.0.0.1', port, adminToken, logger: pino({ level: 'silent' }), ...storage });
    port = Number(new URL(r.url).port);
    return r;
  };
  let running: RunningServer | null = await launch();
  const server: TestServer = {
    url: running.url,
    dataDir,
    adminToken,
    async close() {
      const r = running;
      running = null;
      if (r) await r.close();
    },
    async restart() {
      await server.close();
      running = await launch();
      server.url = running.url;
    },
    async destroy() {
      await server.close();
      await rm(dataDir, { recursive: true, force: true });
    },
    request: (method, path, opts) => request(server, method, path, opts),
  };
  opts.teardown?.(() => server.destroy());
  return server;
}

export interface RequestOptions {
  /** Signs the request as this device (Coffer-Ed25519 header). */
  device?: DeviceCredentials;
  /** JSON body (sent as application/json unless headers say otherwise). */
  json?: unknown;
  /** Raw body bytes (sent as application/octet-stream unless headers say otherwise; a string is sent as is). */
  raw?: Uint8Array | string;
  /** Extra headers; `authorization` or `content-type` given here replace the computed ones; a null value removes the header. */
  headers?: Record<string, string | null>;
  /** Signature timestamp (ms); defaults to now. */
  timestamp?: number;
  /** Sign these bytes instead of the body actually sent (tampering tests). */
  signedBody?: Uint8Array | null;
  /** Sign this path instead of the one requested (tampering tests). */
  signedPath?: string;
}

export interface TestResponse {
  status: number;
  /** Parsed JSON when the response is JSON, else undefined. */
  json: any;
  body: Buffer;
  headers: Headers;
}

/** Signed HTTP request against a test server. `path` includes the query string. */
export async function request(server: { url: string }, method: string, path: string, opts: RequestOptions = {}): Promise<TestResponse> {
  const headers: Record<string, string> = {};
  let body: Buffer | undefined;
  if (opts.json !== undefined) {
    body = Buffer.from(JSON.stringify(opts.json), 'utf8');
    headers['content-type'] = 'application/json';
  } else if (opts.raw !== undefined) {
    body = typeof opts.raw === 'string' ? Buffer.from(opts.raw, 'utf8') : Buffer.from(opts.raw);
    headers['content-type'] = 'application/octet-stream';
  }
  if (opts.device) {
    const d = opts.device;
    const signed = opts.signedBody !== undefined ? opts.signedBody : (body ?? null);
    headers.authorization = buildAuthHeader(d.orgId, d.deviceId, d.signingKey, method, opts.signedPath ?? path, signed, opts.timestamp ?? Date.now());
  }
  for (const [k, v] of Object.entries(opts.headers ?? {})) {
    const key = k.toLowerCase();
    if (v === null) delete headers[key];
    else headers[key] = v;
  }
  const res = await fetch(server.url + path, { method, headers, ...(body !== undefined && { body }) });
  const buf = Buffer.from(await res.arrayBuffer());
  let json: unknown;
  if ((res.headers.get('content-type') ?? '').includes('application/json') && buf.length > 0) {
    try {
      json = JSON.parse(buf.toString('utf8'));
    } catch {
      json = undefined;
    }
  }
  return { status: res.status, json, body: buf, headers: res.headers };
}

/**
 * Sends bytes on a fresh TCP connection, half-closes, and returns the status of the first
 * response line (null when the server closed without answering), the whole raw response and
 * the first response's body.
 */
export async function rawHttp(
  server: { url: string },
  payload: Buffer | string,
  timeoutMs = 5000,
): Promise<{ status: number | null; text: string; body: string }> {
  const { hostname, port } = new URL(server.url);
  return new Promise((resolve, reject) => {
    const socket = connect({ host: hostname, port: Number(port) });
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`raw request got no complete answer within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.on('connect', () => {
      socket.end(payload);
    });
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('error', () => {}); // a reset after the answer is fine; the answer is what counts
    socket.on('close', () => {
      clearTimeout(timer);
      const raw = Buffer.concat(chunks);
      const text = raw.toString('latin1');
      const m = /^HTTP\/1\.[01] (\d{3})/.exec(text);
      // The first response's body (more responses may follow on the same connection).
      const end = raw.indexOf('\r\n\r\n');
      const length = /\r\ncontent-length: *(\d+)/i.exec(text.slice(0, end));
      const body = end < 0 ? '' : raw.subarray(end + 4, length ? end + 4 + Number(length[1]) : raw.length).toString('utf8');
      resolve({ status: m ? Number(m[1]) : null, text, body });
    });
  });
}

/** The JSON body of an error response, when it has the `{ error: string, message: string }` shape. */
export function isErrorBody(json: unknown): json is { error: string; message: string; details?: Record<string, unknown> } {
  return (
    typeof json === 'object' &&
    json !== null &&
    typeof (json as { error?: unknown }).error === 'string' &&
    typeof (json as { message?: unknown }).message === 'string'
  );
}

function canonical(value: unknown): unknown {
  if (Buffer.isBuffer(value) || value instanceof Uint8Array) return `bytes:${Buffer.from(value).toString('hex')}`;
  if (typeof value === 'bigint') return `bigint:${value}`;
  return value;
}

/**
 * Everything the server has stored: sha256 of every row of every table (metadata.sqlite opened
 * read-only) and every file under blocks/ with its sha256. Equal snapshots = unchanged storage.
 */
export async function snapshotStorage(dataDir: string): Promise<{ tables: Record<string, string[]>; files: string[] }> {
  const db = new Database(join(dataDir, 'metadata.sqlite'), { readonly: true, fileMustExist: true });
  const tables: Record<string, string[]> = {};
  try {
    const names = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all() as Array<{ name: string }>;
    for (const { name } of names) {
      const rows = db.prepare(`SELECT * FROM "${name.replace(/"/g, '""')}"`).all() as Array<Record<string, unknown>>;
      tables[name] = rows
        .map((row) => {
          const ordered = Object.keys(row)
            .sort()
            .map((k) => [k, canonical(row[k])]);
          return createHash('sha256').update(JSON.stringify(ordered)).digest('hex');
        })
        .sort();
    }
  } finally {
    db.close();
  }
  const files: string[] = [];
  const root = join(dataDir, 'blocks');
  const walk = async (dir: string): Promise<void> => {
    let entries;
    try {
      entries = await readdir(dir, { withFileTypes: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    for (const e of entries) {
      const full = join(dir, e.name);
      if (e.isDirectory()) {
        files.push(`${relative(root, full)}/`);
        await walk(full);
      } else {
        const st = await stat(full);
        const digest = createHash('sha256').update(await readFile(full)).digest('hex');
        files.push(`${relative(root, full)} ${st.size} ${digest}`);
      }
    }
  };
  await walk(root);
  files.sort();
  return { tables, files };
}

/** A batched block write body (see src/protocol/block-batch.ts) whose index may lie about the sizes. */
export function blockBatchBody(blocks: Array<{ blockId: string; data: Buffer }>, sizes = blocks.map((b) => b.data.length)): Buffer {
  const index = Buffer.from(JSON.stringify({ blocks: sizes.map((size, i) => ({ blockId: blocks[i]!.blockId, size })) }));
  return Buffer.concat([Buffer.from([index.length >>> 24, (index.length >>> 16) & 255, (index.length >>> 8) & 255, index.length & 255]), index, ...blocks.map((b) => b.data)]);
}
