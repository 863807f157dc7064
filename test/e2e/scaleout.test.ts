/**
 * A load-balanced deployment, started for real: PostgreSQL + s3rver (test/helpers/services.ts), two
 * `coffer server` processes (the built CLI) sharing them, nginx from Debian in front
 * (test/helpers/nginx.ts), and real `coffer mount` processes on FUSE:
 *
 *   alice   → instance A directly
 *   bob     → instance B directly        (changes cross instances: LISTEN/NOTIFY events)
 *   alice2  → nginx (a second device of alice, enrolled through nginx)
 *
 * Then instance A is SIGKILLed in the middle of an upload through nginx: the upload completes
 * through B, and a fresh mount reads everything back identical.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { ServerConnection } from '../../src/client/connection.js';
import { claim, greet } from '../../src/client/invitations.js';
import { bootstrapOrganization } from '../../src/client/organization.js';
import { setMemberRole } from '../../src/client/sharing.js';
import { findWorkspace, listWorkspaces } from '../../src/client/workspaces.js';
import type { DeviceKeys } from '../../src/crypto/index.js';
import { ROUTES } from '../../src/protocol/schemas.js';
import { newWorkspace } from '../helpers/client.js';
import { CLI, mountWorkspace, sh, type Environment } from '../helpers/mount.js';
import { DOC_EXAMPLE, nginxConfig, startNginx } from '../helpers/nginx.js';
import { request, type TestServer } from '../helpers/server.js';
import { startServerProcess } from '../helpers/server-process.js';
import { startPostgres, startS3 } from '../helpers/services.js';

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true';
const MiB = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// The deployment

interface Instance {
  name: string;
  url: string;
  hostPort: string;
  output(): string;
  kill9(): Promise<void>;
  stop(): Promise<void>;
}

/** `coffer server` as a child process; resolves once it printed its address. */
async function startInstance(name: string, args: string[], dataDir: string): Promise<Instance> {
  // nginx on loopback is the edge: the instances take the client address from its X-Forwarded-For.
  const p = await startServerProcess(name, ['--data', dataDir, ...args], { COFFER_TRUST_PROXY: '127.0.0.1' });
  return { name, url: p.url, hostPort: new URL(p.url).host, output: p.output, kill9: () => p.stop('SIGKILL'), stop: () => p.stop() };
}

const started = Date.now();
const root = await mkdtemp(join(tmpdir(), 'coffer-scaleout-'));
const [pgCluster, s3] = await Promise.all([startPostgres(), startS3()]);
const [metadataUrl, blocksUrl] = await Promise.all([pgCluster.createDatabase(), s3.createBucket()]);
const adminToken = randomBytes(24).toString('hex');
const storeArgs = ['--metadata', metadataUrl, '--blocks', blocksUrl, '--admin-token', adminToken];
const [A, B] = await Promise.all([startInstance('A', storeArgs, join(root, 'server-a')), startInstance('B', storeArgs, join(root, 'server-b'))]);
const lb = await startNginx([A.hostPort, B.hostPort]);
t.teardown(async () => {
  await lb.stop();
  await Promise.all([A.stop(), B.stop()]);
  await Promise.all([pgCluster.stop(), s3.stop()]);
  await rm(root, { recursive: true, force: true });
});
t.comment(`PostgreSQL + s3rver + 2 instances + nginx up in ${Date.now() - started} ms (A ${A.url}, B ${B.url}, nginx ${lb.url})`);

// ---------------------------------------------------------------------------------------------
// People: alice bootstraps through A; bob claims through B; alice's second device through nginx

const baseEnv: NodeJS.ProcessEnv = { ...process.env, COFFER_CONFIG_DIR: join(root, 'config'), COFFER_LOG_LEVEL: process.env.COFFER_TEST_LOG ?? 'warn' };

function environment(deviceFile: string, password: string, dataDir: string, serverUrl: string): Environment {
  const server: TestServer = {
    url: serverUrl,
    dataDir: root,
    adminToken,
    close: async () => {},
    restart: async () => {},
    destroy: async () => {},
    request: (method, path, opts) => request({ url: serverUrl }, method, path, opts),
  };
  const env = { ...baseEnv, COFFER_DEVICE_FILE: deviceFile, COFFER_PASSWORD: password, COFFER_DATA_DIR: dataDir };
  return {
    server,
    org: { device: alice, deviceFile, password },
    root,
    env,
    coffer: async (args) => sh([process.execPath, CLI, ...args].map((a) => `'${a.replace(/'/g, "'\\''")}'`).join(' '), { env, timeoutMs: 120_000 }),
  };
}

const orgId = `scale${Date.now().toString(36)}`;
const bootstrapConn = new ServerConnection(A.url, null);
const { bootstrapToken } = await bootstrapConn.createOrganization(orgId, adminToken);
bootstrapConn.close();
const alice: DeviceKeys = await bootstrapOrganization({
  serverUrl: A.url, orgId, bootstrapToken, handle: 'alice@example.org', deviceLabel: 'laptop', password: 'alice password', deviceFile: join(root, 'alice.device'),
});
await newWorkspace(alice, 'Docs');

/** Invitation greeted by alice (through A), claimed through `claimUrl` (which the new device then uses). */
async function enroll(type: 'user' | 'device', handle: string | undefined, claimUrl: string, password: string, deviceFile: string): Promise<DeviceKeys> {
  const conn = new ServerConnection(alice.serverUrl, alice);
  try {
    const inv = await conn.createInvitation(type, handle);
    const [g, c] = await Promise.all([greet(alice, conn, inv.invitationId, 30_000), claim(claimUrl, orgId, inv.token, 30_000)]);
    if (g.sas !== c.sas) throw new Error('SAS mismatch');
    const [device] = await Promise.all([c.finish({ password, deviceFile, label: handle ?? 'second device' }), g.finish()]);
    return device;
  } finally {
    conn.close();
  }
}

await Promise.all([
  enroll('user', 'bob@example.org', B.url, 'bob password', join(root, 'bob.device')),
  enroll('device', undefined, lb.url, 'alice2 password', join(root, 'alice2.device')),
]);
{
  const conn = new ServerConnection(alice.serverUrl, alice);
  const docs = findWorkspace((await listWorkspaces(alice, join(root, 'alice-data'), conn)).workspaces, 'Docs');
  await setMemberRole(alice, conn, docs.realmId, 'bob@example.org', 'contributor');
  conn.close();
}
const aliceEnv = environment(join(root, 'alice.device'), 'alice password', join(root, 'alice-data'), A.url);
const bobEnv = environment(join(root, 'bob.device'), 'bob password', join(root, 'bob-data'), B.url);
const alice2Env = environment(join(root, 'alice2.device'), 'alice2 password', join(root, 'alice2-data'), lb.url);
t.comment(`organization, workspace, bob (through B) and alice's 2nd device (through nginx) ready at ${Date.now() - started} ms`);

// ---------------------------------------------------------------------------------------------
// Helpers

async function eventually(cmd: string, expected: string, timeoutMs: number): Promise<{ ok: boolean; ms: number; last: string }> {
  const start = Date.now();
  let last = '';
  while (Date.now() - start < timeoutMs) {
    last = (await sh(cmd)).stdout.trim();
    if (last === expected) return { ok: true, ms: Date.now() - start, last };
    await sleep(100);
  }
  return { ok: false, ms: Date.now() - start, last };
}

async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}

async function randomFile(name: string, bytes: number): Promise<{ path: string; sha: string }> {
  const path = join(root, name);
  await writeFile(path, randomBytes(bytes));
  return { path, sha: await sha256File(path) };
}

const BLOCK_ROUTE = ROUTES.block;
/** Block bytes an instance received (its /metrics, scraped directly). */
async function blockBytesIn(instance: Instance): Promise<number> {
  try {
    const text = await (await fetch(`${instance.url}/metrics`, { signal: AbortSignal.timeout(1000) })).text();
    const line = text.split('\n').find((l) => l.startsWith(`coffer_http_request_bytes_total{route="${BLOCK_ROUTE}"}`));
    return line ? Number(line.split(' ')[1]) : 0;
  } catch {
    return 0;
  }
}

// ---------------------------------------------------------------------------------------------
// Tests (every top-level await comes before the first t.test: tap ends the file when its subtests are done)

// Alice's and bob's mounts live until the end of the file (the last test uses bob's again).
const [ma, mb] = await Promise.all([mountWorkspace(t, aliceEnv), mountWorkspace(t, bobEnv)]);
t.comment(`alice's mount (A) and bob's mount (B) up at ${Date.now() - started} ms`);

t.test('docs/deploy.md shows the nginx configuration this test uses', async (t) => {
  const docs = await readFile(resolve(import.meta.dirname, '../../docs/deploy.md'), 'utf8');
  t.ok(docs.includes(nginxConfig(DOC_EXAMPLE)), 'nginxConfig(DOC_EXAMPLE) appears verbatim in docs/deploy.md');
  const metrics = await fetch(`${lb.url}/metrics`);
  t.equal(metrics.status, 404, '/metrics is not exposed through nginx');
  t.equal((await fetch(`${A.url}/metrics`)).status, 200, 'but on each instance');
  const ready = await fetch(`${lb.url}/readyz`);
  t.equal(ready.status, 200, '/readyz through nginx');
  t.match(ready.headers.get('x-request-id'), /^[0-9a-f]{32}$/, "nginx's $request_id is the instance's request id");
});

t.test('two users on two instances see each other’s changes', async (t) => {
  t.equal((await sh(`echo from-alice > ${ma.mnt}/a.txt`)).code, 0);
  const seen = await eventually(`cat ${mb.mnt}/a.txt 2>/dev/null`, 'from-alice', 15_000);
  t.ok(seen.ok, `bob (on B) sees alice's file written on A after ${seen.ms} ms`);
  t.ok(seen.ms < 3000, 'within 3 s (events cross instances; polling alone would also need the 1 s upload delay)');
  t.equal((await sh(`mkdir ${mb.mnt}/bobdir && echo from-bob > ${mb.mnt}/bobdir/b.txt`)).code, 0);
  const back = await eventually(`cat ${ma.mnt}/bobdir/b.txt 2>/dev/null`, 'from-bob', 15_000);
  t.ok(back.ok, `alice (on A) sees bob's file written on B after ${back.ms} ms`);

  const big = await randomFile('big16.bin', 16 * MiB);
  const copyStart = Date.now();
  t.equal((await sh(`cp ${big.path} ${ma.mnt}/big16.bin`)).code, 0, '16 MiB copied in on alice’s mount');
  const arrived = await eventually(`sha256sum ${mb.mnt}/big16.bin 2>/dev/null | cut -d' ' -f1`, big.sha, 60_000);
  t.ok(arrived.ok, `bob reads it back identical (sha256) ${Date.now() - copyStart} ms after the copy started`);
  t.comment(`small file A→B ${seen.ms} ms, B→A ${back.ms} ms; 16 MiB copy + upload + read on the other side ${Date.now() - copyStart} ms`);
});

t.test('an instance killed (SIGKILL) during an upload through nginx: nothing is lost', async (t) => {
  const m3 = await mountWorkspace(t, alice2Env);
  const listed = await eventually(`ls ${m3.mnt} | tr '\\n' ' '`, 'a.txt big16.bin bobdir', 15_000);
  t.ok(listed.ok, `the device behind nginx sees the workspace (${listed.last})`);
  t.equal((await sh(`echo via-B > ${mb.mnt}/viaB.txt`)).code, 0);
  const pushed = await eventually(`cat ${m3.mnt}/viaB.txt 2>/dev/null`, 'via-B', 15_000);
  t.ok(pushed.ok, `a change through B reaches the device behind nginx after ${pushed.ms} ms`);

  const size = 32 * MiB;
  const big = await randomFile('big32.bin', size);
  const before = (await blockBytesIn(A)) + (await blockBytesIn(B));
  const beforeA = await blockBytesIn(A);
  t.equal((await sh(`cp ${big.path} ${m3.mnt}/big32.bin && echo small > ${m3.mnt}/after.txt`)).code, 0, '32 MiB copied in on the mount behind nginx');
  // Kill A as soon as it has stored some of this upload's blocks.
  const deadline = Date.now() + 30_000;
  let a = beforeA;
  while (Date.now() < deadline && a - beforeA < MiB) {
    await sleep(20);
    a = await blockBytesIn(A);
  }
  const uploadedAtKill = a + (await blockBytesIn(B)) - before;
  await A.kill9();
  t.ok(a - beforeA >= MiB, `A had stored ${((a - beforeA) / MiB).toFixed(1)} MiB of blocks when it was killed`);
  t.ok(uploadedAtKill < size, `killed during the upload: ${(uploadedAtKill / MiB).toFixed(1)} of ${size / MiB} MiB stored at that moment`);

  const syncStart = Date.now();
  const sync = await alice2Env.coffer(['sync', '--wait', '--timeout', '60']);
  t.equal(sync.code, 0, `coffer sync --wait: ${sync.stdout.trim()} ${sync.stderr.trim()}`);
  t.comment(`upload finished through B ${Date.now() - syncStart} ms after the kill`);

  // A fresh mount (empty local store) through nginx: everything comes from the server.
  const fresh = await mountWorkspace(t, { ...alice2Env, env: { ...alice2Env.env, COFFER_DATA_DIR: join(root, 'alice2-fresh') } });
  const ls = await eventually(`ls ${fresh.mnt} | tr '\\n' ' '`, 'a.txt after.txt big16.bin big32.bin bobdir viaB.txt', 15_000);
  t.ok(ls.ok, `the fresh mount lists every entry (${ls.last})`);
  t.equal((await sh(`sha256sum ${fresh.mnt}/big32.bin | cut -d' ' -f1`)).stdout.trim(), big.sha, '32 MiB file identical (sha256)');
  t.equal((await sh(`sha256sum ${mb.mnt}/big32.bin | cut -d' ' -f1`)).stdout.trim(), big.sha, "and on bob's mount (through B)");
  t.equal((await sh(`cat ${fresh.mnt}/after.txt`)).stdout, 'small\n', 'the file written after it too');
  const log = await lb.accessLog();
  const retried = log.split('\n').filter((l) => /upstream=\S+, /.test(l)).length;
  const failed = log.split('\n').filter((l) => /" 50[234] /.test(l)).length;
  t.comment(`nginx: ${retried} requests passed on to the other instance, ${failed} answered 502-504 to the client (then retried by it)`);
  t.equal((await fetch(`${lb.url}/readyz`)).status, 200, 'nginx still answers ready through B');
});
