/**
 * The authentication-failure limit counts the real client address behind a load balancer:
 *
 * - `coffer server --trust-proxy <peers>` (the CLI flag; COFFER_TRUST_PROXY is the fallback):
 *   X-Forwarded-For from a trusted peer names the client; without the flag it is ignored;
 * - two instances behind nginx (Debian, test/helpers/nginx.ts; it overwrites X-Forwarded-For with
 *   the connecting address): clients connecting from 127.0.0.2 and 127.0.0.3 are limited
 *   separately, and a client cannot escape its limit by sending its own X-Forwarded-For.
 */
import { spawn } from 'node:child_process';
import { request as httpRequest } from 'node:http';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import t, { type Test } from 'tap';
import { startServer } from '../../src/server/main.js';
import { startNginx } from '../helpers/nginx.js';

const CLI = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url));
const BAD_AUTH = 'Coffer-Ed25519 org=acme,device=00000000000000000000000000000000,ts=1,sig=x';
const PATH = '/v1/orgs/acme/realms';

/** GET with a malformed device signature (401), from a chosen loopback source address. */
function badRequest(url: string, opts: { from?: string; forwardedFor?: string } = {}): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      `${url}${PATH}`,
      {
        headers: { authorization: BAD_AUTH, ...(opts.forwardedFor && { 'x-forwarded-for': opts.forwardedFor }) },
        ...(opts.from && { localAddress: opts.from }),
        agent: false,
      },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      },
    );
    req.on('error', reject);
    req.end();
  });
}

async function cliServer(t: Test, args: string[]): Promise<string> {
  const dataDir = await mkdtemp(join(tmpdir(), 'coffer-tp-'));
  const child = spawn(process.execPath, ['--import', 'tsx', CLI, 'server', '--port', '0', '--data', dataDir, ...args], {
    env: { ...process.env, COFFER_AUTH_FAILURES_PER_MINUTE: '3', COFFER_TRUST_PROXY: '', COFFER_LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.teardown(async () => {
    if (child.exitCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    }
    await rm(dataDir, { recursive: true, force: true });
  });
  let out = '';
  return new Promise<string>((resolve, reject) => {
    child.stdout.on('data', (c: Buffer) => {
      out += c.toString();
      const m = /listening on (http:\/\/\S+)/.exec(out);
      if (m) resolve(m[1]!);
    });
    child.once('exit', (code) => reject(new Error(`coffer server exited ${code}`)));
  });
}

t.test('coffer server --trust-proxy: the limit counts the forwarded client address', async (t) => {
  const trusted = await cliServer(t, ['--trust-proxy', '127.0.0.1']);
  const statuses: number[] = [];
  for (let i = 0; i < 5; i++) statuses.push(await badRequest(trusted, { forwardedFor: '203.0.113.9' }));
  t.same(statuses, [401, 401, 401, 429, 429], 'client 203.0.113.9: three failures, then 429');
  t.equal(await badRequest(trusted, { forwardedFor: '203.0.113.10' }), 401, 'another client behind the same proxy is not limited');

  const untrusted = await cliServer(t, []);
  const direct: number[] = [];
  for (let i = 0; i < 5; i++) direct.push(await badRequest(untrusted, { forwardedFor: '203.0.113.9' }));
  t.same(direct, [401, 401, 401, 401, 401], 'without --trust-proxy X-Forwarded-For is ignored (the loopback peer is exempt)');
});

t.test('behind nginx: each client address has its own limit, and cannot forge another', async (t) => {
  const dirs = await Promise.all([0, 1].map(() => mkdtemp(join(tmpdir(), 'coffer-tp-'))));
  t.teardown(() => Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true }))).then(() => undefined));
  const instances = await Promise.all(
    dirs.map((dataDir) =>
      startServer({ dataDir, host: '127.0.0.1', port: 0, adminToken: 'x'.repeat(32), logger: pino({ level: 'silent' }), trustProxy: '127.0.0.1', authLimit: { failuresPerMinute: 2, exemptLoopback: false } }),
    ),
  );
  t.teardown(() => Promise.all(instances.map((i) => i.close())).then(() => undefined));
  const nginx = await startNginx(instances.map((i) => new URL(i.url).host));
  t.teardown(() => nginx.stop());

  // Two instances, two failures allowed on each: after four failures (round robin) both refuse.
  const first: number[] = [];
  for (let i = 0; i < 6; i++) first.push(await badRequest(nginx.url, { from: '127.0.0.2', forwardedFor: `198.51.100.${i}` }));
  t.same(first.slice(0, 4), [401, 401, 401, 401], 'client 127.0.0.2: four failures (forged X-Forwarded-For values do not help)');
  t.same(first.slice(4), [429, 429], 'then limited on both instances');
  t.equal(await badRequest(nginx.url, { from: '127.0.0.3' }), 401, 'client 127.0.0.3 is not limited');
  t.equal(await badRequest(nginx.url, { from: '127.0.0.2', forwardedFor: '127.0.0.3' }), 429, 'claiming to be 127.0.0.3 does not help 127.0.0.2');
  const log = await nginx.accessLog();
  t.match(log, /^127\.0\.0\.2 .* 429 /m, 'nginx logged the 429s for 127.0.0.2');
});
