import { connect, type Socket } from 'node:net';
import { request as httpsRequest, Agent as HttpsAgent } from 'node:https';
import { HTTPParser } from 'http-parser-js';
import { CofferError } from '../errors.js';

/** What receives a streamed answer: its status first, then its body piece by piece, then the end. */
export interface AnswerSink<T> {
  /** A view of a buffer that is reused as soon as this returns: copy what must be kept. */
  write(chunk: Buffer): void;
  end(): T;
}

/** How many connections may be open at once; more requests wait for one. */
const MAX_CONNECTIONS = 16;
/** An idle connection is closed after this (below servers' keep-alive timeouts: node's is 5 s). */
const IDLE_MS = 4_000;
/** Bytes per socket read: one buffer per connection, reused for every read. */
const READ_BUFFER_BYTES = 256 * 1024;

interface Exchange {
  parser: InstanceType<typeof HTTPParser>;
  /** Any byte of the answer seen (a failure before one, on a reused connection, is retried once). */
  answered: boolean;
  /** The whole answer parsed: whether the connection can carry another request, where it ended in the read. */
  complete: { reusable: boolean; endsAt: number } | null;
  /** `closed`: the connection failed under it (not a timeout, not a bad answer): maybe retried. */
  fail(err: Error, closed?: boolean): void;
  finish(): void;
}

/** One keep-alive connection; `exchange` is the request it is answering, if any. */
interface Connection {
  socket: Socket;
  exchange: Exchange | null;
  idleTimer: NodeJS.Timeout | null;
  reused: boolean;
  /** Counted in `open` (until it closes). */
  counted: boolean;
}

/** The error every transport failure becomes (the sync engine retries these with its backoff). */
export function serverUnreachable(code: string): CofferError {
  return new CofferError('offline', `server unreachable (${code})`);
}

/** A reused connection failed before any byte of its answer: the request may go again on a fresh one. */
class RetryOnFreshConnection extends Error {
  constructor(readonly failure: CofferError) {
    super(failure.message);
  }
}

/**
 * POSTs whose answers are big and streamed (batched block reads), over keep-alive HTTP/1.1
 * connections whose socket reads all go into one reused buffer per connection (net's `onread`).
 * node:http hands each 64 KiB socket read to JavaScript in a fresh buffer and copies every body
 * piece into another one: first touches of fresh memory (page faults) and those copies were a third
 * of a cold read's main thread (docs/performance.md). http-parser-js frames the answer (status,
 * headers, content-length or chunked) and hands out views of the reused buffer, which the sink
 * copies straight into the blocks' memory. https goes through node:https: the reused-buffer path
 * is for plain sockets only (not tried with TLS).
 */
export class StreamedHttpClient {
  private readonly url: URL;
  private readonly idle: Connection[] = [];
  private readonly waiting: Array<() => void> = [];
  private open = 0;
  private closed = false;
  private readonly httpsAgent: HttpsAgent | null;

  constructor(
    baseUrl: string,
    private readonly timeoutMs: number,
  ) {
    const url = URL.canParse(baseUrl) ? new URL(baseUrl) : null;
    if (url === null || (url.protocol !== 'http:' && url.protocol !== 'https:')) throw new CofferError('bad_request', `server URL must be an http or https URL: ${baseUrl}`);
    this.url = url;
    this.httpsAgent = this.url.protocol === 'https:' ? new HttpsAgent({ keepAlive: true, maxSockets: MAX_CONNECTIONS }) : null;
  }

  close(): void {
    this.closed = true;
    for (const c of [...this.idle]) this.discard(c);
    this.httpsAgent?.destroy();
  }

  /**
   * POSTs `body` to `path` (under the base URL's path) with `headers`; `sink(status)` receives the
   * answer. Connection failures, timeouts and malformed HTTP are CofferError('offline'); what the sink
   * throws fails the request as it is (and closes the connection).
   */
  async post<T>(path: string, headers: Readonly<Record<string, string>>, body: Buffer, sink: (status: number) => AnswerSink<T>): Promise<T> {
    const target = this.url.pathname.replace(/\/+$/, '') + path;
    for (const v of [target, ...Object.keys(headers), ...Object.values(headers)]) {
      // Values are ours (signed paths, base64), never the user's: a line break would be a bug.
      if (/[\r\n]/.test(v)) throw new CofferError('internal', 'a request line or header holds a line break');
    }
    if (this.httpsAgent) return this.postHttps(target, headers, body, sink);
    const head =
      `POST ${target} HTTP/1.1\r\nHost: ${this.url.host}\r\nConnection: keep-alive\r\n` +
      Object.entries(headers)
        .map(([k, v]) => `${k}: ${v}\r\n`)
        .join('') +
      `Content-Length: ${body.length}\r\n\r\n`;
    try {
      return await this.exchange(await this.acquire(false), head, body, sink);
    } catch (err) {
      // A reused connection the server closed meanwhile fails before any answer: once more, fresh.
      if (!(err instanceof RetryOnFreshConnection)) throw err;
      return this.exchange(await this.acquire(true), head, body, sink);
    }
  }

  private exchange<T>(conn: Connection, head: string, body: Buffer, sink: (status: number) => AnswerSink<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const parser = new HTTPParser(HTTPParser.RESPONSE);
      let out: AnswerSink<T> | null = null;
      let keepAlive = false;
      const timer = setTimeout(() => ex.fail(serverUnreachable('ETIMEDOUT')), this.timeoutMs);
      const settle = (): boolean => {
        if (conn.exchange !== ex) return false;
        conn.exchange = null;
        clearTimeout(timer);
        return true;
      };
      const ex: Exchange = {
        parser,
        answered: false,
        complete: null,
        fail: (err, closed = false) => {
          if (!settle()) return;
          this.discard(conn);
          reject(closed && conn.reused && !ex.answered && err instanceof CofferError ? new RetryOnFreshConnection(err) : err);
        },
        finish: () => {
          const reusable = ex.complete!.reusable;
          if (!settle()) return;
          let result: T;
          try {
            result = out!.end();
          } catch (err) {
            this.discard(conn);
            reject(err);
            return;
          }
          if (reusable) this.release(conn);
          else this.discard(conn);
          resolve(result);
        },
      };
      parser[HTTPParser.kOnHeadersComplete] = (info) => {
        if (ex.complete) return; // a next answer in the same read (stray): see received()
        if (info.statusCode < 200) throw serverUnreachable(`an informational ${info.statusCode} answer`); // never asked for (no Expect)
        keepAlive = info.shouldKeepAlive;
        out = sink(info.statusCode);
      };
      parser[HTTPParser.kOnBody] = (chunk, offset, length) => {
        if (ex.complete) return;
        out!.write(offset === 0 && length === chunk.length ? chunk : chunk.subarray(offset, offset + length));
      };
      parser[HTTPParser.kOnMessageComplete] = () => {
        // Where in this read the answer ended (http-parser-js's cursor): bytes after it mean the
        // connection is out of step, and it is not reused.
        ex.complete ??= { reusable: keepAlive, endsAt: (parser as unknown as { offset: number }).offset };
      };
      conn.exchange = ex;
      conn.socket.cork();
      conn.socket.write(head);
      conn.socket.write(body);
      conn.socket.uncork();
    });
  }

  /** The bytes of one socket read (a view valid until this returns), for the request being answered. */
  private received(conn: Connection, bytes: number, buf: Buffer): void {
    const ex = conn.exchange;
    if (!ex) return this.discard(conn); // bytes nobody asked for: the connection is out of step
    ex.answered = true;
    let r: number | Error;
    try {
      r = ex.parser.execute(buf, 0, bytes);
    } catch (err) {
      return ex.fail(err instanceof Error ? err : new Error(String(err))); // the sink's, as it is
    }
    if (ex.complete) {
      // Once the answer is whole, the parser starts on a next one and may report that (it counts the
      // whole read as header bytes): nothing more was asked for, so only stray bytes matter.
      if (ex.complete.endsAt !== bytes) ex.complete.reusable = false;
      ex.finish();
    } else if (r instanceof Error) ex.fail(serverUnreachable(`malformed HTTP answer: ${r.message}`));
  }

  /** The server closed its side: an answer framed by the connection's end completes here. */
  private ended(conn: Connection): void {
    const ex = conn.exchange;
    if (!ex) return this.discard(conn);
    let r: void | Error;
    try {
      r = ex.parser.finish();
    } catch (err) {
      return ex.fail(err instanceof Error ? err : new Error(String(err)));
    }
    if (r === undefined && ex.complete) {
      ex.complete.reusable = false;
      ex.finish();
    } else ex.fail(serverUnreachable('answer cut short'), true);
  }

  private async acquire(fresh: boolean): Promise<Connection> {
    for (;;) {
      if (this.closed) throw serverUnreachable('connection closed');
      const c = fresh ? undefined : this.idle.pop();
      if (c) {
        if (c.idleTimer) clearTimeout(c.idleTimer);
        c.idleTimer = null;
        c.reused = true;
        c.socket.ref();
        return c;
      }
      if (this.open < MAX_CONNECTIONS) return this.connect();
      await new Promise<void>((res) => this.waiting.push(res));
    }
  }

  private connect(): Promise<Connection> {
    this.open++;
    return new Promise<Connection>((resolve, reject) => {
      const readBuffer = Buffer.allocUnsafeSlow(READ_BUFFER_BYTES);
      const socket = connect({
        host: this.url.hostname.replace(/^\[|\]$/g, ''),
        port: Number(this.url.port || 80),
        noDelay: true,
        onread: {
          buffer: readBuffer,
          callback: (n) => {
            this.received(conn, n, readBuffer);
            return true;
          },
        },
      });
      const conn: Connection = { socket, exchange: null, idleTimer: null, reused: false, counted: true };
      let connected = false;
      socket.once('connect', () => {
        connected = true;
        resolve(conn);
      });
      socket.on('error', (err: NodeJS.ErrnoException) => {
        if (connected) conn.exchange?.fail(serverUnreachable(err.code ?? err.message), true);
        else {
          this.discard(conn);
          reject(serverUnreachable(err.code ?? err.message));
        }
      });
      socket.on('end', () => this.ended(conn));
      socket.on('close', () => {
        conn.exchange?.fail(serverUnreachable('ECONNRESET'), true);
        this.forget(conn);
      });
    });
  }

  private release(conn: Connection): void {
    if (this.closed || conn.socket.destroyed) return this.discard(conn);
    conn.idleTimer = setTimeout(() => this.discard(conn), IDLE_MS).unref();
    conn.socket.unref(); // an idle connection does not keep a finished command alive
    this.idle.push(conn);
    this.waiting.shift()?.();
  }

  private discard(conn: Connection): void {
    conn.socket.destroy();
    this.forget(conn);
  }

  /** It no longer counts (once per connection), and a waiting request may open one. */
  private forget(conn: Connection): void {
    if (conn.idleTimer) clearTimeout(conn.idleTimer);
    conn.idleTimer = null;
    const i = this.idle.indexOf(conn);
    if (i >= 0) this.idle.splice(i, 1);
    if (!conn.counted) return;
    conn.counted = false;
    this.open--;
    this.waiting.shift()?.();
  }

  /** TLS: node:https, its chunks passed on as they come. */
  private postHttps<T>(target: string, headers: Readonly<Record<string, string>>, body: Buffer, sink: (status: number) => AnswerSink<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const req = httpsRequest(
        { host: this.url.hostname, port: this.url.port || 443, path: target, method: 'POST', agent: this.httpsAgent!, headers: { ...headers, 'content-length': String(body.length) } },
        (res) => {
          const s = sink(res.statusCode ?? 0);
          let ended = false;
          res.on('data', (chunk: Buffer) => {
            try {
              s.write(chunk);
            } catch (err) {
              reject(err);
              req.destroy();
            }
          });
          res.on('end', () => {
            ended = true;
            try {
              resolve(s.end());
            } catch (err) {
              reject(err);
            }
          });
          res.on('close', () => {
            if (!ended) reject(serverUnreachable('answer cut short'));
          });
        },
      );
      req.setTimeout(this.timeoutMs, () => req.destroy(Object.assign(new Error('timeout'), { code: 'ETIMEDOUT' })));
      req.on('error', (err: NodeJS.ErrnoException) => reject(serverUnreachable(err.code ?? err.message)));
      req.end(body);
    });
  }
}
