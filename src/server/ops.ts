import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { isIP } from 'node:net';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { BadInputError, CofferError } from '../errors.js';
import { errorBody } from '../protocol/errors.js';
import { ROUTES } from '../protocol/schemas.js';
import type { ServerContext } from './context.js';

/**
 * Operations: liveness, readiness, Prometheus metrics, request ids and the per-address limit on
 * authentication failures. Hand-written rather than prom-client / @fastify/rate-limit: the metrics
 * here are a handful of counters and one histogram (≈100 lines, no dependency tree to audit in a
 * server whose point is to be trusted with little), and the limiter counts *failures* (401 answers),
 * which @fastify/rate-limit does not do (it counts requests, before the outcome is known).
 */
export const OPS_ROUTES = {
  /** The process is up and serving HTTP (no dependency checked): for liveness probes. */
  healthz: '/healthz',
  /** The metadata store and the block store answer: for load balancers and readiness probes. */
  readyz: '/readyz',
  /** Prometheus text format 0.0.4. */
  metrics: '/metrics',
} as const;

// ---------------------------------------------------------------------------------------------
// Request ids

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/**
 * Fastify genReqId: a well-formed incoming `x-request-id` (set by the proxy, e.g. nginx
 * `$request_id`) is kept so that proxy and server logs correlate; anything else gets a UUID.
 */
export function requestId(req: IncomingMessage): string {
  const given = req.headers['x-request-id'];
  return typeof given === 'string' && REQUEST_ID.test(given) ? given : randomUUID();
}

// ---------------------------------------------------------------------------------------------
// Metrics

const DURATION_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

type Labels = Record<string, string>;

function escapeLabel(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

function labelText(labels: Labels): string {
  const parts = Object.entries(labels).map(([k, v]) => `${k}="${escapeLabel(v)}"`);
  return parts.length ? `{${parts.join(',')}}` : '';
}

class Counter {
  private readonly values = new Map<string, { labels: Labels; value: number }>();
  constructor(readonly name: string, readonly help: string) {}

  inc(labels: Labels, by = 1): void {
    const key = labelText(labels);
    const cur = this.values.get(key);
    if (cur) cur.value += by;
    else this.values.set(key, { labels, value: by });
  }

  get(labels: Labels): number {
    return this.values.get(labelText(labels))?.value ?? 0;
  }

  render(out: string[]): void {
    out.push(`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} counter`);
    for (const { labels, value } of this.values.values()) out.push(`${this.name}${labelText(labels)} ${value}`);
  }
}

class Histogram {
  private readonly series = new Map<string, { labels: Labels; counts: number[]; sum: number; count: number }>();
  constructor(readonly name: string, readonly help: string, private readonly buckets: number[]) {}

  observe(labels: Labels, value: number): void {
    const key = labelText(labels);
    let s = this.series.get(key);
    if (!s) {
      s = { labels, counts: this.buckets.map(() => 0), sum: 0, count: 0 };
      this.series.set(key, s);
    }
    for (let i = 0; i < this.buckets.length; i++) if (value <= this.buckets[i]!) s.counts[i]!++;
    s.sum += value;
    s.count++;
  }

  render(out: string[]): void {
    out.push(`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} histogram`);
    for (const s of this.series.values()) {
      this.buckets.forEach((le, i) => out.push(`${this.name}_bucket${labelText({ ...s.labels, le: String(le) })} ${s.counts[i]}`));
      out.push(`${this.name}_bucket${labelText({ ...s.labels, le: '+Inf' })} ${s.count}`);
      out.push(`${this.name}_sum${labelText(s.labels)} ${s.sum}`);
      out.push(`${this.name}_count${labelText(s.labels)} ${s.count}`);
    }
  }
}

/** A value read when scraped (connected streams, relay state…). */
export interface Gauge {
  name: string;
  help: string;
  type?: 'gauge' | 'counter';
  value: () => number;
}

/**
 * The server's metrics. Routes are labelled by their pattern (`/v1/orgs/:org/realms/:realm/…`),
 * never by the concrete path: ids must not become label values (unbounded series, and they are the
 * only thing the server knows about its users' data).
 */
export class Metrics {
  readonly requests = new Counter('coffer_http_requests_total', 'HTTP requests answered, by method, route pattern and status.');
  readonly duration = new Histogram('coffer_http_request_duration_seconds', 'Time to answer, by method and route pattern (event streams excluded).', DURATION_BUCKETS);
  readonly bytesIn = new Counter('coffer_http_request_bytes_total', 'Request body bytes received, by route pattern.');
  readonly bytesOut = new Counter('coffer_http_response_bytes_total', 'Response body bytes sent, by route pattern (event streams included).');
  readonly errors = new Counter('coffer_http_errors_total', 'Error answers by error code (the `error` field of the body).');
  readonly authFailures = new Counter('coffer_auth_failures_total', 'Authentication failures (401 answers).');
  private readonly gauges: Gauge[] = [];
  private readonly started = Date.now();

  addGauge(g: Gauge): void {
    this.gauges.push(g);
  }

  error(code: string): void {
    this.errors.inc({ code });
  }

  render(): string {
    const out: string[] = [];
    this.requests.render(out);
    this.duration.render(out);
    this.bytesIn.render(out);
    this.bytesOut.render(out);
    this.errors.render(out);
    this.authFailures.render(out);
    for (const g of this.gauges) {
      out.push(`# HELP ${g.name} ${g.help}`, `# TYPE ${g.name} ${g.type ?? 'gauge'}`, `${g.name} ${g.value()}`);
    }
    const cpu = process.cpuUsage();
    out.push(
      '# HELP process_cpu_seconds_total User and system CPU time.',
      '# TYPE process_cpu_seconds_total counter',
      `process_cpu_seconds_total ${(cpu.user + cpu.system) / 1e6}`,
      '# HELP process_resident_memory_bytes Resident set size.',
      '# TYPE process_resident_memory_bytes gauge',
      `process_resident_memory_bytes ${process.memoryUsage.rss()}`,
      '# HELP process_start_time_seconds Start time of the process (Unix seconds).',
      '# TYPE process_start_time_seconds gauge',
      `process_start_time_seconds ${Math.floor(this.started / 1000)}`,
    );
    return `${out.join('\n')}\n`;
  }
}

// ---------------------------------------------------------------------------------------------
// Authentication-failure limiter

export interface AuthLimitOptions {
  /** Failures allowed per minute and address (token bucket: this many at once, then one every 60/n s). 0 disables. Default 20. */
  failuresPerMinute?: number;
  /** Loopback clients (127.0.0.0/8, ::1) are not limited (default true): see docs/deploy.md. */
  exemptLoopback?: boolean;
  /** Most addresses tracked at once (oldest forgotten first). Default 100,000. */
  maxAddresses?: number;
}

/** The address a limit applies to: IPv4 as is, IPv6 by /64 (one host usually owns a whole /64). */
export function limitKey(ip: string): string {
  const v4mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip);
  if (v4mapped) return v4mapped[1]!;
  if (isIP(ip) !== 6) return ip;
  const [head = '', tail = ''] = ip.split('::');
  const h = head === '' ? [] : head.split(':');
  const tl = tail === '' ? [] : tail.split(':');
  const groups = ip.includes('::') ? [...h, ...Array<string>(8 - h.length - tl.length).fill('0'), ...tl] : h;
  return `${groups.slice(0, 4).map((g) => g.toLowerCase().replace(/^0+(?=.)/, '')).join(':')}::/64`;
}

function isLoopback(ip: string): boolean {
  return ip === '::1' || /^(::ffff:)?127\./i.test(ip);
}

/**
 * A token bucket per client address, spent by authentication failures only: a device with a good
 * key never notices it, a key-guesser gets `failuresPerMinute` tries and then 429 rate_limited
 * (every request from that address, until the bucket refills).
 */
export class AuthFailureLimiter {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();
  private readonly capacity: number;
  private readonly perMs: number;
  private readonly exemptLoopback: boolean;
  private readonly maxAddresses: number;

  constructor(opts: AuthLimitOptions = {}, private readonly now: () => number = Date.now) {
    this.capacity = opts.failuresPerMinute ?? 20;
    this.perMs = this.capacity / 60_000;
    this.exemptLoopback = opts.exemptLoopback ?? true;
    this.maxAddresses = opts.maxAddresses ?? 100_000;
  }

  get enabled(): boolean {
    return this.capacity > 0;
  }

  get size(): number {
    return this.buckets.size;
  }

  private refill(key: string): { tokens: number; at: number } | undefined {
    const b = this.buckets.get(key);
    if (!b) return undefined;
    const t = this.now();
    b.tokens = Math.min(this.capacity, b.tokens + (t - b.at) * this.perMs);
    b.at = t;
    return b;
  }

  /** Milliseconds until this address may try again (0: now). */
  retryAfterMs(ip: string): number {
    if (!this.enabled || (this.exemptLoopback && isLoopback(ip))) return 0;
    const b = this.refill(limitKey(ip));
    if (!b || b.tokens >= 1) return 0;
    return Math.ceil((1 - b.tokens) / this.perMs);
  }

  /** Records one failure from this address. */
  fail(ip: string): void {
    if (!this.enabled || (this.exemptLoopback && isLoopback(ip))) return;
    const key = limitKey(ip);
    const b = this.refill(key);
    if (b) {
      b.tokens = Math.max(0, b.tokens - 1);
      return;
    }
    if (this.buckets.size >= this.maxAddresses) {
      const oldest = this.buckets.keys().next();
      if (!oldest.done) this.buckets.delete(oldest.value);
    }
    this.buckets.set(key, { tokens: this.capacity - 1, at: this.now() });
  }

  /** Forgets the addresses whose bucket is full again (called every minute). */
  sweep(): void {
    for (const key of [...this.buckets.keys()]) {
      const b = this.refill(key);
      if (b && b.tokens >= this.capacity) this.buckets.delete(key);
    }
  }
}

/** COFFER_TRUST_PROXY / trustProxy: which peers may set X-Forwarded-For. */
export function parseTrustProxy(value: string | boolean | undefined): string | boolean {
  if (value === undefined || value === '' || value === false) return false;
  if (typeof value === 'boolean') return value;
  const v = value.trim();
  if (v === 'true') return true;
  if (v === 'false') return false;
  for (const entry of v.split(',').map((s) => s.trim())) {
    const [addr = '', bits, extra] = entry.split('/');
    const family = isIP(addr);
    const okBits = bits === undefined || (/^\d+$/.test(bits) && Number(bits) <= (family === 6 ? 128 : 32));
    if (!['loopback', 'linklocal', 'uniquelocal'].includes(entry) && (family === 0 || !okBits || extra !== undefined)) {
      throw new BadInputError(`trusted proxy "${entry}" is not an address, a CIDR range, loopback, linklocal or uniquelocal (--trust-proxy, COFFER_TRUST_PROXY)`);
    }
  }
  return v;
}

// ---------------------------------------------------------------------------------------------
// Readiness

export interface ReadinessCheck {
  ok: boolean;
  ms: number;
  /** Error code when not ok (no message: the endpoint is anonymous). */
  error?: string;
}

async function probe(fn: () => Promise<unknown>, timeoutMs: number): Promise<ReadinessCheck> {
  const start = performance.now();
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      fn(),
      new Promise((_r, reject) => {
        timer = setTimeout(() => reject(new CofferError('unavailable', 'timeout')), timeoutMs);
      }),
    ]);
    return { ok: true, ms: Math.round(performance.now() - start) };
  } catch (err) {
    const code = err instanceof CofferError ? (err.message === 'timeout' ? 'timeout' : err.code) : 'internal';
    return { ok: false, ms: Math.round(performance.now() - start), error: code };
  } finally {
    clearTimeout(timer);
  }
}

/** An id no organization or block can have (ids are hex / [a-z0-9-]): the probes read nothing real. */
const PROBE_ID = '~readyz';

// ---------------------------------------------------------------------------------------------
// Registration

export interface OpsOptions {
  metrics: Metrics;
  limiter: AuthFailureLimiter;
  /** A readiness probe gives up after this long (default 2 s). */
  readinessTimeoutMs?: number;
  /** Extra readiness information (not deciding readiness), e.g. the event relay's state. */
  info?: () => Record<string, unknown>;
}

const UNLIMITED = new Set<string>([OPS_ROUTES.healthz, OPS_ROUTES.readyz, OPS_ROUTES.metrics, ROUTES.health]);

function routeOf(req: FastifyRequest): string {
  return req.routeOptions.url ?? 'unmatched';
}

/** A streamed payload (a batched block read) counts by the length its route declared. */
function payloadBytes(payload: unknown, declared: unknown): number {
  if (typeof payload === 'string') return Buffer.byteLength(payload);
  if (Buffer.isBuffer(payload) || payload instanceof Uint8Array) return payload.byteLength;
  const n = Number(declared);
  return Number.isSafeInteger(n) && n > 0 ? n : 0;
}

export function registerOps(app: FastifyInstance, ctx: ServerContext, opts: OpsOptions): void {
  const { metrics, limiter } = opts;
  const timeoutMs = opts.readinessTimeoutMs ?? 2000;

  const sweep = setInterval(() => limiter.sweep(), 60_000);
  sweep.unref();
  app.addHook('onClose', (_app, done) => {
    clearInterval(sweep);
    done();
  });

  app.addHook('onRequest', (req, reply, done) => {
    reply.header('x-request-id', req.id);
    const route = routeOf(req);
    if (UNLIMITED.has(route)) return done();
    const waitMs = limiter.retryAfterMs(req.ip);
    if (waitMs > 0) {
      const seconds = Math.max(1, Math.ceil(waitMs / 1000));
      metrics.error('rate_limited');
      req.log.warn({ ip: req.ip, retryAfter: seconds }, 'too many authentication failures: request refused');
      void reply
        .status(429)
        .header('retry-after', String(seconds))
        .send(errorBody(new CofferError('rate_limited', `too many authentication failures from this address: retry in ${seconds} s`, { retryAfterSeconds: seconds })));
      return;
    }
    done();
  });

  app.addHook('onSend', (req, reply, payload, done) => {
    metrics.bytesOut.inc({ route: routeOf(req) }, payloadBytes(payload, reply.getHeader('content-length')));
    done(null, payload);
  });

  app.addHook('onResponse', (req: FastifyRequest, reply: FastifyReply, done) => {
    const route = routeOf(req);
    const status = reply.statusCode;
    metrics.requests.inc({ method: req.method, route, status: String(status) });
    if (route !== ROUTES.events) metrics.duration.observe({ method: req.method, route }, reply.elapsedTime / 1000);
    if (req.rawBody) metrics.bytesIn.inc({ route }, req.rawBody.length);
    if (status === 401) {
      metrics.authFailures.inc({});
      limiter.fail(req.ip);
    }
    done();
  });

  app.get(OPS_ROUTES.healthz, async () => ({ status: 'ok' }));

  app.get(OPS_ROUTES.readyz, async (_req, reply) => {
    const [metadata, blocks] = await Promise.all([
      probe(() => ctx.metadata.getOrganization(PROBE_ID), timeoutMs),
      probe(() => ctx.blocks.get(PROBE_ID, PROBE_ID), timeoutMs),
    ]);
    const ready = metadata.ok && blocks.ok;
    return reply.status(ready ? 200 : 503).send({ status: ready ? 'ready' : 'unavailable', checks: { metadata, blocks }, ...(opts.info?.() ?? {}) });
  });

  app.get(OPS_ROUTES.metrics, async (_req, reply) => {
    return reply.type('text/plain; version=0.0.4; charset=utf-8').send(metrics.render());
  });
}
