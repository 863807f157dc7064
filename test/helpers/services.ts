/**
 * Throw-away backing services for the scale-out backends, real ones (no mocks):
 *
 * - a PostgreSQL cluster (Debian's postgresql package, `make deps` installs it): initdb as the
 *   postgres user in a temporary directory, its own TCP port on 127.0.0.1, the unix socket in that
 *   directory, trust authentication, fsync off; one database per test file (or per call);
 * - s3rver in a child process on a random port, data in a temporary directory; one bucket per call;
 * - OpenStack Swift (Debian's swift, swift-proxy, swift-account, swift-container, swift-object and
 *   memcached; `make test-deps` installs them): one-replica rings on 127.0.0.1, the account,
 *   container, object and proxy servers as child processes (workers = 0, -v: logs in the
 *   directory), mount_check off, user root, its own swift_dir, TempAuth with memcache; one container
 *   per call, reached through the native API (src/server/blocks/swift.ts).
 *
 * Both are stopped (and their directories removed) by `stop()`; the caller registers it as a tap
 * teardown. A process exit also stops whatever is still running.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream, existsSync, readdirSync, rmSync } from 'node:fs';
import { chown, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import pg from 'pg';

const PG_ROOT = '/usr/lib/postgresql';

/** The bin directory of the newest PostgreSQL server installed (15 on Debian 12), or a clear error. */
export function postgresBinDir(): string {
  const versions = existsSync(PG_ROOT)
    ? readdirSync(PG_ROOT)
        .filter((v) => /^\d+$/.test(v) && existsSync(join(PG_ROOT, v, 'bin', 'initdb')))
        .sort((a, b) => Number(b) - Number(a))
    : [];
  if (versions.length === 0) {
    throw new Error(`PostgreSQL server binaries not found under ${PG_ROOT}/*/bin: run \`make deps\` (installs the Debian package postgresql) or \`apt-get install postgresql\``);
  }
  return join(PG_ROOT, versions[0]!, 'bin');
}

/** A free TCP port on 127.0.0.1 (closed again: the caller binds it soon after). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

const cleanups = new Set<() => void>();
process.once('exit', () => {
  for (const fn of cleanups) fn();
});

function run(cmd: string, args: string[], what: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (out += c.toString()));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`${what} failed (exit ${code}): ${out.trim().slice(-2000)}`))));
  });
}

export interface PostgresCluster {
  host: string;
  port: number;
  /** Temporary directory: data in <dir>/data, unix socket in <dir>, log in <dir>/log. */
  dir: string;
  /** Milliseconds initdb + start took. */
  startupMs: number;
  /** postgresql://postgres@127.0.0.1:<port>/<database> */
  url(database: string): string;
  /** Creates a fresh database (random name unless given) and returns its URL. */
  createDatabase(name?: string): Promise<string>;
  /** Stops the server, keeping the data (pg_ctl stop -m fast). */
  pause(): Promise<void>;
  /** Starts it again on the same port after pause(). */
  resume(): Promise<void>;
  /** Stops the server and removes the directory (idempotent). */
  stop(): Promise<void>;
}

/** initdb + start of a private cluster as the postgres user (root cannot run initdb). */
export async function startPostgres(): Promise<PostgresCluster> {
  const started = Date.now();
  const bin = postgresBinDir();
  const asRoot = process.getuid?.() === 0;
  const asPostgres = (tool: string, args: string[]): [string, string[]] =>
    asRoot ? ['runuser', ['-u', 'postgres', '--', join(bin, tool), ...args]] : [join(bin, tool), args];
  const dir = await mkdtemp(join(tmpdir(), 'coffer-pg-'));
  const dataDir = join(dir, 'data');
  if (asRoot) {
    const uid = Number(spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).stdout.trim());
    const gid = Number(spawnSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).stdout.trim());
    if (!Number.isInteger(uid) || uid <= 0) throw new Error('user postgres missing: install the Debian package postgresql (`make deps`)');
    await chown(dir, uid, gid);
  }
  const [initCmd, initArgs] = asPostgres('initdb', ['-D', dataDir, '-A', 'trust', '-U', 'postgres', '-E', 'UTF8', '--locale=C', '--no-sync']);
  await run(initCmd, initArgs, 'initdb');

  let port = 0;
  let running = false;
  const pgCtl = (args: string[]) => asPostgres('pg_ctl', ['-D', dataDir, ...args]);
  const startOn = async (p: number) => {
    const opts = `-p ${p} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200`;
    const [cmd, args] = pgCtl(['-l', join(dir, 'log'), '-w', '-t', '30', '-o', opts, 'start']);
    await run(cmd, args, `pg_ctl start (port ${p}, log in ${dir}/log)`);
    running = true;
  };
  const stopNow = (mode: 'fast' | 'immediate') => {
    if (!running) return Promise.resolve();
    running = false;
    const [cmd, args] = pgCtl(['-m', mode, '-w', 'stop']);
    return run(cmd, args, 'pg_ctl stop').then(() => undefined);
  };
  const syncCleanup = () => {
    if (running) {
      const [cmd, args] = pgCtl(['-m', 'immediate', '-w', 'stop']);
      spawnSync(cmd, args, { stdio: 'ignore' });
    }
    rmSync(dir, { recursive: true, force: true });
  };
  cleanups.add(syncCleanup);

  // The port is picked free, then bound by postgres: retry if someone took it in between.
  for (let attempt = 1; ; attempt++) {
    port = await freePort();
    try {
      await startOn(port);
      break;
    } catch (err) {
      if (attempt >= 3) {
        syncCleanup();
        cleanups.delete(syncCleanup);
        throw err;
      }
    }
  }
  const url = (database: string) => `postgresql://postgres@127.0.0.1:${port}/${database}`;
  return {
    host: '127.0.0.1',
    port,
    dir,
    startupMs: Date.now() - started,
    url,
    async createDatabase(name = `coffer_${randomBytes(6).toString('hex')}`) {
      const client = new pg.Client({ connectionString: url('postgres') });
      await client.connect();
      try {
        await client.query(`CREATE DATABASE ${pg.escapeIdentifier(name)}`);
      } finally {
        await client.end();
      }
      return url(name);
    },
    pause: () => stopNow('fast'),
    resume: () => startOn(port),
    async stop() {
      await stopNow('fast').catch(() => stopNow('immediate'));
      cleanups.delete(syncCleanup);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** An object store started for the tests, on loopback. */
export interface ObjectStoreService {
  /** http://127.0.0.1:<port> */
  endpoint: string;
  port: number;
  dir: string;
  startupMs: number;
  /** Makes the store unreachable (its data stays in `dir`). */
  pause(): Promise<void>;
  /** Starts it again on the same port and directory after pause(). */
  resume(): Promise<void>;
  /** Stops everything and removes the directory (idempotent). */
  stop(): Promise<void>;
}

export interface S3Service extends ObjectStoreService {
  accessKeyId: string;
  secretAccessKey: string;
  /** Creates a bucket (random name unless given); returns the blocks URL for it, credentials in the userinfo. */
  createBucket(name?: string, prefix?: string): Promise<string>;
}

const S3RVER_CHILD = `
const S3rver = require(process.argv[1]);
const server = new S3rver({ address: '127.0.0.1', port: Number(process.argv[3]), silent: true, directory: process.argv[2], vhostBuckets: false });
server.run().then((addr) => process.stdout.write(JSON.stringify({ port: addr.port }) + '\\n'), (err) => { console.error(err); process.exit(1); });
process.on('SIGTERM', () => server.close().finally(() => process.exit(0)));
`;

/** s3rver@3.7.1 (credentials S3RVER/S3RVER; it does not check signatures) in a child process. */
export async function startS3(): Promise<S3Service> {
  const started = Date.now();
  const dir = await mkdtemp(join(tmpdir(), 'coffer-s3-'));
  await mkdir(join(dir, 'data'));
  const s3rverMain = createRequire(import.meta.url).resolve('s3rver');
  let child: ChildProcess | null = null;
  let port = 0;

  const launch = (p: number) =>
    new Promise<number>((resolve, reject) => {
      const c = spawn(process.execPath, ['-e', S3RVER_CHILD, s3rverMain, join(dir, 'data'), String(p)], { stdio: ['ignore', 'pipe', 'pipe'] });
      child = c;
      let out = '';
      let err = '';
      c.stderr!.on('data', (b: Buffer) => (err += b.toString()));
      c.stdout!.on('data', (b: Buffer) => {
        out += b.toString();
        const line = out.split('\n')[0];
        if (out.includes('\n') && line) {
          try {
            resolve((JSON.parse(line) as { port: number }).port);
          } catch {
            reject(new Error(`s3rver said: ${out}`));
          }
        }
      });
      c.once('exit', (code) => {
        if (child === c) child = null;
        reject(new Error(`s3rver exited (${code}): ${err.slice(-2000)}`));
      });
    });
  const kill = () =>
    new Promise<void>((resolve) => {
      const c = child;
      child = null;
      if (!c || c.exitCode !== null) return resolve();
      c.once('exit', () => resolve());
      c.kill('SIGKILL');
    });
  const syncCleanup = () => {
    const c = child as ChildProcess | null;
    if (c && c.exitCode === null) c.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  };
  cleanups.add(syncCleanup);

  try {
    port = await launch(0);
  } catch (err) {
    syncCleanup();
    cleanups.delete(syncCleanup);
    throw err;
  }
  const endpoint = `http://127.0.0.1:${port}`;
  const accessKeyId = 'S3RVER';
  const secretAccessKey = 'S3RVER';
  return {
    endpoint,
    port,
    dir,
    startupMs: Date.now() - started,
    accessKeyId,
    secretAccessKey,
    async createBucket(name = `coffer-${randomBytes(6).toString('hex')}`, prefix = 'blocks') {
      const client = new S3Client({
        endpoint,
        region: 'us-east-1',
        credentials: { accessKeyId, secretAccessKey },
        forcePathStyle: true,
        requestChecksumCalculation: 'WHEN_REQUIRED',
        responseChecksumValidation: 'WHEN_REQUIRED',
      });
      try {
        await client.send(new CreateBucketCommand({ Bucket: name }));
      } finally {
        client.destroy();
      }
      return `s3://${accessKeyId}:${secretAccessKey}@${name}/${prefix}?endpoint=${endpoint}&region=us-east-1`;
    },
    pause: kill,
    async resume() {
      await launch(port);
    },
    async stop() {
      await kill();
      cleanups.delete(syncCleanup);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** `endpoint` is the proxy server's; pause() stops only the proxy. */
export interface SwiftService extends ObjectStoreService {
  /** TempAuth user "coffer:blocks" and its key. */
  user: string;
  key: string;
  /** Creates a container (random name unless given); returns the blocks URL for it (native API). */
  createContainer(name?: string, prefix?: string): Promise<string>;
  /** Restarts memcached: every TempAuth token issued so far is forgotten (clients get 401). */
  forgetTokens(): Promise<void>;
}

const SWIFT_SERVERS = ['account', 'container', 'object'] as const;

/** Debian's OpenStack Swift, all-in-one on loopback (see the file comment). */
export async function startSwift(): Promise<SwiftService> {
  const started = Date.now();
  for (const bin of ['swift-ring-builder', 'swift-proxy-server', 'swift-object-server', 'memcached']) {
    const found = spawnSync('sh', ['-c', `command -v ${bin}`], { encoding: 'utf8' });
    if (found.status !== 0) {
      throw new Error(`${bin} not found: run \`make test-deps\` (installs the Debian packages swift swift-proxy swift-account swift-container swift-object memcached)`);
    }
  }
  const dir = await mkdtemp(join(tmpdir(), 'coffer-swift-'));
  const etc = join(dir, 'etc');
  const devices = join(dir, 'srv');
  await Promise.all([mkdir(etc), mkdir(join(devices, 'd1'), { recursive: true }), mkdir(join(dir, 'log'))]);
  const [proxyPort, memcachedPort, ...ports] = await Promise.all([freePort(), freePort(), ...SWIFT_SERVERS.map(() => freePort())]);
  const user = 'coffer:blocks';
  const key = randomBytes(12).toString('hex');
  const common = (port: number) => `[DEFAULT]
bind_ip = 127.0.0.1
bind_port = ${port}
workers = 0
user = root
swift_dir = ${etc}
log_level = WARNING
`;
  await writeFile(
    join(etc, 'swift.conf'),
    `[swift-hash]\nswift_hash_path_suffix = ${randomBytes(8).toString('hex')}\nswift_hash_path_prefix = coffer\n[storage-policy:0]\nname = Policy-0\ndefault = yes\n`,
  );
  for (let i = 0; i < SWIFT_SERVERS.length; i++) {
    const name = SWIFT_SERVERS[i]!;
    const builder = join(etc, `${name}.builder`);
    await run('swift-ring-builder', [builder, 'create', '6', '1', '1'], `${name} ring`);
    await run('swift-ring-builder', [builder, 'add', `r1z1-127.0.0.1:${ports[i]}/d1`, '1'], `${name} ring`);
    await run('swift-ring-builder', [builder, 'rebalance'], `${name} ring`);
    await writeFile(
      join(etc, `${name}-server.conf`),
      `${common(ports[i]!)}devices = ${devices}\nmount_check = false\n\n[pipeline:main]\npipeline = ${name}-server\n\n[app:${name}-server]\nuse = egg:swift#${name}\n`,
    );
  }
  // Pipeline names (left) and their egg entry points: [filter:<name>] use = egg:swift#<entry>.
  const filters: Array<[string, string]> = [['catch_errors', 'catch_errors'], ['gatekeeper', 'gatekeeper'], ['healthcheck', 'healthcheck'], ['proxy-logging', 'proxy_logging'], ['listing_formats', 'listing_formats']];
  await writeFile(
    join(etc, 'proxy-server.conf'),
    `${common(proxyPort)}
[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats tempauth proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true

[filter:tempauth]
use = egg:swift#tempauth
user_coffer_blocks = ${key} .admin

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:${memcachedPort}

${filters.map(([name, entry]) => `[filter:${name}]\nuse = egg:swift#${entry}\n`).join('\n')}`,
  );

  const children = new Map<string, ChildProcess>();
  const launch = (name: string, cmd: string, args: string[]) => {
    const log = createWriteStream(join(dir, 'log', `${name}.log`));
    const c = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    c.stdout!.pipe(log);
    c.stderr!.pipe(log);
    children.set(name, c);
    return c;
  };
  const killOne = (name: string) =>
    new Promise<void>((resolve) => {
      const c = children.get(name);
      children.delete(name);
      if (!c || c.exitCode !== null || c.signalCode !== null) return resolve();
      c.once('exit', () => resolve());
      c.kill('SIGKILL');
    });
  const syncCleanup = () => {
    for (const c of children.values()) if (c.exitCode === null) c.kill('SIGKILL');
    children.clear();
    rmSync(dir, { recursive: true, force: true });
  };
  cleanups.add(syncCleanup);
  const endpoint = `http://127.0.0.1:${proxyPort}`;
  const token = async (): Promise<{ token: string; storageUrl: string } | null> => {
    try {
      const res = await fetch(`${endpoint}/auth/v1.0`, { headers: { 'x-auth-user': user, 'x-auth-key': key }, signal: AbortSignal.timeout(2000) });
      await res.arrayBuffer();
      const t = res.headers.get('x-auth-token');
      const u = res.headers.get('x-storage-url');
      return res.status === 200 && t && u ? { token: t, storageUrl: u } : null;
    } catch {
      return null;
    }
  };
  const listening = (port: number) =>
    new Promise<boolean>((resolve) => {
      const sock = connect({ host: '127.0.0.1', port }, () => {
        sock.destroy();
        resolve(true);
      });
      sock.once('error', () => resolve(false));
    });
  const waitFor = async (what: string, ready: () => Promise<boolean>) => {
    const deadline = Date.now() + 30_000;
    while (!(await ready())) {
      const dead = [...children.entries()].find(([, c]) => c.exitCode !== null);
      if (dead || Date.now() > deadline) throw new Error(`Swift did not start (${dead ? `${dead[0]} exited` : `waiting for ${what}`}): logs in ${join(dir, 'log')}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  // The backends first: a proxy that finds a backend down error-limits it for a while.
  const waitBackends = async () => {
    for (const [i, name] of SWIFT_SERVERS.entries()) await waitFor(`the ${name} server`, () => listening(ports[i]!));
    await waitFor('memcached', () => listening(memcachedPort!));
  };
  const waitReady = () => waitFor('TempAuth on the proxy', async () => (await token()) !== null);
  const startMemcached = () => launch('memcached', 'memcached', ['-u', 'root', '-l', '127.0.0.1', '-p', String(memcachedPort), '-U', '0']);
  const startProxy = () => launch('proxy', 'swift-proxy-server', [join(etc, 'proxy-server.conf'), '-v']);
  try {
    startMemcached();
    for (const name of SWIFT_SERVERS) launch(name, `swift-${name}-server`, [join(etc, `${name}-server.conf`), '-v']);
    await waitBackends();
    startProxy();
    await waitReady();
  } catch (err) {
    syncCleanup();
    cleanups.delete(syncCleanup);
    throw err;
  }
  return {
    endpoint,
    port: proxyPort,
    dir,
    startupMs: Date.now() - started,
    user,
    key,
    async createContainer(name = `coffer-${randomBytes(6).toString('hex')}`, prefix = 'blocks') {
      const t = await token();
      if (!t) throw new Error('Swift authentication failed');
      const res = await fetch(`${t.storageUrl}/${name}`, { method: 'PUT', headers: { 'x-auth-token': t.token } });
      await res.arrayBuffer();
      if (res.status !== 201 && res.status !== 202) throw new Error(`Swift container creation answered ${res.status}`);
      return `swift://${encodeURIComponent(user)}:${key}@127.0.0.1:${proxyPort}/${name}/${prefix}?auth=v1`;
    },
    pause: () => killOne('proxy'),
    async forgetTokens() {
      await killOne('memcached');
      startMemcached();
      await waitFor('memcached', () => listening(memcachedPort!));
    },
    async resume() {
      startProxy();
      await waitReady();
    },
    async stop() {
      await Promise.all([...children.keys()].map(killOne));
      cleanups.delete(syncCleanup);
      await rm(dir, { recursive: true, force: true });
    },
  };
}
