/**
 * A loopback TCP proxy between a client and a server whose behaviour a test switches at any time:
 *
 * - pass:     bytes flow both ways untouched;
 * - drop:     a blackhole: connections are accepted, nothing is forwarded or answered, in either
 *             direction; a connection that lost bytes this way stays dead after the mode changes
 *             (its stream is broken, as after a real partition the peer never hears of): the client
 *             must time out on its own;
 * - delay:    every chunk is forwarded `delayMs` later (order kept per direction);
 * - reset:    a connection is reset (TCP RST, both sides) once `afterBytes` bytes of response have
 *             gone through it (0: at its first byte either way);
 * - truncate: a connection is closed cleanly (FIN, both sides) once `afterBytes` bytes of response
 *             have gone through it: the client sees a short response.
 *
 * The mode applies to live connections too (HTTP keep-alive reuses them): the byte budget of
 * reset/truncate counts from the moment the mode was set (or the connection opened, if later).
 * `onlyRequests` aims reset/truncate at some requests (e.g. the answer to a manifest upload).
 */
import { createServer, connect, type Server, type Socket } from 'node:net';

export type FaultMode = 'pass' | 'drop' | 'delay' | 'reset' | 'truncate';

export interface FaultOptions {
  /** delay: per-chunk latency (ms). */
  delayMs?: number;
  /** reset / truncate: response bytes let through per connection before the fault. */
  afterBytes?: number;
  /**
   * Only requests whose request line (e.g. "PUT /v1/orgs/o/realms/r/vlobs/v HTTP/1.1") matches get
   * the fault (reset / truncate of their response); other requests pass. Default: every request.
   */
  onlyRequests?: RegExp;
}

export interface FaultStats {
  connections: number;
  dropped: number;
  resets: number;
  truncations: number;
  delayedChunks: number;
  bytesUp: number;
  bytesDown: number;
}

export interface FaultProxy {
  /** http://127.0.0.1:<port> of the proxy. */
  readonly url: string;
  readonly port: number;
  readonly mode: FaultMode;
  readonly stats: FaultStats;
  setMode(mode: FaultMode, opts?: FaultOptions): void;
  /** Destroys every live connection (a "network restart"), whatever the mode. */
  cutAll(): void;
  close(): Promise<void>;
}

interface Pair {
  client: Socket;
  upstream: Socket | null;
  /** Generation of the mode the byte budget counts from. */
  gen: number;
  down: number;
  /** Lost bytes in drop mode: the stream is broken for good. */
  poisoned: boolean;
  /** The request on this connection matches `onlyRequests` (its response gets the fault). */
  armed: boolean;
  closed: boolean;
  /** delay queues (one per direction keeps the order). */
  upChain: Promise<void>;
  downChain: Promise<void>;
}

export async function startFaultProxy(target: { host?: string; port: number }, host = '127.0.0.1'): Promise<FaultProxy> {
  let mode: FaultMode = 'pass';
  let opts: FaultOptions = {};
  let gen = 0;
  const pairs = new Set<Pair>();
  const stats: FaultStats = { connections: 0, dropped: 0, resets: 0, truncations: 0, delayedChunks: 0, bytesUp: 0, bytesDown: 0 };
  const targetHost = target.host ?? '127.0.0.1';

  const finish = (p: Pair, how: 'reset' | 'end' | 'destroy') => {
    if (p.closed) return;
    p.closed = true;
    pairs.delete(p);
    for (const s of [p.client, p.upstream]) {
      if (!s) continue;
      if (how === 'reset' && typeof s.resetAndDestroy === 'function' && !s.destroyed && !s.connecting) s.resetAndDestroy();
      else if (how === 'end') {
        s.end();
        setTimeout(() => s.destroy(), 1000).unref();
      } else s.destroy();
    }
  };

  const budget = (p: Pair): number => {
    if (p.gen !== gen) {
      p.gen = gen;
      p.down = 0;
    }
    return Math.max(0, (opts.afterBytes ?? 0) - p.down);
  };

  /** Handles one chunk going `dir`; returns nothing: writes, drops, delays or kills as the mode says. */
  const onChunk = (p: Pair, dir: 'up' | 'down', chunk: Buffer) => {
    if (p.closed) return;
    const out = dir === 'up' ? p.upstream : p.client;
    if (p.poisoned || mode === 'drop') {
      if (!p.poisoned) stats.dropped++;
      p.poisoned = true;
      return;
    }
    if (dir === 'up' && opts.onlyRequests) {
      // A new request on this connection starts with its request line (bodies practically never do).
      const line = /^(GET|PUT|POST|DELETE|PATCH|HEAD|OPTIONS) \S+ HTTP\/1\.[01]/.exec(chunk.subarray(0, 2048).toString('latin1'));
      if (line) p.armed = opts.onlyRequests.test(line[0]);
    }
    if ((mode === 'reset' || mode === 'truncate') && (!opts.onlyRequests || p.armed)) {
      const left = budget(p);
      if (dir === 'up' && left === 0 && (opts.afterBytes ?? 0) === 0 && mode === 'reset') {
        stats.resets++;
        finish(p, 'reset');
        return;
      }
      if (dir === 'down') {
        const n = Math.min(left, chunk.length);
        if (n > 0) {
          out?.write(chunk.subarray(0, n));
          p.down += n;
          stats.bytesDown += n;
        }
        if (n < chunk.length) {
          if (mode === 'reset') stats.resets++;
          else stats.truncations++;
          // Let the partial bytes reach the client before the fault.
          setImmediate(() => finish(p, mode === 'reset' ? 'reset' : 'end'));
        }
        return;
      }
    }
    if (mode === 'delay' && (opts.delayMs ?? 0) > 0) {
      stats.delayedChunks++;
      const wait = opts.delayMs!;
      const key = dir === 'up' ? 'upChain' : 'downChain';
      p[key] = p[key].then(
        () =>
          new Promise<void>((r) =>
            setTimeout(() => {
              if (!p.closed && !p.poisoned) out?.write(chunk);
              r();
            }, wait),
          ),
      );
      return;
    }
    if (dir === 'up') stats.bytesUp += chunk.length;
    else stats.bytesDown += chunk.length;
    out?.write(chunk);
  };

  const server: Server = createServer((client) => {
    stats.connections++;
    const p: Pair = { client, upstream: null, gen, down: 0, poisoned: false, armed: false, closed: false, upChain: Promise.resolve(), downChain: Promise.resolve() };
    pairs.add(p);
    client.on('error', () => finish(p, 'destroy'));
    client.on('close', () => finish(p, 'destroy'));
    if (mode === 'drop') {
      // Accepted, never answered: no upstream at all.
      stats.dropped++;
      p.poisoned = true;
      client.on('data', () => {});
      return;
    }
    if (mode === 'reset' && (opts.afterBytes ?? 0) === 0 && !opts.onlyRequests) {
      stats.resets++;
      client.resetAndDestroy();
      pairs.delete(p);
      return;
    }
    const up = connect({ host: targetHost, port: target.port });
    p.upstream = up;
    up.on('error', () => finish(p, 'reset'));
    up.on('close', () => {
      // The server closed: pass the close on once queued (delayed) bytes are out.
      void p.downChain.then(() => finish(p, 'end'));
    });
    up.on('data', (c: Buffer) => onChunk(p, 'down', c));
    client.on('data', (c: Buffer) => onChunk(p, 'up', c));
    client.on('end', () => void p.upChain.then(() => up.end()));
  });
  server.on('error', () => {});
  await new Promise<void>((res, rej) => {
    server.once('error', rej);
    server.listen(0, host, () => res());
  });
  const port = (server.address() as { port: number }).port;
  return {
    url: `http://${host}:${port}`,
    port,
    get mode() {
      return mode;
    },
    stats,
    setMode(m, o = {}) {
      mode = m;
      opts = o;
      gen++;
    },
    cutAll() {
      for (const p of [...pairs]) finish(p, 'destroy');
    },
    async close() {
      for (const p of [...pairs]) finish(p, 'destroy');
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}
