/**
 * Operating the server, over real HTTP with real stores (nothing mocked):
 *
 * - events across instances: two instances on one PostgreSQL database; a device's event stream on
 *   instance B is pushed a vlob written through instance A (LISTEN/NOTIFY), and the relay comes back
 *   after a database restart;
 * - /healthz, /readyz (follows the metadata and block stores), /metrics (Prometheus text);
 * - request ids (x-request-id header, reqId in the pino logs);
 * - the limit on authentication failures per client address (429 rate_limited + Retry-After);
 * - a graceful close ends the event streams.
 */
import { randomBytes } from 'node:crypto';
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { pino } from 'pino';
import t, { type Test } from 'tap';
import { generateSigningKeyPair, sodiumReady } from '../../src/crypto/index.js';
import { BadInputError } from '../../src/errors.js';
import { newId } from '../../src/model/ids.js';
import { buildAuthHeader } from '../../src/protocol/auth.js';
import type { ServerEvent } from '../../src/protocol/events.js';
import { ROUTES, routePath } from '../../src/protocol/schemas.js';
import { startServer, type RunningServer, type ServerOptions } from '../../src/server/main.js';
import { limitKey, parseTrustProxy } from '../../src/server/ops.js';
import { addUser, bootstrapOrg, createRealm, mustGrant, type TestDevice } from '../helpers/org.js';
import { request, startTestServer, type DeviceCredentials, type TestServer } from '../helpers/server.js';
import { startPostgres, startS3, type PostgresCluster, type S3Service } from '../helpers/services.js';

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true';
await sodiumReady();
const b64 = (u8: Uint8Array) => Buffer.from(u8).toString('base64');
const ORG = 'acme';

const t0 = Date.now();
const [pgCluster, s3]: [PostgresCluster, S3Service] = await Promise.all([startPostgres(), startS3()]);
t.teardown(async () => {
  await Promise.all([pgCluster.stop(), s3.stop()]);
});
t.comment(`PostgreSQL + s3rver up in ${Date.now() - t0} ms`);

// ---------------------------------------------------------------------------------------------
// Helpers

interface EventClient {
  status: number;
  headers: IncomingHttpHeaders;
  events: ServerEvent[];
  /** Resolves with the first event (already received or to come) matching, or null after timeoutMs. */
  waitFor(pred: (e: ServerEvent) => boolean, timeoutMs: number): Promise<ServerEvent | null>;
  /** Resolves when the server ends the stream. */
  ended: Promise<void>;
  isEnded(): boolean;
  close(): void;
}

/** A device's server-sent event stream, read with node:http. */
function openEvents(baseUrl: string, device: DeviceCredentials): Promise<EventClient> {
  const path = routePath(ROUTES.events, { org: device.orgId });
  return new Promise((resolve, reject) => {
    const req = httpRequest(new URL(path, baseUrl), {
      headers: { accept: 'text/event-stream', authorization: buildAuthHeader(device.orgId, device.deviceId, device.signingKey, 'GET', path, null, Date.now()) },
    });
    req.on('error', reject);
    req.on('response', (res) => {
      if (res.statusCode !== 200) {
        res.resume();
        reject(new Error(`event stream refused: HTTP ${res.statusCode}`));
        return;
      }
      const events: ServerEvent[] = [];
      const waiters = new Set<() => void>();
      let buffer = '';
      let ended = false;
      const endedP = new Promise<void>((r) => {
        const done = () => {
          ended = true;
          r();
        };
        res.on('end', done);
        res.on('close', done);
        res.on('error', done);
      });
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        buffer += chunk;
        let cut: number;
        while ((cut = buffer.indexOf('\n\n')) >= 0) {
          const frame = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const data = frame.split('\n').find((l) => l.startsWith('data:'));
          if (data) events.push(JSON.parse(data.slice(5)) as ServerEvent);
        }
        for (const w of [...waiters]) w();
      });
      resolve({
        status: res.statusCode,
        headers: res.headers,
        events,
        ended: endedP,
        isEnded: () => ended,
        close: () => req.destroy(),
        waitFor: (pred, timeoutMs) =>
          new Promise((done) => {
            const check = () => {
              const hit = events.find(pred);
              if (hit) {
                waiters.delete(check);
                clearTimeout(timer);
                done(hit);
              }
            };
            const timer = setTimeout(() => {
              waiters.delete(check);
              done(null);
            }, timeoutMs);
            waiters.add(check);
            check();
          }),
      });
    });
    req.end();
  });
}

async function createVlob(server: { url: string }, device: TestDevice, realmId: string): Promise<string> {
  const vlobId = newId();
  const res = await request(server, 'POST', routePath(ROUTES.vlobs, { org: device.orgId, realm: realmId }), {
    device,
    json: { vlobId, keyIndex: 1, timestamp: Date.now(), blob: b64(randomBytes(64)) },
  });
  if (res.status !== 201) throw new Error(`vlob create: HTTP ${res.status} ${res.body.toString()}`);
  return vlobId;
}

/** Prometheus text → { 'name{labels}': value }. */
function parseMetrics(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^(\S+?(?:\{.*\})?) (\S+)$/.exec(line);
    if (m) out.set(m[1]!, Number(m[2]));
  }
  return out;
}

async function scrape(server: { url: string }): Promise<Map<string, number>> {
  const res = await fetch(`${server.url}/metrics`);
  return parseMetrics(await res.text());
}

async function until<T>(fn: () => Promise<T>, ok: (v: T) => boolean, timeoutMs: number): Promise<{ value: T; ms: number }> {
  const start = Date.now();
  let value = await fn();
  while (!ok(value) && Date.now() - start < timeoutMs) {
    await sleep(100);
    value = await fn();
  }
  return { value, ms: Date.now() - start };
}

/** A server started directly (custom logger, proxy trust, limits), closed by the test's teardown. */
async function startCustom(t: Test, opts: Partial<ServerOptions> = {}): Promise<RunningServer> {
  const dataDir = await mkdtemp(join(tmpdir(), 'coffer-ops-'));
  const server = await startServer({ dataDir, host: '127.0.0.1', port: 0, adminToken: randomBytes(24).toString('hex'), logger: pino({ level: 'silent' }), ...opts });
  t.teardown(async () => {
    await server.close();
    await rm(dataDir, { recursive: true, force: true });
  });
  return server;
}

// ---------------------------------------------------------------------------------------------
// Events across instances

t.test('events cross instances through PostgreSQL LISTEN/NOTIFY, and the relay survives a database restart', async (t) => {
  const [metadataUrl, blocksUrl] = await Promise.all([pgCluster.createDatabase(), s3.createBucket()]);
  const adminToken = randomBytes(24).toString('hex');
  const start = () => startTestServer({ teardown: (fn) => t.teardown(fn), metadataUrl, blocksUrl, adminToken });
  const [a, b] = await Promise.all([start(), start()]);
  const admin = await bootstrapOrg(a, ORG);
  const realm = await createRealm(a, admin);
  const bob = await addUser(a, admin, 'standard');
  const stranger = await addUser(a, admin, 'standard');
  await mustGrant(a, admin, realm.realmId, bob.userId, 'reader', bob.userBox.publicKey, realm.workspaceKey);

  const onB = await openEvents(b.url, bob);
  const onA = await openEvents(a.url, bob);
  const strangerOnB = await openEvents(b.url, stranger);
  t.teardown(() => [onB, onA, strangerOnB].forEach((s) => s.close()));
  t.equal(onB.headers['content-type'], 'text/event-stream');

  const latencies: number[] = [];
  for (let i = 0; i < 5; i++) {
    const startMs = Date.now();
    const vlobId = await createVlob(a, admin, realm.realmId);
    const got = await onB.waitFor((e) => e.type === 'vlob' && e.vlobId === vlobId, 3000);
    latencies.push(Date.now() - startMs);
    t.ok(got, `write ${i + 1} through A is pushed to the stream on B`);
    t.match(got, { type: 'vlob', realmId: realm.realmId, vlobId, version: 1, authorDeviceId: admin.deviceId });
    t.ok(await onA.waitFor((e) => e.type === 'vlob' && e.vlobId === vlobId, 3000), 'and to the stream on A (in-process)');
  }
  t.comment(`write through A → event on B: ${latencies.join(', ')} ms (including the write)`);
  t.ok(Math.max(...latencies) < 1500, 'within 1.5 s');
  await sleep(300);
  const vlobEventsOnA = onA.events.filter((e) => e.type === 'vlob').length;
  t.equal(vlobEventsOnA, 5, 'A delivers each event once (its own notifications are skipped)');
  t.equal(strangerOnB.events.filter((e) => e.type === 'vlob').length, 0, 'a non-member on B gets none (membership is checked on the receiving instance)');
  // The other direction, and a role event.
  await mustGrant(b, admin, realm.realmId, stranger.userId, 'reader', stranger.userBox.publicKey, realm.workspaceKey);
  t.ok(await strangerOnB.waitFor((e) => e.type === 'role' && e.userId === stranger.userId, 3000), 'a role change through B reaches B');
  const reverse = await createVlob(b, admin, realm.realmId);
  t.ok(await onA.waitFor((e) => e.type === 'vlob' && e.vlobId === reverse, 3000), 'a write through B is pushed to the stream on A');
  const metricsB = await scrape(b);
  t.ok((metricsB.get('coffer_events_received_total') ?? 0) >= 5, 'B counts the events it received from A');
  t.equal(metricsB.get('coffer_event_relay_connected'), 1);

  // Database restart: both relays lose their connection and come back; /readyz follows.
  const pauseStart = Date.now();
  await pgCluster.pause();
  const down = await until(() => request(a, 'GET', '/readyz'), (r) => r.status === 503, 5000);
  t.equal(down.value.status, 503, '/readyz answers 503 while the database is down');
  t.match(down.value.json, { status: 'unavailable', checks: { metadata: { ok: false }, blocks: { ok: true } } });
  t.equal((await request(a, 'GET', '/healthz')).status, 200, '/healthz still 200 (the process is up)');
  await pgCluster.resume();
  const up = await until(() => request(b, 'GET', '/readyz'), (r) => r.status === 200 && r.json?.events?.connected === true, 20_000);
  t.equal(up.value.status, 200, '/readyz 200 again');
  t.equal(up.value.json.events.connected, true, 'the relay of B is connected again');
  t.comment(`database down → relay of B reconnected: ${Date.now() - pauseStart} ms`);
  await until(() => request(a, 'GET', '/readyz'), (r) => r.json?.events?.connected === true, 20_000);
  // Events of the gap were lost: the streams were ended so that devices reconnect and catch up.
  await Promise.race([onB.ended, sleep(2000)]);
  t.ok(onB.isEnded(), 'the streams on B were ended after the reconnection (devices catch up from their checkpoint)');
  const again = await openEvents(b.url, bob);
  t.teardown(() => again.close());
  const vlobId = await createVlob(a, admin, realm.realmId);
  t.ok(await again.waitFor((e) => e.type === 'vlob' && e.vlobId === vlobId, 3000), 'after the restart, writes through A reach B again');
  t.ok(((await scrape(b)).get('coffer_event_relay_reconnects_total') ?? 0) >= 1, 'the reconnection is counted');
});

// ---------------------------------------------------------------------------------------------
// Health and readiness

t.test('/healthz and /readyz', async (t) => {
  const [metadataUrl, blocksUrl] = await Promise.all([pgCluster.createDatabase(), s3.createBucket()]);
  const scaled = await startTestServer({ teardown: (fn) => t.teardown(fn), metadataUrl, blocksUrl });
  const embedded = await startTestServer({ teardown: (fn) => t.teardown(fn) });

  for (const [name, s] of [['postgres+s3', scaled], ['sqlite+folder', embedded]] as const) {
    const h = await request(s, 'GET', '/healthz');
    t.same([h.status, h.json], [200, { status: 'ok' }], `${name}: /healthz`);
    const r = await request(s, 'GET', '/readyz');
    t.equal(r.status, 200, `${name}: /readyz 200`);
    t.match(r.json, { status: 'ready', checks: { metadata: { ok: true, ms: Number }, blocks: { ok: true, ms: Number } } });
    t.equal(r.json.events.mode, name === 'sqlite+folder' ? 'local' : 'postgres', `${name}: event mode`);
    t.equal((await request(s, 'GET', '/v1/readyz')).status, 404, 'the ops endpoints live at the root, not under /v1');
  }

  await s3.pause();
  const down = await request(scaled, 'GET', '/readyz');
  t.equal(down.status, 503, 'block store down → 503');
  t.match(down.json, { status: 'unavailable', checks: { metadata: { ok: true }, blocks: { ok: false, error: String } } });
  t.notMatch(down.body.toString(), /127\.0\.0\.1|S3RVER/, 'no addresses or credentials in the anonymous answer');
  t.equal((await request(scaled, 'GET', '/healthz')).status, 200, '/healthz stays 200');
  await s3.resume();
  const back = await until(() => request(scaled, 'GET', '/readyz'), (r) => r.status === 200, 10_000);
  t.equal(back.value.status, 200, `ready again once the bucket answers (${back.ms} ms)`);
});

// ---------------------------------------------------------------------------------------------
// Metrics

t.test('/metrics: requests by route and status, latency histogram, bytes in and out, errors by code', async (t) => {
  const server = await startTestServer({ teardown: (fn) => t.teardown(fn) });
  const admin = await bootstrapOrg(server, ORG);
  const realm = await createRealm(server, admin);
  const blockPath = routePath(ROUTES.block, { org: ORG, realm: realm.realmId, block: newId() });
  const data = randomBytes(300_000);
  t.equal((await request(server, 'PUT', blockPath, { device: admin, raw: data })).status, 201);
  for (let i = 0; i < 3; i++) t.equal((await request(server, 'GET', blockPath, { device: admin })).status, 200);
  t.equal((await request(server, 'GET', '/no/such/route')).status, 404);
  t.equal((await request(server, 'GET', routePath(ROUTES.realms, { org: ORG }))).status, 401);
  t.equal((await request(server, 'GET', routePath(ROUTES.block, { org: ORG, realm: realm.realmId, block: newId() }), { device: admin })).status, 404);
  const events = await openEvents(server.url, admin);
  await sleep(50);

  const res = await fetch(`${server.url}/metrics`);
  t.equal(res.status, 200);
  t.match(res.headers.get('content-type'), /^text\/plain; version=0\.0\.4/);
  const text = await res.text();
  const m = parseMetrics(text);
  const route = ROUTES.block;
  t.equal(m.get(`coffer_http_requests_total{method="PUT",route="${route}",status="201"}`), 1, 'PUT block 201 counted by route pattern');
  t.equal(m.get(`coffer_http_requests_total{method="GET",route="${route}",status="200"}`), 3, 'GET block 200 ×3');
  t.equal(m.get(`coffer_http_requests_total{method="GET",route="${route}",status="404"}`), 1, 'GET block 404');
  t.equal(m.get(`coffer_http_requests_total{method="GET",route="unmatched",status="404"}`), 1, 'unknown paths under one label');
  t.ok((m.get(`coffer_http_request_bytes_total{route="${route}"}`) ?? 0) >= 300_000, 'request bytes of the block upload');
  t.ok((m.get(`coffer_http_response_bytes_total{route="${route}"}`) ?? 0) >= 900_000, 'response bytes of the three downloads');
  t.ok((m.get(`coffer_http_response_bytes_total{route="${ROUTES.events}"}`) ?? 0) > 0, 'event stream bytes');
  t.equal(m.get('coffer_http_errors_total{code="unauthorized"}'), 1);
  t.equal(m.get('coffer_http_errors_total{code="not_found"}'), 2);
  t.equal(m.get('coffer_auth_failures_total'), 1);
  t.equal(m.get('coffer_event_streams'), 1, 'one event stream connected');
  // Histogram: cumulative buckets, +Inf = count, count = requests of that route.
  const buckets = [...m.entries()].filter(([k]) => k.startsWith(`coffer_http_request_duration_seconds_bucket{method="GET",route="${route}"`)).map(([, v]) => v);
  t.ok(buckets.length > 5, 'histogram buckets');
  t.ok(buckets.every((v, i) => i === 0 || v >= buckets[i - 1]!), 'buckets are cumulative');
  t.equal(m.get(`coffer_http_request_duration_seconds_bucket{method="GET",route="${route}",le="+Inf"}`), 4);
  t.equal(m.get(`coffer_http_request_duration_seconds_count{method="GET",route="${route}"}`), 4);
  t.ok((m.get(`coffer_http_request_duration_seconds_sum{method="GET",route="${route}"}`) ?? 0) > 0);
  t.ok((m.get('process_resident_memory_bytes') ?? 0) > 10e6, 'process metrics');
  t.notOk(text.includes(realm.realmId), 'no ids in label values');
  t.ok(text.split('\n').every((l) => l === '' || l.startsWith('# HELP ') || l.startsWith('# TYPE ') || /^[a-z_]+(\{[^}]*\})? -?[0-9.e+]+$/.test(l)), 'every line is valid exposition format');
  events.close();
});

// ---------------------------------------------------------------------------------------------
// Request ids

t.test('request ids: x-request-id on every answer, reqId in the logs', async (t) => {
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString().split('\n')) if (l) lines.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  const server = await startCustom(t, { logger: pino({ level: 'info' }, sink) });
  const r1 = await request(server, 'GET', ROUTES.health);
  const r2 = await request(server, 'GET', '/no/such/route');
  const id1 = r1.headers.get('x-request-id');
  const id2 = r2.headers.get('x-request-id');
  t.match(id1, /^[0-9a-f-]{36}$/, 'a UUID');
  t.not(id1, id2, 'one per request');
  const given = await request(server, 'GET', ROUTES.health, { headers: { 'x-request-id': 'nginx-4f2a9c' } });
  t.equal(given.headers.get('x-request-id'), 'nginx-4f2a9c', "a proxy's well-formed id is kept (logs correlate)");
  const bad = await request(server, 'GET', ROUTES.health, { headers: { 'x-request-id': 'evil\tid "quoted"' } });
  t.match(bad.headers.get('x-request-id'), /^[0-9a-f-]{36}$/, 'a malformed id is replaced');
  const refused = await request(server, 'GET', routePath(ROUTES.realms, { org: ORG }));
  t.equal(refused.status, 401);
  const admin = await bootstrapOrg(server, ORG);
  const stream = await openEvents(server.url, admin);
  t.match(stream.headers['x-request-id'], /^[0-9a-f-]{36}$/, 'the event stream has one too');
  stream.close();
  await sleep(100);

  const byId = (id: string | null) => lines.filter((l) => l.reqId === id);
  t.ok(byId(id1).some((l) => l.msg === 'incoming request'), 'incoming request logged with reqId');
  t.ok(byId(id1).some((l) => l.msg === 'request completed'), 'request completed logged with reqId');
  t.ok(byId('nginx-4f2a9c').length >= 2, "the proxy's id is the reqId");
  const refusedLog = byId(refused.headers.get('x-request-id')).find((l) => l.msg === 'request refused');
  t.match(refusedLog, { code: 'unauthorized' }, 'the refusal is logged under the same reqId');
});

// ---------------------------------------------------------------------------------------------
// Authentication failures

t.test('authentication failures are limited per client address: 429 rate_limited with Retry-After', async (t) => {
  const server = await startCustom(t, { trustProxy: '127.0.0.1' });
  const admin = await bootstrapOrg(server, ORG);
  const path = routePath(ROUTES.realms, { org: ORG });
  const impostor = { orgId: ORG, deviceId: admin.deviceId, signingKey: generateSigningKeyPair().secretKey };
  const from = (ip: string) => ({ 'x-forwarded-for': ip });

  const statuses: number[] = [];
  for (let i = 0; i < 20; i++) statuses.push((await request(server, 'GET', path, { device: impostor, headers: from('203.0.113.7') })).status);
  t.same([...new Set(statuses)], [401], '20 failures answered 401');
  const limited = await request(server, 'GET', path, { device: impostor, headers: from('203.0.113.7') });
  t.equal(limited.status, 429, 'the 21st: 429');
  t.match(limited.json, { error: 'rate_limited', message: /too many authentication failures/, details: { retryAfterSeconds: Number } });
  const retryAfter = Number(limited.headers.get('retry-after'));
  t.ok(retryAfter >= 1 && retryAfter <= 3, `Retry-After: ${retryAfter} s (one try every 3 s at 20/min)`);
  t.equal((await request(server, 'GET', path, { device: admin, headers: from('203.0.113.7') })).status, 429, 'that address is refused even with a good signature');
  t.equal((await request(server, 'GET', path, { device: admin, headers: from('203.0.113.8') })).status, 200, 'another address is not');
  t.equal((await request(server, 'GET', ROUTES.health, { headers: from('203.0.113.7') })).status, 200, 'health stays reachable');
  t.equal((await request(server, 'GET', '/readyz', { headers: from('203.0.113.7') })).status, 200, 'readiness too');

  // IPv6 clients are counted per /64.
  for (let i = 0; i < 20; i++) await request(server, 'GET', path, { device: impostor, headers: from(`2001:db8:0:1::${i + 1}`) });
  t.equal((await request(server, 'GET', path, { device: admin, headers: from('2001:db8:0:1:ffff::9') })).status, 429, 'same /64: limited');
  t.equal((await request(server, 'GET', path, { device: admin, headers: from('2001:db8:0:2::1') })).status, 200, 'other /64: not');

  // Loopback (local tools, a proxy without trustProxy) is not limited.
  for (let i = 0; i < 25; i++) await request(server, 'GET', path, { device: impostor });
  t.equal((await request(server, 'GET', path, { device: admin })).status, 200, 'loopback: never limited');

  // The bucket refills: one more try after Retry-After.
  await sleep(retryAfter * 1000 + 100);
  t.equal((await request(server, 'GET', path, { device: admin, headers: from('203.0.113.7') })).status, 200, 'after Retry-After the address may try again');
  const m = await scrape(server);
  t.ok((m.get('coffer_http_errors_total{code="rate_limited"}') ?? 0) >= 3, 'rate_limited answers are counted');
  t.ok((m.get('coffer_auth_failures_total') ?? 0) >= 65, 'failures are counted');

  // Without trustProxy the header is ignored: spoofing X-Forwarded-For does not escape the limit.
  const direct = await startCustom(t, { authLimit: { exemptLoopback: false } });
  await bootstrapOrg(direct, ORG);
  const seen: number[] = [];
  for (let i = 0; i < 22; i++) seen.push((await request(direct, 'GET', path, { device: impostor, headers: from(`198.51.100.${i}`) })).status);
  t.same(seen.slice(0, 20), Array(20).fill(401));
  t.same(seen.slice(20), [429, 429], 'X-Forwarded-For from an untrusted peer is ignored');
});

t.test('settings: trusted proxies and limit keys', async (t) => {
  t.equal(parseTrustProxy('127.0.0.1, 10.0.0.0/8,fd00::/8'), '127.0.0.1, 10.0.0.0/8,fd00::/8');
  t.equal(parseTrustProxy(undefined), false);
  t.equal(parseTrustProxy('true'), true);
  t.throws(() => parseTrustProxy('nginx.internal'), BadInputError);
  t.throws(() => parseTrustProxy('10.0.0.0/33'), BadInputError);
  t.equal(limitKey('203.0.113.7'), '203.0.113.7');
  t.equal(limitKey('::ffff:203.0.113.7'), '203.0.113.7');
  t.equal(limitKey('2001:db8::1'), '2001:db8:0:0::/64');
  t.equal(limitKey('2001:DB8:0:0:1::1'), '2001:db8:0:0::/64');
  const dataDir = await mkdtemp(join(tmpdir(), 'coffer-ops-'));
  t.teardown(() => rm(dataDir, { recursive: true, force: true }));
  await t.rejects(startServer({ dataDir, host: '127.0.0.1', port: 0, adminToken: 'x', logger: pino({ level: 'silent' }), trustProxy: 'a proxy' }), BadInputError, 'a bad COFFER_TRUST_PROXY stops the start');
});

// ---------------------------------------------------------------------------------------------
// Graceful shutdown

t.test('close() ends the event streams and drains', async (t) => {
  for (const backend of ['sqlite+folder', 'postgres+s3'] as const) {
    const urls = backend === 'postgres+s3' ? await Promise.all([pgCluster.createDatabase(), s3.createBucket()]).then(([metadataUrl, blocksUrl]) => ({ metadataUrl, blocksUrl })) : {};
    const server: TestServer = await startTestServer({ teardown: (fn) => t.teardown(fn), ...urls });
    const admin = await bootstrapOrg(server, ORG);
    const streams = await Promise.all([openEvents(server.url, admin), openEvents(server.url, admin), openEvents(server.url, admin)]);
    const started = Date.now();
    await server.close();
    const ms = Date.now() - started;
    await Promise.race([Promise.all(streams.map((s) => s.ended)), sleep(1000)]);
    t.ok(streams.every((s) => s.isEnded()), `${backend}: every stream ended by the server`);
    t.ok(ms < 3000, `${backend}: close() returned in ${ms} ms (streams do not hold it)`);
    await t.rejects(fetch(`${server.url}/healthz`), 'the port is closed');
  }
});
