import { once } from 'node:events';
import { constants as fsc } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { createServer, request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { bootstrapClientOrg, newWorkspace, openSession } from '../helpers/client.js';
import { startTestServer } from '../helpers/server.js';

const ENTRIES = 10_000;

t.test(`listing a folder of ${ENTRIES} entries fetches their manifests in batches`, async (t) => {
  const server = await startTestServer({ teardown: (fn) => t.teardown(fn) });
  const dir = await mkdtemp(join(tmpdir(), 'coffer-large-'));
  const org = await bootstrapClientOrg(server, 'big', dir);
  await newWorkspace(org.device, 'Docs');
  const writer = await openSession(org.device, 'Docs');
  await writer.engine.mkdir('/many', 0o755);
  // Closed together at the end: the folder manifest is then saved once, not once per file.
  const handles: number[] = [];
  for (let i = 0; i < ENTRIES; i++) {
    // Empty files: what is measured is manifests, not blocks (and 10,000 block uploads would only slow the test).
    handles.push(await writer.engine.create(`/many/f${i}.txt`, 0o644, { flags: fsc.O_RDWR }));
  }
  for (const fh of handles) await writer.engine.release(fh);
  await writer.sync.drain(300_000);
  await writer.close();

  // A counting proxy in front of the server: what a fresh device asks for while listing.
  const target = new URL(server.url);
  const seen: string[] = [];
  const proxy = createServer((req, res) => {
    seen.push(`${req.method} ${req.url?.split('?')[0]}`);
    const up = httpRequest({ host: target.hostname, port: target.port, path: req.url, method: req.method, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode ?? 502, r.headers);
      r.pipe(res);
    });
    req.pipe(up);
  });
  proxy.listen(0, '127.0.0.1');
  await once(proxy, 'listening');
  t.teardown(() => proxy.close());
  const reader = await openSession({ ...org.device, serverUrl: `http://127.0.0.1:${(proxy.address() as { port: number }).port}` }, 'Docs');
  t.teardown(() => reader.close());
  seen.length = 0;
  const names = await reader.engine.readdir('/many');
  t.equal(names.length, ENTRIES, 'every entry listed');
  let files = 0;
  for (const n of names) if ((await reader.engine.stat(`/many/${n}`)).kind === 'file') files++; // what `ls -l` does next
  t.equal(files, ENTRIES, 'and every entry stat-ed');
  const batched = seen.filter((s) => s.endsWith('/vlobs-read')).length;
  const single = seen.filter((s) => /\/vlobs\/[0-9a-f]{32}$/.test(s)).length;
  t.ok(batched >= ENTRIES / 500 && batched <= ENTRIES / 500 + 2, `${batched} batched requests for ${ENTRIES} entries`);
  t.ok(single <= 2, `no request per entry (${single} single reads)`);
});
