/**
 * Server throughput: block PUTs/s (512 KiB bodies) and vlob updates/s (1 KiB blobs, each client
 * updating its own vlob: version n+1 after n) from N concurrent clients, each a ServerConnection
 * (the product's HTTP client: got over keep-alive, every request device-signed).
 *
 * Deployments, all real and started here (test/helpers/services.ts, test/helpers/nginx.ts):
 *   sqlite+folder    1 instance (the embedded default; the reference)
 *   postgres+s3      1 instance, then 2 instances behind nginx
 *   postgres+swift   1 instance, then 2 instances behind nginx (BENCH_SWIFT=0 skips it)
 * Instances are `coffer server` processes (dist/, `make build`). Prints one table.
 *
 *   node --import tsx bench/server.ts        BENCH_CLIENTS=8 BENCH_SECONDS=3
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { ServerConnection } from '../src/client/connection.js';
import { newId } from '../src/model/ids.js';
import { startNginx } from '../test/helpers/nginx.js';
import { bootstrapOrg, createRealm, type TestDevice } from '../test/helpers/org.js';
import { startServerProcess, type ServerProcess } from '../test/helpers/server-process.js';
import { startPostgres, startS3, startSwift } from '../test/helpers/services.js';

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true';
const CLIENTS = Number(process.env.BENCH_CLIENTS ?? 8);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 3);
const BLOCK = 512 * 1024;
const ADMIN_TOKEN = randomBytes(24).toString('hex');

async function startInstance(dataDir: string, urls: { metadataUrl?: string; blocksUrl?: string }): Promise<ServerProcess> {
  const args = ['--data', dataDir, '--admin-token', ADMIN_TOKEN, '--trust-proxy', '127.0.0.1', '--gc-interval', '0'];
  if (urls.metadataUrl) args.push('--metadata', urls.metadataUrl);
  if (urls.blocksUrl) args.push('--blocks', urls.blocksUrl);
  return startServerProcess('bench', args, { COFFER_LOG_LEVEL: 'warn', COFFER_AUTH_FAILURES_PER_MINUTE: '0' });
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/** Runs `op` in CLIENTS lanes for SECONDS; returns ops/s and latency percentiles (ms). */
async function measure(conns: ServerConnection[], op: (conn: ServerConnection, lane: number) => Promise<void>): Promise<{ rate: number; p50: number; p99: number; errors: number }> {
  const latencies: number[] = [];
  let errors = 0;
  const end = performance.now() + SECONDS * 1000;
  const t0 = performance.now();
  await Promise.all(
    conns.map(async (conn, lane) => {
      while (performance.now() < end) {
        const s = performance.now();
        try {
          await op(conn, lane);
          latencies.push(performance.now() - s);
        } catch {
          errors++;
        }
      }
    }),
  );
  const elapsed = (performance.now() - t0) / 1000;
  latencies.sort((a, b) => a - b);
  return { rate: latencies.length / elapsed, p50: percentile(latencies, 50), p99: percentile(latencies, 99), errors };
}

interface Row {
  backend: string;
  instances: number;
  blocks: { rate: number; p50: number; p99: number; errors: number };
  vlobs: { rate: number; p50: number; p99: number; errors: number };
}

async function benchDeployment(backend: string, instances: number, urls: { metadataUrl?: string; blocksUrl?: string }): Promise<Row> {
  const dirs = await Promise.all(Array.from({ length: instances }, () => mkdtemp(join(tmpdir(), 'coffer-bench-srv-'))));
  const started: ServerProcess[] = [];
  let nginx: Awaited<ReturnType<typeof startNginx>> | null = null;
  const conns: ServerConnection[] = [];
  try {
    for (const d of dirs) started.push(await startInstance(d, urls));
    if (instances > 1) nginx = await startNginx(started.map((i) => new URL(i.url).host));
    const url = nginx?.url ?? started[0]!.url;
    const server = { url, adminToken: ADMIN_TOKEN };
    const admin: TestDevice = await bootstrapOrg(server, `bench${randomBytes(4).toString('hex')}`);
    const realm = await createRealm(server, admin);
    for (let i = 0; i < CLIENTS; i++) conns.push(new ServerConnection(url, admin));
    const body = randomBytes(BLOCK);
    // Warm-up: connections open, caches and pools filled.
    await Promise.all(conns.map((c) => c.putBlock(realm.realmId, newId(), body)));
    const blocks = await measure(conns, (c) => c.putBlock(realm.realmId, newId(), body));
    const vlobIds = conns.map(() => newId());
    const versions = conns.map(() => 1);
    const blob = randomBytes(1024);
    await Promise.all(conns.map((c, i) => c.writeVlob(realm.realmId, vlobIds[i]!, 1, 1, Date.now(), blob)));
    const vlobs = await measure(conns, async (c, lane) => {
      const v = versions[lane]! + 1;
      await c.writeVlob(realm.realmId, vlobIds[lane]!, v, 1, Date.now(), blob);
      versions[lane] = v;
    });
    return { backend, instances, blocks, vlobs };
  } finally {
    for (const c of conns) c.close();
    await nginx?.stop();
    await Promise.all(started.map((i) => i.stop()));
    await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
  }
}

const rows: Row[] = [];
const withSwift = process.env.BENCH_SWIFT !== '0';
const [pgCluster, s3, swift] = await Promise.all([startPostgres(), startS3(), withSwift ? startSwift() : Promise.resolve(null)]);
try {
  rows.push(await benchDeployment('sqlite+folder', 1, {}));
  for (const n of [1, 2]) rows.push(await benchDeployment('postgres+s3', n, { metadataUrl: await pgCluster.createDatabase(), blocksUrl: await s3.createBucket() }));
  if (swift) for (const n of [1, 2]) rows.push(await benchDeployment('postgres+swift', n, { metadataUrl: await pgCluster.createDatabase(), blocksUrl: await swift.createContainer() }));
} finally {
  await Promise.all([pgCluster.stop(), s3.stop(), swift?.stop()]);
}

const f = (n: number, d = 0) => (Number.isFinite(n) ? n.toFixed(d) : '-');
process.stdout.write(
  `\nServer throughput: ${CLIENTS} concurrent clients (ServerConnection, signed requests), ${SECONDS} s per measurement, ${availableParallelism()} cores, load average ${loadavg()[0]!.toFixed(1)} at the end\n`,
);
process.stdout.write('block PUT = 512 KiB body; vlob update = 1 KiB blob, version n -> n+1 on the client\'s own vlob; 2 instances = behind nginx\n\n');
const header = ['backend', 'instances', 'block puts/s', 'MiB/s', 'p50 ms', 'p99 ms', 'vlob updates/s', 'p50 ms', 'p99 ms', 'errors'];
const table = rows.map((r) => [
  r.backend,
  String(r.instances),
  f(r.blocks.rate),
  f((r.blocks.rate * BLOCK) / 1024 / 1024),
  f(r.blocks.p50, 1),
  f(r.blocks.p99, 1),
  f(r.vlobs.rate),
  f(r.vlobs.p50, 1),
  f(r.vlobs.p99, 1),
  String(r.blocks.errors + r.vlobs.errors),
]);
const widths = header.map((h, i) => Math.max(h.length, ...table.map((row) => row[i]!.length)));
const line = (cells: string[]) => `| ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ')} |\n`;
process.stdout.write(line(header));
process.stdout.write(`|${widths.map((w, i) => (i === 0 ? ':' : '') + '-'.repeat(w + 1) + (i === 0 ? '' : ':')).join('|')}|\n`);
for (const r of table) process.stdout.write(line(r));
