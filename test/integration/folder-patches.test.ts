import { constants as fsc } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import t from 'tap';
import { readEngineFile } from '../helpers/engine-io.js';
import { localStoreFiles } from '../helpers/mount.js';
import { bootstrapClientOrg, newWorkspace, openSession, sessionOnFreshServer } from '../helpers/client.js';
import { startTestServer } from '../helpers/server.js';

const RW = fsc.O_RDWR;

t.test('a folder changed one close at a time is saved as patches, and reads back the same', async (t) => {
  const server = await startTestServer({ teardown: (fn) => t.teardown(fn) });
  const dir = await mkdtemp(join(tmpdir(), 'coffer-patches-'));
  const org = await bootstrapClientOrg(server, 'acme', dir);
  await newWorkspace(org.device, 'Docs');
  const dataRoot = await mkdtemp(join(tmpdir(), 'coffer-patches-data-'));
  const s = await openSession(org.device, 'Docs', dataRoot);
  const e = s.engine;
  await e.mkdir('/d', 0o755);
  const folderId = (await e.stat('/d')).id;
  const N = 300;
  for (let i = 0; i < N; i++) {
    const fh = await e.create(`/d/f${i}`, 0o644, { flags: RW });
    await e.write(fh, Buffer.from(`file ${i}\n`), `file ${i}\n`.length, 0);
    await e.flush(fh); // close(2): durable in the local store now
    await e.release(fh);
  }
  await e.rename('/d/f1', '/d/g1');
  await e.rename('/d/f3', '/d/f4'); // over an existing name
  await e.unlink('/d/f2');
  await e.mkdir('/d/sub', 0o755);
  await e.rename('/d/f5', '/d/sub/f5'); // to another folder
  await e.rmdir('/d/sub').catch(() => {}); // not empty: refused
  const fh = await e.create('/d/last', 0o644, { flags: RW });
  await e.flush(fh);
  await e.release(fh);

  // What a crash right now would leave: the folder as stored (manifest + patches), read back.
  const stored = s.store.loadManifest(folderId);
  t.ok(stored, 'the folder is stored');
  t.ok(stored!.patches > 0, `saved as patches (${stored!.patches} since the last whole save)`);
  const live = (await e.readdir('/d')).sort();
  const m = stored!.manifest;
  t.equal(m.type, 'folder');
  if (m.type === 'folder') t.same(Object.keys(m.children).sort(), live, 'the stored folder has the same names as the live one');
  t.notOk(live.includes('f1') || live.includes('f2') || live.includes('f3') || live.includes('f5'), 'removed names are gone');
  t.ok(live.includes('g1') && live.includes('sub') && live.includes('last'));
  t.equal(live.length, N - 4 + 3);

  // A fresh session on the same store (as after a restart) sees the same tree, and syncs it.
  await s.sync.drain(120_000);
  await s.close();
  const s2 = await openSession(org.device, 'Docs', dataRoot);
  t.same((await s2.engine.readdir('/d')).sort(), live);
  t.same(await s2.engine.readdir('/d/sub'), ['f5']);
  await s2.close();
  // And a device with an empty store gets it from the server.
  const s3 = await openSession(org.device, 'Docs');
  t.same((await s3.engine.readdir('/d')).sort(), live);
  const h = await s3.engine.open('/d/g1', { flags: fsc.O_RDONLY });
  const buf = Buffer.alloc(64);
  const n = await s3.engine.read(h, buf, 64, 0);
  t.equal(buf.subarray(0, n).toString(), 'file 1\n');
  await s3.engine.release(h);
  await s3.close();
});

t.test('creating files one close at a time stays linear in the folder size', async (t) => {
  const s = await sessionOnFreshServer(t);
  const e = s.engine;
  await e.mkdir('/many', 0o755);
  const batch = async (from: number, n: number) => {
    const t0 = performance.now();
    for (let i = from; i < from + n; i++) {
      const fh = await e.create(`/many/f${i}`, 0o644, { flags: RW });
      await e.flush(fh);
      await e.release(fh);
    }
    return performance.now() - t0;
  };
  await batch(0, 500); // warm up
  const first = await batch(500, 1000);
  await batch(1500, 4000);
  const last = await batch(5500, 1000);
  // Whole rewrites would make the last thousand (folder of ~6,000) ~6x slower than the first (~1,000).
  t.ok(last < first * 3 + 500, `1,000 creates at ~1,000 entries: ${first.toFixed(0)} ms; at ~6,000: ${last.toFixed(0)} ms`);
});

t.test("a small file's close commits its block and the manifests in one transaction", async (t) => {
  const server = await startTestServer({ teardown: (fn) => t.teardown(fn) });
  const org = await bootstrapClientOrg(server, 'acme', await mkdtemp(join(tmpdir(), 'coffer-org-')));
  await newWorkspace(org.device, 'Docs');
  const dataRoot = await mkdtemp(join(tmpdir(), 'coffer-close-data-'));
  const s = await openSession(org.device, 'Docs', dataRoot);
  t.teardown(() => s.close());
  const e = s.engine;
  const [file] = await localStoreFiles(dataRoot);
  const observer = new Database(file!, { readonly: true });
  t.teardown(() => observer.close());
  const count = (sql: string): number => (observer.prepare(sql).get() as { n: number }).n;
  const commits = { saves: 0, blocks: 0 };
  const store = s.store;
  const save = store.saveManifests.bind(store);
  const put = store.putDirtyBlock.bind(store);
  store.saveManifests = (...args) => {
    commits.saves++;
    save(...args);
  };
  store.putDirtyBlock = (...args) => {
    commits.blocks++;
    return put(...args);
  };

  const fh = await e.create('/small.txt', 0o644, { flags: RW });
  await e.write(fh, Buffer.from('hello\n'), 6, 0);
  const id = (await e.fstat(fh)).id;
  const before = count('SELECT COUNT(*) AS n FROM block_data');
  commits.saves = 0;
  await e.flush(fh); // close(2)
  t.same(commits, { saves: 1, blocks: 0 }, 'one save, no transaction of its own for the block');
  t.equal(count('SELECT COUNT(*) AS n FROM block_data'), before + 1, 'the block is committed');
  t.equal(count(`SELECT COUNT(*) AS n FROM manifests WHERE id = '${id}'`), 1, 'with the file manifest');
  await e.release(fh);
  t.equal(commits.saves, 1, 'release has nothing left to save');
  t.equal((await readEngineFile(e, '/small.txt')).toString(), 'hello\n');

  // A close whose save fails (disk full) reports it; the staged block and the manifest stay pending
  // and the background save (scheduled by the seal's change) commits them, together. Offline and
  // idle first: nothing else saves.
  await s.sync.drain(60_000);
  await server.close();
  await new Promise((r) => setTimeout(r, 500));
  let fail = true;
  store.saveManifests = (...args) => {
    if (fail) {
      fail = false;
      throw Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL' });
    }
    save(...args);
  };
  const fh2 = await e.create('/second.txt', 0o644, { flags: RW });
  await e.write(fh2, Buffer.from('again\n'), 6, 0);
  const id2 = (await e.fstat(fh2)).id;
  const blocks = count('SELECT COUNT(*) AS n FROM block_data');
  await t.rejects(e.flush(fh2), { code: 'SQLITE_FULL' }, 'the close reports the failure');
  t.equal(count('SELECT COUNT(*) AS n FROM block_data'), blocks, 'nothing committed');
  for (let i = 0; i < 50 && count(`SELECT COUNT(*) AS n FROM manifests WHERE id = '${id2}'`) === 0; i++) await new Promise((r) => setTimeout(r, 100));
  t.equal(count(`SELECT COUNT(*) AS n FROM manifests WHERE id = '${id2}'`), 1, 'the retry saved the manifest');
  t.equal(count('SELECT COUNT(*) AS n FROM block_data'), blocks + 1, 'and its block, with it');
  await e.release(fh2);
  t.equal((await readEngineFile(e, '/second.txt')).toString(), 'again\n');
});
