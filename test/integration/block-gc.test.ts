/**
 * Block garbage collection, end to end on every backend (sqlite+folder, postgres+s3,
 * postgres+swift; real services from test/helpers/services.ts):
 *
 * - who may release: owner and manager only; a reader, a contributor or a member of another
 *   realm is refused; a block id of another realm is refused (all or nothing);
 * - a real workspace (client library, real sync): the client keeps every block referenced by a
 *   version within the history window, releases the rest; `coffer server gc` (the CLI) deletes
 *   released blocks past the retention from the block store and the metadata; files still read;
 * - dry runs (client and server) change nothing; a released block uploaded again is kept.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import t from 'tap';
import { ServerConnection } from '../../src/client/connection.js';
import { workspaceGc } from '../../src/client/gc.js';
import { entryHistory, openRemoteView } from '../../src/client/history.js';
import { sodiumReady } from '../../src/crypto/index.js';
import { newId } from '../../src/model/ids.js';
import { ROUTES, routePath } from '../../src/protocol/schemas.js';
import { parseDuration } from '../../src/server/gc.js';
import { startServer } from '../../src/server/main.js';
import { openStores } from '../../src/server/storage.js';
import { bootstrapClientOrg, newWorkspace, openSession } from '../helpers/client.js';
import { addUser, bootstrapOrg, createRealm, mustGrant } from '../helpers/org.js';
import { request, startTestServer, type TestServer } from '../helpers/server.js';
import { startPostgres, startS3, startSwift } from '../helpers/services.js';
import { readEngineFile, writeEngineFile } from '../helpers/engine-io.js';

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true';
await sodiumReady();
const CLI = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url));

const [pgCluster, s3, swift] = await Promise.all([startPostgres(), startS3(), startSwift()]);
t.teardown(() => Promise.all([pgCluster.stop(), s3.stop(), swift.stop()]).then(() => undefined));

interface Backend {
  name: string;
  fresh(): Promise<{ metadataUrl?: string; blocksUrl?: string }>;
}
const backends: Backend[] = [
  { name: 'sqlite+folder', fresh: async () => ({}) },
  { name: 'postgres+s3', fresh: async () => ({ metadataUrl: await pgCluster.createDatabase(), blocksUrl: await s3.createBucket() }) },
  { name: 'postgres+swift', fresh: async () => ({ metadataUrl: await pgCluster.createDatabase(), blocksUrl: await swift.createContainer() }) },
];

/** `coffer server gc` on the server's stores (the CLI, as an operator runs it). */
async function serverGc(server: TestServer, urls: { metadataUrl?: string; blocksUrl?: string }, args: string[]): Promise<{ code: number; report: { dryRun: boolean; blocks: Array<{ blockId: string; realmId: string }>; bytes: number; failed: unknown[] } }> {
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', CLI, 'server', 'gc', '--data', server.dataDir, '--json', ...args, ...(urls.metadataUrl ? ['--metadata', urls.metadataUrl] : []), ...(urls.blocksUrl ? ['--blocks', urls.blocksUrl] : [])],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, COFFER_LOG_LEVEL: 'warn' } },
  );
  let out = '';
  let err = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr.on('data', (c: Buffer) => (err += c.toString()));
  const code = await new Promise<number>((resolve) => child.once('exit', (c) => resolve(c ?? -1)));
  if (code !== 0) throw new Error(`coffer server gc exited ${code}: ${err}${out}`);
  return { code, report: JSON.parse(out.trim().split('\n').pop()!) };
}

/** Creates the file, or replaces the content of an existing one. */
async function runCli(args: string[], password: string): Promise<{ code: number; out: string; err: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, COFFER_PASSWORD: password, COFFER_LOG_LEVEL: 'warn' } });
  let out = '';
  let err = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr.on('data', (c: Buffer) => (err += c.toString()));
  const code = await new Promise<number>((resolve) => child.once('exit', (c) => resolve(c ?? -1)));
  return { code, out, err };
}

for (const backend of backends) {
  t.test(`${backend.name}: only an owner or a manager releases, and only blocks of that realm`, async (t) => {
    const urls = await backend.fresh();
    const server = await startTestServer({ teardown: (fn) => t.teardown(fn), ...urls });
    const owner = await bootstrapOrg(server, 'acme');
    const realm = await createRealm(server, owner);
    // One after the other: the server refuses a certificate signed before the last one it took, and
    // four signed at once may arrive out of order (a CI run failed on it).
    const [reader, contributor, manager, stranger] = [
      await addUser(server, owner, 'standard'),
      await addUser(server, owner, 'standard'),
      await addUser(server, owner, 'standard'),
      await addUser(server, owner, 'standard'),
    ];
    await mustGrant(server, owner, realm.realmId, reader.userId, 'reader', reader.userBox.publicKey);
    await mustGrant(server, owner, realm.realmId, contributor.userId, 'contributor', contributor.userBox.publicKey);
    await mustGrant(server, owner, realm.realmId, manager.userId, 'manager', manager.userBox.publicKey);
    const strangerRealm = await createRealm(server, stranger);

    const put = async (device: typeof owner, realmId: string, data = randomBytes(1000)) => {
      const id = newId();
      const res = await request(server, 'PUT', routePath(ROUTES.block, { org: 'acme', realm: realmId, block: id }), { device, raw: data });
      t.equal(res.status, 201, 'block stored');
      return { id, data };
    };
    const ours = await Promise.all([put(owner, realm.realmId), put(contributor, realm.realmId), put(owner, realm.realmId)]);
    const theirs = await put(stranger, strangerRealm.realmId);
    const release = (device: typeof owner, realmId: string, blockIds: string[]) =>
      request(server, 'POST', routePath(ROUTES.releaseBlocks, { org: 'acme', realm: realmId }), { device, json: { blockIds } });
    const list = async (device: typeof owner, realmId: string) => request(server, 'GET', routePath(ROUTES.blocks, { org: 'acme', realm: realmId }), { device });

    for (const [who, device] of [['reader', reader], ['contributor', contributor], ['a member of another realm', stranger]] as const) {
      const res = await release(device, realm.realmId, [ours[0]!.id]);
      t.same([res.status, res.json?.error], [403, 'forbidden'], `${who} cannot release`);
      t.same([(await list(device, realm.realmId)).status], [403], `${who} cannot list the blocks`);
    }
    const cross = await release(stranger, strangerRealm.realmId, [ours[0]!.id]);
    t.same([cross.status, cross.json?.error], [404, 'not_found'], "another realm's block id through one's own realm: refused");
    const mixed = await release(owner, realm.realmId, [ours[0]!.id, theirs.id]);
    t.same([mixed.status, mixed.json?.error], [404, 'not_found'], 'a list with a foreign block: refused whole');
    t.same(mixed.json?.details?.unknown, [theirs.id], 'naming the foreign id');
    const listed = (await list(owner, realm.realmId)).json;
    t.equal(listed.blocks.length, 3, 'the owner lists the realm\'s three blocks');
    t.ok(listed.blocks.every((b: { releasedAt: number | null }) => b.releasedAt === null), 'nothing was released by the refusals');
    t.same((await request(server, 'POST', routePath(ROUTES.releaseBlocks, { org: 'acme', realm: realm.realmId }), { device: owner, json: { blockIds: [] } })).status, 400, 'empty list: 400');

    const ok = await release(manager, realm.realmId, [ours[0]!.id, ours[1]!.id]);
    t.same([ok.status, ok.json], [200, { released: 2, alreadyReleased: 0 }], 'a manager releases two blocks');
    const again = await release(owner, realm.realmId, [ours[0]!.id]);
    t.same(again.json, { released: 0, alreadyReleased: 1 }, 'releasing again is idempotent');
    // A released block uploaded again (same bytes) is live again.
    const reput = await request(server, 'PUT', routePath(ROUTES.block, { org: 'acme', realm: realm.realmId, block: ours[1]!.id }), { device: contributor, raw: ours[1]!.data });
    t.equal(reput.status, 200, 'the released block uploaded again');

    const dry = await serverGc(server, urls, ['--retention', '0', '--dry-run']);
    t.same(dry.report.blocks.map((b) => b.blockId), [ours[0]!.id], 'dry run lists the released block only (the re-uploaded one is kept)');
    t.equal(dry.report.dryRun, true);
    const stillThere = await request(server, 'GET', routePath(ROUTES.block, { org: 'acme', realm: realm.realmId, block: ours[0]!.id }), { device: owner });
    t.ok(stillThere.status === 200 && stillThere.body.equals(ours[0]!.data), 'dry run deleted nothing');

    const young = await serverGc(server, urls, ['--retention', '1h']);
    t.same(young.report.blocks, [], 'released less than the retention ago: kept');
    const done = await serverGc(server, urls, ['--retention', '0']);
    t.same(done.report.blocks.map((b) => b.blockId), [ours[0]!.id], 'gc deleted the released block');
    t.same(done.report.failed, []);
    const gone = await request(server, 'GET', routePath(ROUTES.block, { org: 'acme', realm: realm.realmId, block: ours[0]!.id }), { device: owner });
    t.same([gone.status, gone.json?.error], [404, 'not_found'], 'the deleted block answers 404');
    const stores = await openStores({ dataDir: server.dataDir, metadata: urls.metadataUrl, blocks: urls.blocksUrl });
    try {
      t.equal(await stores.blocks.get('acme', ours[0]!.id), null, 'its bytes are gone from the block store');
      t.equal(await stores.metadata.getBlockMeta('acme', ours[0]!.id), null, 'and its record from the metadata');
      t.ok((await stores.blocks.get('acme', ours[1]!.id))?.equals(ours[1]!.data), 'the revived block is still stored');
      t.ok((await stores.blocks.get('acme', theirs.id))?.equals(theirs.data), "the other realm's block is untouched");
    } finally {
      await stores.close();
    }
    t.same((await list(owner, realm.realmId)).json.blocks.map((b: { blockId: string }) => b.blockId).sort(), [ours[1]!.id, ours[2]!.id].sort(), 'two blocks left in the realm');
  });

  t.test(`${backend.name}: a workspace collected by its owner — old versions within the window keep their blocks`, async (t) => {
    const urls = await backend.fresh();
    const server = await startTestServer({ teardown: (fn) => t.teardown(fn), ...urls });
    const dir = await mkdtemp(join(tmpdir(), 'coffer-gc-'));
    t.teardown(() => rm(dir, { recursive: true, force: true }));
    const org = await bootstrapClientOrg(server, 'acme', dir);
    const realmId = await newWorkspace(org.device, 'Docs');
    const s = await openSession(org.device, 'Docs', join(dir, 'device1'));
    const e = s.engine;
    const keep = randomBytes(2 * 512 * 1024 + 100);
    const v1 = randomBytes(300_000);
    const v2 = randomBytes(200_000);
    const gone = randomBytes(100_000);
    await e.mkdir('/dir', 0o755);
    await writeEngineFile(e, '/dir/keep.bin', keep);
    await writeEngineFile(e, '/edit.bin', v1);
    await writeEngineFile(e, '/gone.bin', gone);
    await s.sync.drain(30_000);
    await writeEngineFile(e, '/edit.bin', v2);
    await e.unlink('/gone.bin');
    await s.sync.drain(30_000);
    t.same(s.store.pendingStats(), { manifests: 0, blocks: 0, bytes: 0 }, 'everything uploaded');
    await s.close();
    // A block uploaded without any manifest (a client that died before its manifest).
    const conn = new ServerConnection(server.url, org.device);
    t.teardown(() => conn.close());
    const orphan = newId();
    await conn.putBlock(realmId, orphan, randomBytes(5000));
    const stored = async () => (await conn.listBlocks(realmId, null)).blocks;
    const before = await stored();
    t.equal(before.length, 3 + 1 + 1 + 1 + 1, 'blocks: keep (3), edit v1 (1), edit v2 (1), gone (1), orphan (1)');

    const view = await openRemoteView(org.device, join(dir, 'gc'), 'Docs');
    const editHistory = await entryHistory(view, '/edit.bin');
    await view.close();
    const v1Manifest = editHistory.find((v) => v.manifest.type === 'file' && v.manifest.size === v1.length)?.manifest;
    const v1Blocks = new Set(v1Manifest?.type === 'file' ? v1Manifest.blocks.map((b) => b.id) : []);
    t.equal(v1Blocks.size, 1, 'edit.bin v1 had one block');
    t.ok(editHistory.length >= 2, 'edit.bin has older versions');

    if (backend.name === 'sqlite+folder') {
      // The command line, as an owner runs it (dry run: nothing sent).
      const cli = await runCli(['--device-file', org.deviceFile, '--data-dir', join(dir, 'cli'), 'workspace', 'gc', 'Docs', '--dry-run', '--history', '1h', '--min-age', '0', '--json'], org.password);
      t.equal(cli.code, 0, `coffer workspace gc --dry-run exits 0 ${cli.err}`);
      t.same((JSON.parse(cli.out) as { release: Array<{ blockId: string }> }).release.map((b) => b.blockId), [orphan], 'coffer workspace gc --dry-run lists the orphan');
      const human = await runCli(['--device-file', org.deviceFile, '--data-dir', join(dir, 'cli'), 'workspace', 'gc', 'Docs', '--dry-run', '--history', '1h', '--min-age', '0'], org.password);
      t.match(human.out, new RegExp(`would release ${orphan}`), 'the human-readable report names it');
      t.match(human.out, /would release 1 \(5\d{3} bytes\)/, 'and sums it up');
    }
    // Window covering every version: only the orphan goes. A dry run first: nothing sent.
    const dry = await workspaceGc(org.device, join(dir, 'gc'), 'Docs', { dryRun: true, historyMs: 3_600_000, minAgeMs: 0 });
    t.same(dry.release.map((b) => b.blockId), [orphan], 'dry run: the orphan would go, nothing else (every version is in the window)');
    t.ok((await stored()).every((b) => b.releasedAt === null), 'the dry run released nothing');
    const wide = await workspaceGc(org.device, join(dir, 'gc'), 'Docs', { dryRun: false, historyMs: 3_600_000, minAgeMs: 0 });
    t.same(wide.release.map((b) => b.blockId), [orphan], 'released: the orphan');
    const young = await workspaceGc(org.device, join(dir, 'gc'), 'Docs', { dryRun: true, historyMs: 3_600_000, minAgeMs: 3_600_000 });
    t.equal(young.release.length, 0, 'nothing younger than min-age is ever released');
    const gc1 = await serverGc(server, urls, ['--retention', '0']);
    t.same(gc1.report.blocks.map((b) => b.blockId), [orphan], 'server gc deleted the orphan only');
    for (const id of v1Blocks) {
      const res = await request(server, 'GET', routePath(ROUTES.block, { org: 'acme', realm: realmId, block: id }), { device: org.device });
      t.equal(res.status, 200, 'the block of edit.bin v1 (an older version within the window) stays');
    }

    // A window that starts after the last upload: only the latest versions count. Seen from ten
    // minutes in the future with a one-minute window, v1 of edit.bin and the deleted file are out.
    const later = Date.now() + 600_000;
    const narrow = await workspaceGc(org.device, join(dir, 'gc'), 'Docs', { dryRun: false, historyMs: 60_000, minAgeMs: 0, now: later });
    const releasedIds = new Set(narrow.release.map((b) => b.blockId));
    t.equal(releasedIds.size, 2, 'released: edit.bin v1 and gone.bin');
    for (const id of v1Blocks) t.ok(releasedIds.has(id), 'edit.bin v1 block released');
    const gc2 = await serverGc(server, urls, ['--retention', '0']);
    t.equal(gc2.report.blocks.length, 2, 'server gc deleted both');
    t.equal((await stored()).length, 4, 'four blocks left: keep.bin (3) and edit.bin v2 (1)');

    // The files still read, on a fresh device store (everything from the server).
    const s2 = await openSession(org.device, 'Docs', join(dir, 'device2'));
    t.ok((await readEngineFile(s2.engine, '/dir/keep.bin')).equals(keep), 'keep.bin reads back');
    t.ok((await readEngineFile(s2.engine, '/edit.bin')).equals(v2), 'edit.bin (latest) reads back');
    t.same((await s2.engine.readdir('/')).sort(), ['dir', 'edit.bin']);
    await s2.close();
  });
}

t.test('the periodic job in the server deletes released blocks past the retention', async (t) => {
  const dataDir = await mkdtemp(join(tmpdir(), 'coffer-gc-timer-'));
  t.teardown(() => rm(dataDir, { recursive: true, force: true }));
  const running = await startServer({ dataDir, host: '127.0.0.1', port: 0, adminToken: 'a'.repeat(32), logger: pino({ level: 'silent' }), gc: { intervalMs: 100, retentionMs: 300 } });
  t.teardown(() => running.close());
  const server = { url: running.url, adminToken: running.adminToken };
  const owner = await bootstrapOrg(server, 'acme');
  const realm = await createRealm(server, owner);
  const ids = [newId(), newId()];
  for (const id of ids) t.equal((await request(server, 'PUT', routePath(ROUTES.block, { org: 'acme', realm: realm.realmId, block: id }), { device: owner, raw: randomBytes(100) })).status, 201);
  const released = await request(server, 'POST', routePath(ROUTES.releaseBlocks, { org: 'acme', realm: realm.realmId }), { device: owner, json: { blockIds: [ids[0]] } });
  t.equal(released.status, 200);
  const status = (id: string) => request(server, 'GET', routePath(ROUTES.block, { org: 'acme', realm: realm.realmId, block: id }), { device: owner }).then((r) => r.status);
  t.equal(await status(ids[0]!), 200, 'still served during the retention');
  const deadline = Date.now() + 10_000;
  while ((await status(ids[0]!)) !== 404 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  t.equal(await status(ids[0]!), 404, 'deleted by the server job after the retention');
  t.equal(await status(ids[1]!), 200, 'the block never released stays');
});

t.test('durations', async (t) => {
  t.equal(parseDuration('7d'), 7 * 86_400_000);
  t.equal(parseDuration('12h'), 12 * 3_600_000);
  t.equal(parseDuration('0'), 0);
  t.equal(parseDuration('1.5s'), 1500);
  t.throws(() => parseDuration('soon'), { code: 'bad_request' });
});
