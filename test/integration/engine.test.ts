import { randomBytes } from 'node:crypto';
import { constants as fsc } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { CofferError } from '../../src/errors.js';
import { bootstrapClientOrg, newWorkspace, openSession } from '../helpers/client.js';
import { startTestServer } from '../helpers/server.js';
import { readEngineFile, writeEngineFile } from '../helpers/engine-io.js';

const RW = fsc.O_RDWR;

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
  await writeEngineFile(e, '/a/b/big.bin', big);
  await writeEngineFile(e, '/small.txt', Buffer.from('hello coffer\n'));
  t.same((await e.stat('/a/b/big.bin')).size, big.length);
  t.ok((await readEngineFile(e, '/a/b/big.bin')).equals(big), 'reads back before sync');
  t.same((await e.readdir('/')).sort(), ['a', 'small.txt']);

  // Sparse write + truncate semantics.
  const fh = await e.create('/sparse', 0o600, { flags: RW });
  await e.write(fh, Buffer.from('end'), 3, 2 * 512 * 1024 + 10);
  await e.ftruncate(fh, 2 * 512 * 1024 + 12);
  await e.release(fh);
  const sparse = await readEngineFile(e, '/sparse');
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
  t.ok((await readEngineFile(e2, '/a/b/big.bin')).equals(big), 'a fresh store reads the file from the server');
  t.equal((await readEngineFile(e2, '/a/renamed.txt')).toString(), 'hello coffer\n');
  t.equal((await readEngineFile(e2, '/sparse')).length, 2 * 512 * 1024 + 12);
  await t.rejects(e2.stat('/nope'), new CofferError('not_found', 'no such file or folder'));
  await s2.close();
});
