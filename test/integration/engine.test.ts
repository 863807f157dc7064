import { randomBytes } from 'node:crypto';
import { constants as fsc } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import type { WorkspaceEngine } from '../../src/client/workspace/engine.js';
import { CofferError } from '../../src/errors.js';
import { bootstrapClientOrg, newWorkspace, openSession } from '../helpers/client.js';
import { startTestServer } from '../helpers/server.js';

const RW = fsc.O_RDWR;

async function writeFile(e: WorkspaceEngine, path: string, data: Buffer, chunk = 128 * 1024): Promise<void> {
  const fh = await e.create(path, 0o644, { flags: RW });
  for (let off = 0; off < data.length; off += chunk) {
    const piece = data.subarray(off, off + chunk);
    await e.write(fh, Buffer.from(piece), piece.length, off);
  }
  await e.flush(fh);
  await e.release(fh);
}

async function readFile(e: WorkspaceEngine, path: string): Promise<Buffer> {
  const st = await e.stat(path);
  const fh = await e.open(path, { flags: fsc.O_RDONLY });
  const out = Buffer.alloc(st.size);
  let off = 0;
  while (off < st.size) {
    const n = await e.read(fh, out.subarray(off), Math.min(128 * 1024, st.size - off), off);
    if (n === 0) break;
    off += n;
  }
  await e.release(fh);
  return out.subarray(0, off);
}

t.test('engine over a real server: write, sync, read back on a fresh device store', async (t) => {
  const server = await startTestServer({ teardown: (fn) => t.teardown(fn) });
  const dir = await mkdtemp(join(tmpdir(), 'coffer-engine-'));
  const org = await bootstrapClientOrg(server, 'acme', dir);
  await newWorkspace(org.device, 'Docs');
  const s1 = await openSession(org.device, 'Docs');
  const e = s1.engine;
  const big = randomBytes(3 * 512 * 1024 + 12345);
  await e.mkdir('/a', 0o755);
  await e.mkdir('/a/b', 0o755);
  await writeFile(e, '/a/b/big.bin', big);
  await writeFile(e, '/small.txt', Buffer.from('hello coffer\n'));
  t.same((await e.stat('/a/b/big.bin')).size, big.length);
  t.ok((await readFile(e, '/a/b/big.bin')).equals(big), 'reads back before sync');
  t.same((await e.readdir('/')).sort(), ['a', 'small.txt']);

  // Sparse write + truncate semantics.
  const fh = await e.create('/sparse', 0o600, { flags: RW });
  await e.write(fh, Buffer.from('end'), 3, 2 * 512 * 1024 + 10);
  await e.ftruncate(fh, 2 * 512 * 1024 + 12);
  await e.release(fh);
  const sparse = await readFile(e, '/sparse');
  t.equal(sparse.length, 2 * 512 * 1024 + 12);
  t.equal(sparse.subarray(0, 2 * 512 * 1024 + 10).some((b) => b !== 0), false, 'hole reads as zeros');
  t.equal(sparse.subarray(-2).toString(), 'en');

  await e.rename('/small.txt', '/a/renamed.txt');
  await t.rejects(e.stat('/small.txt'), { code: 'not_found' });
  await t.rejects(e.rmdir('/a'), { code: 'not_empty' });
  await s1.sync.drain(30_000);
  t.same(s1.store.pendingStats(), { manifests: 0, blocks: 0, bytes: 0 }, 'everything uploaded');
  await s1.close();

  const s2 = await openSession(org.device, 'Docs');
  const e2 = s2.engine;
  t.ok((await readFile(e2, '/a/b/big.bin')).equals(big), 'a fresh store reads the file from the server');
  t.equal((await readFile(e2, '/a/renamed.txt')).toString(), 'hello coffer\n');
  t.equal((await readFile(e2, '/sparse')).length, 2 * 512 * 1024 + 12);
  await t.rejects(e2.stat('/nope'), new CofferError('not_found', 'no such file or folder'));
  await s2.close();
});
