/**
 * nginx from Debian (`apt-get install nginx`; `make deps` installs it) in front of Coffer
 * instances, on loopback, as a child process: the configuration is written into a temporary
 * directory that also holds the pid file, the logs and nginx's temporary files; nothing under
 * /etc/nginx or /var/lib/nginx is used. docs/deploy.md shows `nginxConfig` rendered for the
 * example values below, verbatim (test/e2e/scaleout.test.ts checks that it still matches).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort } from './services.js';

export interface NginxConfigOptions {
  /** Directory for the pid file, the logs and the temporary files (nginx -p). */
  prefix: string;
  /** host:port nginx listens on. */
  listen: string;
  /** host:port of every Coffer instance. */
  upstreams: string[];
}

/** The values docs/deploy.md renders the configuration with. */
export const DOC_EXAMPLE: NginxConfigOptions = { prefix: '/var/lib/coffer-nginx', listen: '127.0.0.1:8080', upstreams: ['127.0.0.1:6771', '127.0.0.1:6772'] };

export function nginxConfig(o: NginxConfigOptions): string {
  const p = o.prefix;
  return `# Coffer behind nginx (tested by test/e2e/scaleout.test.ts). Start: nginx -c <this file> -p ${p}
worker_processes 1;
pid ${p}/nginx.pid;
error_log ${p}/error.log warn;

events {
    worker_connections 1024;
}

http {
    client_body_temp_path ${p}/client_body;
    proxy_temp_path ${p}/proxy;
    fastcgi_temp_path ${p}/fastcgi;
    uwsgi_temp_path ${p}/uwsgi;
    scgi_temp_path ${p}/scgi;
    log_format coffer '$remote_addr [$time_local] "$request" $status $request_length $body_bytes_sent '
                      '$request_time upstream=$upstream_addr upstream_status=$upstream_status id=$request_id';
    access_log ${p}/access.log coffer;

    upstream coffer {
${o.upstreams.map((u) => `        server ${u} max_fails=1 fail_timeout=5s;`).join('\n')}
        keepalive 32;
    }

    server {
        listen ${o.listen};

        # Largest bodies: JSON up to 16 MiB (a big file's manifest), blocks up to 4 MiB + 64 bytes.
        client_max_body_size 17m;
        client_body_buffer_size 1m;

        # Requests are signed over method, path + query and the body: pass them unchanged
        # (proxy_pass without a URI part keeps the client's request URI as sent).
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        # This nginx is the edge: the instances trust it (COFFER_TRUST_PROXY) for the client address.
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_set_header X-Request-Id $request_id;
        proxy_connect_timeout 2s;
        proxy_read_timeout 120s;
        proxy_send_timeout 120s;
        # A dead or draining instance (connection refused, 503): try the other one. nginx resends
        # only idempotent requests (GET, PUT) once a request went out; POSTs are retried by the client.
        proxy_next_upstream error timeout http_503;
        proxy_next_upstream_tries 2;
        # Answers (blocks of 512 KiB by default) are buffered in memory up to 512 KiB per request.
        proxy_buffer_size 16k;
        proxy_buffers 32 16k;
        proxy_busy_buffers_size 64k;

        # Live events (server-sent events): no buffering, long reads (the server pings every 15 s).
        location ~ ^/v1/orgs/[^/]+/events$ {
            proxy_pass http://coffer;
            proxy_buffering off;
            proxy_cache off;
            proxy_read_timeout 1h;
        }

        # Prometheus scrapes each instance directly, not through the public address.
        location = /metrics {
            return 404;
        }

        location / {
            proxy_pass http://coffer;
        }
    }
}
`;
}

export interface Nginx {
  /** http://127.0.0.1:<port> */
  url: string;
  port: number;
  dir: string;
  configFile: string;
  proc: ChildProcess;
  accessLog(): Promise<string>;
  errorLog(): Promise<string>;
  /** Stops nginx (SIGQUIT: graceful) and removes the directory (idempotent). */
  stop(): Promise<void>;
}

const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const p of running) if (p.exitCode === null) p.kill('SIGTERM');
});

function nginxBinary(): string {
  for (const b of ['/usr/sbin/nginx', '/usr/local/sbin/nginx']) if (existsSync(b)) return b;
  if (spawnSync('nginx', ['-v']).status === 0) return 'nginx';
  throw new Error('nginx not found: run `make deps` (installs the Debian package nginx) or `apt-get install nginx`');
}

async function reachable(url: string): Promise<boolean> {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(1000) });
    await res.arrayBuffer();
    return true;
  } catch {
    return false;
  }
}

/** Starts nginx in front of the instances (host:port each) on a free loopback port. */
export async function startNginx(upstreams: string[]): Promise<Nginx> {
  const bin = nginxBinary();
  const dir = await mkdtemp(join(tmpdir(), 'coffer-nginx-'));
  // As root nginx's workers run as nobody: they must reach the temporary directories in here.
  await chmod(dir, 0o755);
  const configFile = join(dir, 'nginx.conf');
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    await writeFile(configFile, nginxConfig({ prefix: dir, listen: `127.0.0.1:${port}`, upstreams }));
    const proc = spawn(bin, ['-c', configFile, '-p', dir, '-g', 'daemon off;'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    proc.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    running.add(proc);
    const exited = new Promise<void>((r) => proc.once('exit', () => r()));
    const url = `http://127.0.0.1:${port}`;
    for (let i = 0; i < 100 && proc.exitCode === null && !(await reachable(`${url}/healthz`)); i++) await sleep(50);
    if (proc.exitCode === null && (await reachable(`${url}/healthz`))) {
      let stopped = false;
      return {
        url,
        port,
        dir,
        configFile,
        proc,
        accessLog: () => readFile(join(dir, 'access.log'), 'utf8').catch(() => ''),
        errorLog: () => readFile(join(dir, 'error.log'), 'utf8').catch(() => ''),
        async stop() {
          if (stopped) return;
          stopped = true;
          if (proc.exitCode === null) {
            proc.kill('SIGQUIT');
            await Promise.race([exited, sleep(5000)]);
            if (proc.exitCode === null) proc.kill('SIGKILL');
          }
          running.delete(proc);
          await rm(dir, { recursive: true, force: true });
        },
      };
    }
    if (proc.exitCode === null) proc.kill('SIGKILL');
    await exited;
    running.delete(proc);
    const log = await readFile(join(dir, 'error.log'), 'utf8').catch(() => '');
    if (attempt >= 3) {
      await rm(dir, { recursive: true, force: true });
      throw new Error(`nginx did not start (exit ${proc.exitCode}): ${out}${log}`.slice(-3000));
    }
  }
}
