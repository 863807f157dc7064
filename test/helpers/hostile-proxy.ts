/**
 * A hostile server for tests: an HTTP proxy in front of a real Coffer server that forwards every
 * request and lets the test rewrite the answers (flip bytes, serve another record, an older version,
 * a shorter certificate list…). Rules are functions of the request and the real response; the first
 * rule that returns a response replaces it. The event stream (SSE) is piped through untouched.
 *
 * Every request that passed is logged (method, path, request body, status), so a test can learn the
 * ids the client used (a block PUT, a vlob POST) without reading the server's database.
 */
import { createServer, request as httpRequest, Agent, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { decodeBlockReadAnswer, encodeBlockReadAnswer } from '../../src/protocol/block-batch.js';

export interface ProxiedRequest {
  method: string;
  /** Path with the query string, as the client sent it. */
  path: string;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

export interface ProxiedResponse {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
}

/** Returns a replacement response, or undefined to leave the answer alone. */
export type Rule = (req: ProxiedRequest, res: ProxiedResponse) => ProxiedResponse | undefined | Promise<ProxiedResponse | undefined>;

export interface LoggedRequest {
  method: string;
  path: string;
  body: Buffer;
  status: number;
  /** Names of the rules that rewrote this answer. */
  rewrittenBy: string[];
}

export interface HostileProxy {
  readonly url: string;
  /** Adds a named rule (replacing one of the same name); returns a function removing it. */
  rule(name: string, fn: Rule): () => void;
  removeRule(name: string): void;
  clearRules(): void;
  /** How many answers each rule rewrote. */
  readonly hits: Map<string, number>;
  /** Every request that went through, oldest first. */
  readonly log: LoggedRequest[];
  close(): Promise<void>;
}

/** The JSON of a response body (undefined when it is not JSON). */
export function jsonOf(res: ProxiedResponse): any {
  try {
    return JSON.parse(res.body.toString('utf8'));
  } catch {
    return undefined;
  }
}

/** The same response with another JSON body. */
export function withJson(res: ProxiedResponse, value: unknown): ProxiedResponse {
  return { ...res, headers: { ...res.headers, 'content-type': 'application/json; charset=utf-8' }, body: Buffer.from(JSON.stringify(value), 'utf8') };
}

/** The same response with other raw bytes. */
export function withBody(res: ProxiedResponse, body: Buffer): ProxiedResponse {
  return { ...res, body };
}

/** A base64 string with one bit flipped at `at` (negative: from the end) of its decoded bytes. */
export function flipBase64(b64: string, at = -20): string {
  const bytes = Buffer.from(b64, 'base64');
  const i = at < 0 ? bytes.length + at : at;
  bytes[Math.max(0, Math.min(bytes.length - 1, i))]! ^= 0x01;
  return bytes.toString('base64');
}

/** The ids a batched block read asked for (undefined: not a batched block read). */
export function blockReadIds(req: ProxiedRequest): string[] | undefined {
  if (req.method !== 'POST' || !req.path.split('?')[0]!.endsWith('/blocks-read')) return undefined;
  return (JSON.parse(req.body.toString('utf8')) as { blockIds: string[] }).blockIds;
}

/**
 * Rewrites one block's bytes with `fn` wherever the server sends them: a single GET, or its item in a
 * batched read's answer (re-framed, so that only the bytes lie and the client's digest check must catch it).
 */
export function blockRule(blockId: string, fn: (body: Buffer) => Buffer): Rule {
  return (req, res) => {
    if (res.status !== 200) return undefined;
    if (req.method === 'GET' && req.path.split('?')[0]!.endsWith(`/blocks/${blockId}`)) return withBody(res, fn(res.body));
    const ids = blockReadIds(req);
    if (!ids?.includes(blockId)) return undefined;
    const items = decodeBlockReadAnswer(res.body, ids);
    return withBody(res, encodeBlockReadAnswer(items.map((it) => (it.blockId === blockId && 'data' in it ? { blockId, data: fn(it.data) } : it))));
  };
}

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'content-length', 'upgrade', 'proxy-connection', 'te', 'trailer']);

function readAll(stream: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('end', () => resolve(Buffer.concat(chunks)));
    stream.on('error', reject);
  });
}

export async function startHostileProxy(upstreamUrl: string | (() => string)): Promise<HostileProxy> {
  const upstream = () => new URL(typeof upstreamUrl === 'function' ? upstreamUrl() : upstreamUrl);
  const rules = new Map<string, Rule>();
  const hits = new Map<string, number>();
  const log: LoggedRequest[] = [];
  const agent = new Agent({ keepAlive: true, maxSockets: 32 });
  const live = new Set<ServerResponse>();

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    live.add(res);
    res.on('close', () => live.delete(res));
    const body = await readAll(req);
    const up = upstream();
    const headers: Record<string, string | string[]> = {};
    for (const [k, v] of Object.entries(req.headers)) if (v !== undefined && !HOP_BY_HOP.has(k)) headers[k] = v;
    headers.host = up.host;
    if (body.length > 0) headers['content-length'] = String(body.length);
    const upReq = httpRequest({ host: up.hostname, port: up.port, method: req.method, path: req.url, headers, agent });
    upReq.on('error', () => {
      if (!res.headersSent) res.writeHead(502, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: 'unavailable', message: 'upstream unreachable' }));
    });
    upReq.on('response', async (upRes) => {
      const type = String(upRes.headers['content-type'] ?? '');
      if (type.includes('text/event-stream')) {
        // Live events: piped as they come (rules do not apply; events carry ids and versions only).
        const h: Record<string, string | string[]> = {};
        for (const [k, v] of Object.entries(upRes.headers)) if (v !== undefined && !HOP_BY_HOP.has(k)) h[k] = v;
        res.writeHead(upRes.statusCode ?? 502, h);
        upRes.pipe(res);
        log.push({ method: req.method ?? '', path: req.url ?? '', body, status: upRes.statusCode ?? 0, rewrittenBy: [] });
        return;
      }
      const respBody = await readAll(upRes);
      const h: Record<string, string> = {};
      for (const [k, v] of Object.entries(upRes.headers)) if (v !== undefined && !HOP_BY_HOP.has(k)) h[k] = Array.isArray(v) ? v.join(', ') : v;
      let out: ProxiedResponse = { status: upRes.statusCode ?? 502, headers: h, body: respBody };
      const rewrittenBy: string[] = [];
      const request: ProxiedRequest = { method: req.method ?? 'GET', path: req.url ?? '/', headers: req.headers, body };
      for (const [name, rule] of [...rules]) {
        let replaced: ProxiedResponse | undefined;
        try {
          replaced = await rule(request, out);
        } catch {
          replaced = undefined;
        }
        if (replaced) {
          out = replaced;
          rewrittenBy.push(name);
          hits.set(name, (hits.get(name) ?? 0) + 1);
        }
      }
      log.push({ method: request.method, path: request.path, body, status: out.status, rewrittenBy });
      res.writeHead(out.status, { ...out.headers, 'content-length': String(out.body.length) });
      res.end(out.body);
    });
    upReq.end(body);
  };

  const server: Server = createServer((req, res) => {
    handle(req, res).catch(() => {
      if (!res.headersSent) res.writeHead(502);
      res.end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;

  return {
    url: `http://127.0.0.1:${port}`,
    hits,
    log,
    rule(name, fn) {
      rules.set(name, fn);
      return () => rules.delete(name);
    },
    removeRule(name) {
      rules.delete(name);
    },
    clearRules() {
      rules.clear();
    },
    async close() {
      for (const r of live) r.destroy();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      agent.destroy();
    },
  };
}
