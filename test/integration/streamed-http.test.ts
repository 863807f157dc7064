/**
 * StreamedHttpClient (the big streamed answers of batched block reads) against real sockets: node's
 * own HTTP server for well-formed answers (content-length, chunked, framed by the connection's end),
 * and raw TCP servers for what a broken or hostile server or proxy sends.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer as createTcpServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { CofferError } from '../../src/errors.js';
import { StreamedHttpClient, type AnswerSink } from '../../src/client/streamed-http.js';

/** Gathers the answer, copying each piece (they are views of a reused buffer). */
function gather(status: number): AnswerSink<{ status: number; body: Buffer; pieces: number }> {
  const parts: Buffer[] = [];
  return {
    write: (chunk) => void parts.push(Buffer.from(chunk)),
    end: () => ({ status, body: Buffer.concat(parts), pieces: parts.length }),
  };
}

async function listen(server: Server | ReturnType<typeof createHttpServer>): Promise<string> {
  await new Promise<void>((res) => server.listen(0, '127.0.0.1', res));
  const addr = server.address();
  if (addr === null || typeof addr === 'string') throw new Error('no port');
  return `http://127.0.0.1:${addr.port}`;
}

/** A node HTTP server answering with `handler`; counts the connections it accepted. */
async function httpServer(t: Test, handler: (req: IncomingMessage, body: Buffer, res: ServerResponse) => void): Promise<{ url: string; connections: () => number }> {
  let connections = 0;
  const server = createHttpServer((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (c: Buffer) => parts.push(c));
    req.on('end', () => handler(req, Buffer.concat(parts), res));
  });
  server.on('connection', () => connections++);
  const url = await listen(server);
  t.teardown(() => new Promise<void>((res) => server.close(() => res())));
  t.teardown(() => server.closeAllConnections());
  return { url, connections: () => connections };
}

/** A raw TCP server: `onRequest(socket, n)` for the n-th request head seen on any connection. */
async function tcpServer(t: Test, onRequest: (socket: Socket, n: number) => void): Promise<{ url: string; connections: () => number }> {
  let connections = 0;
  let requests = 0;
  const sockets = new Set<Socket>();
  const server = createTcpServer((socket) => {
    connections++;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined); // the client closing a connection it gave up on
    let seen = '';
    socket.on('data', (d: Buffer) => {
      seen += d.toString('latin1');
      // Each request here is a head plus a 2-byte body ("{}").
      while (seen.includes('\r\n\r\n') && seen.length >= seen.indexOf('\r\n\r\n') + 6) {
        seen = seen.slice(seen.indexOf('\r\n\r\n') + 6);
        onRequest(socket, ++requests);
      }
    });
  });
  const url = await listen(server);
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    return new Promise<void>((res) => server.close(() => res()));
  });
  return { url, connections: () => connections };
}

async function rejection(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected a rejection');
}

const JSON_HEADERS = { 'content-type': 'application/json' };
const BODY = Buffer.from('{}');

// First: sockets of other tests, still closing, would blur the count.
t.test('an idle kept-alive connection does not keep the process alive; a busy one does', async (t) => {
  const srv = await tcpServer(t, (socket) => {
    socket.unref(); // only the client's side is looked at
    socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
  });
  const sockets = (): number => process.getActiveResourcesInfo().filter((r) => r === 'TCPSocketWrap').length;
  const client = new StreamedHttpClient(srv.url, 10_000);
  t.teardown(() => client.close());
  const before = sockets();
  let during = -1;
  const answer = client.post('/', JSON_HEADERS, BODY, (status) => {
    during = sockets();
    return gather(status);
  });
  t.equal((await answer).body.toString(), 'ok');
  t.equal(during, before + 1, 'while the answer comes, the connection counts');
  t.equal(sockets(), before, 'once idle, it does not');
  t.equal((await client.post('/', JSON_HEADERS, BODY, gather)).body.toString(), 'ok', 'and it is still used');
  t.equal(srv.connections(), 1);
});

t.test('content-length, chunked and end-framed answers arrive byte-exact, over one kept-alive connection', async (t) => {
  const big = randomBytes(5 * 1024 * 1024 + 17);
  const srv = await httpServer(t, (req, body, res) => {
    t.equal(body.toString(), '{}', 'the request body arrives');
    t.equal(req.headers['content-type'], 'application/json', 'headers arrive');
    if (req.url === '/base/sized') {
      res.writeHead(200, { 'content-length': big.length });
      res.end(big);
    } else if (req.url === '/base/chunked') {
      res.writeHead(201); // no length: node sends it chunked
      for (let i = 0; i < big.length; i += 300_001) res.write(big.subarray(i, i + 300_001));
      res.end();
    } else {
      res.writeHead(404, { 'content-length': 2 });
      res.end('no');
    }
  });
  const client = new StreamedHttpClient(`${srv.url}/base/`, 10_000);
  t.teardown(() => client.close());
  const sized = await client.post('/sized', JSON_HEADERS, BODY, gather);
  t.equal(sized.status, 200);
  t.ok(sized.body.equals(big), 'content-length body byte-exact');
  t.ok(sized.pieces > 1, `delivered in pieces as it came (${sized.pieces})`);
  const chunked = await client.post('/chunked', JSON_HEADERS, BODY, gather);
  t.equal(chunked.status, 201);
  t.ok(chunked.body.equals(big), 'chunked body byte-exact');
  const missing = await client.post('/other', JSON_HEADERS, BODY, gather);
  t.same([missing.status, missing.body.toString()], [404, 'no'], 'an error status goes to the sink too');
  t.equal(srv.connections(), 1, 'the three requests used one connection');

  const closing = await tcpServer(t, (socket) => socket.end('HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end'));
  const c2 = new StreamedHttpClient(closing.url, 10_000);
  t.teardown(() => c2.close());
  const framed = await c2.post('/x', JSON_HEADERS, BODY, gather);
  t.equal(framed.body.toString(), 'until the end', 'an answer framed by the connection closing');
});

t.test('a kept-alive connection the server dropped is retried once on a fresh one', async (t) => {
  const srv = await tcpServer(t, (socket, n) => {
    if (n === 2) socket.destroy(); // the second request: closed without an answer
    else socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
  });
  const client = new StreamedHttpClient(srv.url, 10_000);
  t.teardown(() => client.close());
  t.equal((await client.post('/a', JSON_HEADERS, BODY, gather)).body.toString(), 'ok');
  t.equal((await client.post('/b', JSON_HEADERS, BODY, gather)).body.toString(), 'ok', 'answered on the second try');
  t.equal(srv.connections(), 2, 'the retry opened a fresh connection');
});

t.test('broken answers are offline errors; the connection is not reused', async (t) => {
  const answers: Record<number, (s: Socket) => void> = {
    1: (s) => s.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'),
    2: (s) => s.write('SMTP ready\r\n\r\n'),
    3: (s) => s.end('HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly a part'),
    4: (s) => s.write(`HTTP/1.1 200 OK\r\nX-Big: ${'a'.repeat(400 * 1024)}\r\n\r\n`),
    5: (s) => s.write('HTTP/1.1 100 Continue\r\n\r\n'),
    6: () => undefined, // never answers
    7: (s) => s.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n'), // stray bytes after
    8: (s) => s.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'),
  };
  const srv = await tcpServer(t, (socket, n) => answers[n]!(socket));
  const client = new StreamedHttpClient(srv.url, 500);
  t.teardown(() => client.close());
  t.equal((await client.post('/', JSON_HEADERS, BODY, gather)).body.toString(), 'ok', 'a good answer first (connection 1)');
  const cases: Array<[string, RegExp]> = [
    ['not HTTP', /malformed HTTP answer/],
    ['cut short', /answer cut short/],
    ['headers past the limit', /malformed HTTP answer: max header size exceeded/],
    ['an informational answer', /informational 100/],
    ['no answer', /ETIMEDOUT/],
  ];
  for (const [what, message] of cases) {
    const err = await rejection(client.post('/', JSON_HEADERS, BODY, gather));
    t.ok(err instanceof CofferError && err.code === 'offline', `${what}: an offline error (${err.message})`);
    t.match(err.message, message, `${what}: says what happened`);
  }
  t.equal(srv.connections(), 5, 'each broken answer closed its connection (the first one was kept for the second request)');
  t.equal((await client.post('/', JSON_HEADERS, BODY, gather)).body.toString(), 'ok', 'stray bytes after an answer: the answer stands');
  t.equal((await client.post('/', JSON_HEADERS, BODY, gather)).body.toString(), 'ok');
  t.equal(srv.connections(), 7, 'but its connection was not reused');
});

t.test('what the sink throws fails that request as it is; the next one works', async (t) => {
  const srv = await httpServer(t, (_req, _body, res) => {
    res.writeHead(200, { 'content-length': 4 });
    res.end('data');
  });
  const client = new StreamedHttpClient(srv.url, 10_000);
  t.teardown(() => client.close());
  const refusing = (): AnswerSink<never> => ({
    write: () => {
      throw new CofferError('integrity', 'refused by the sink');
    },
    end: () => {
      throw new Error('unreachable');
    },
  });
  const err = await rejection(client.post('/', JSON_HEADERS, BODY, refusing));
  t.ok(err instanceof CofferError && err.code === 'integrity', 'the sink error, unchanged');
  t.equal((await client.post('/', JSON_HEADERS, BODY, gather)).body.toString(), 'data');
  t.equal(srv.connections(), 2, 'the failed exchange closed its connection');
});

t.test('at most 16 connections at once; the rest wait for one', async (t) => {
  let seen = 0;
  const held: ServerResponse[] = [];
  const srv = await httpServer(t, (_req, _body, res) => {
    // The first 16 are held until all 16 are in: the 8 others can only come on connections they free.
    if (++seen > 16) return void res.end('done');
    held.push(res);
    if (held.length === 16) setTimeout(() => held.forEach((r) => r.end('done')), 50);
  });
  const client = new StreamedHttpClient(srv.url, 10_000);
  t.teardown(() => client.close());
  const all = await Promise.all(Array.from({ length: 24 }, () => client.post('/', JSON_HEADERS, BODY, gather)));
  t.ok(
    all.every((r) => r.body.toString() === 'done'),
    'all 24 answered',
  );
  t.equal(srv.connections(), 16, 'over no more than 16 connections');
});

t.test('no server: an offline error', async (t) => {
  const srv = createTcpServer();
  const url = await listen(srv);
  await new Promise<void>((res) => srv.close(() => res()));
  const client = new StreamedHttpClient(url, 2_000);
  t.teardown(() => client.close());
  const err = await rejection(client.post('/', JSON_HEADERS, BODY, gather));
  t.ok(err instanceof CofferError && err.code === 'offline', err.message);
  t.match(err.message, /ECONNREFUSED/);
  for (const bad of ['ftp://example.org', 'localhost:8080', 'not a url']) {
    t.throws(() => new StreamedHttpClient(bad, 1000), { code: 'bad_request', message: /must be an http or https URL/ }, `${bad}: refused at once`);
  }
});

t.test('https: answers through node:https (certificate checked)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'coffer-tls-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost', '-days', '1', '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem')], { stdio: 'ignore' });
  // The certificate must be trusted when node starts (NODE_EXTRA_CA_CERTS): a child process does the client side.
  const script = `
    import { createServer } from 'node:https';
    import { readFileSync } from 'node:fs';
    import { StreamedHttpClient } from ${JSON.stringify(new URL('../../src/client/streamed-http.ts', import.meta.url).href)};
    const body = Buffer.alloc(3 * 1024 * 1024, 5);
    const server = createServer({ key: readFileSync(${JSON.stringify(join(dir, 'key.pem'))}), cert: readFileSync(${JSON.stringify(join(dir, 'cert.pem'))}) }, (req, res) => {
      req.resume();
      req.on('end', () => { res.writeHead(200, { 'content-length': body.length }); res.end(body); });
    });
    await new Promise((r) => server.listen(0, '127.0.0.1', r));
    const client = new StreamedHttpClient('https://localhost:' + server.address().port, 10000);
    const parts = [];
    const got = await client.post('/x', { 'content-type': 'application/json' }, Buffer.from('{}'), (status) => ({ write: (c) => parts.push(Buffer.from(c)), end: () => status }));
    client.close();
    server.close();
    process.stdout.write(JSON.stringify({ status: got, same: Buffer.concat(parts).equals(body) }));
  `;
  const out = execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { env: { ...process.env, NODE_EXTRA_CA_CERTS: join(dir, 'cert.pem') }, encoding: 'utf8' });
  t.same(JSON.parse(out), { status: 200, same: true }, 'the body arrives byte-exact over TLS');
});
