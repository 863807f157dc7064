/**
 * A hostile server (test/helpers/hostile-proxy.ts: a proxy in front of a real server rewriting its
 * answers) against real mounts and the real CLI. Every attack must be detected and refused — EIO at
 * the mount or a refused sync / command, a log line naming the problem — and no wrong byte shown:
 *
 * - flipped bytes in a block, in a vlob; a vlob of another file; a block of another realm; a batched
 *   block answer naming a block not asked for, answering one twice, or with sizes that lie;
 * - rollback: an older version of a vlob after a newer one was seen (also once the local cache is
 *   gone: the device's trust state remembers), a vlob the server "forgets", the change-log
 *   checkpoint going back; a fork (a version seen before, served again with other bytes);
 * - a write by a reader that a colluding server stores and serves;
 * - certificates: one replayed, two reordered, the last one dropped, one in the middle dropped.
 */
import Database from 'better-sqlite3';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { newWorkspace } from '../helpers/client.js';
import { blockReadIds, blockRule, flipBase64, jsonOf, startHostileProxy, withBody, withJson, type HostileProxy, type ProxiedRequest, type ProxiedResponse, type Rule } from '../helpers/hostile-proxy.js';
import { environmentOn, mountWorkspace, sh, type Environment, type MountedWorkspace, type ShellResult } from '../helpers/mount.js';
import { startTestServer } from '../helpers/server.js';
import { ServerConnection } from '../../src/client/connection.js';
import { WorkspaceKeys } from '../../src/client/remote.js';
import { setMemberRole } from '../../src/client/sharing.js';
import { verifiedChain } from '../../src/client/workspaces.js';
import { newFileManifest } from '../../src/model/manifests.js';
import { sealVlob } from '../../src/model/vlob.js';
import { decodeBlockBatch, decodeBlockReadAnswer, encodeBlockReadAnswer, type BlockReadItem } from '../../src/protocol/block-batch.js';
import { enroll } from '../helpers/enroll.js';
import type { VlobRecordBody } from '../../src/protocol/schemas.js';

interface HostileEnvironment extends Environment {
  proxy: HostileProxy;
  realmId: string;
}

/** Like setupEnvironment, but the device knows the server by the proxy's address. */
async function hostileEnvironment(t: Test): Promise<HostileEnvironment> {
  const server = await startTestServer();
  const proxy = await startHostileProxy(() => server.url);
  t.teardown(async () => {
    await proxy.close();
    await server.destroy();
  });
  return { ...(await environmentOn(t, server, { deviceUrl: proxy.url })), proxy };
}

const pathOf = (req: ProxiedRequest) => req.path.split('?')[0]!;
const isLatestVlobRead = (req: ProxiedRequest, id: string) => req.method === 'GET' && pathOf(req).endsWith(`/vlobs/${id}`) && !req.path.includes('?');

/** A vlob record as the server sends it (the protocol's own schema type). */
type VlobRec = VlobRecordBody;

/** Rewrites vlob records (single reads and batched reads) with `fn` (undefined: untouched). */
function vlobRule(fn: (rec: VlobRec, req: ProxiedRequest) => VlobRec | undefined): Rule {
  return (req: ProxiedRequest, res: ProxiedResponse) => {
    if (res.status !== 200) return undefined;
    if (req.method === 'GET' && /\/vlobs\/[0-9a-f]{32}$/.test(pathOf(req))) {
      const out = fn(jsonOf(res) as VlobRec, req);
      return out ? withJson(res, out) : undefined;
    }
    if (req.method === 'POST' && pathOf(req).endsWith('/vlobs-read')) {
      const j = jsonOf(res) as { vlobs: VlobRec[]; missing: string[] };
      let changed = false;
      j.vlobs = j.vlobs.map((r) => {
        const o = fn(r, req);
        if (o) changed = true;
        return o ?? r;
      });
      return changed ? withJson(res, j) : undefined;
    }
    return undefined;
  };
}

/** Writes a file on the mount and waits until it is on the server; returns the new vlob and block ids seen by the proxy. */
async function writeAndSync(t: Test, envx: HostileEnvironment, m: MountedWorkspace, name: string, content: string, extraEnv: NodeJS.ProcessEnv = {}): Promise<{ vlobs: string[]; blocks: string[] }> {
  const mark = envx.proxy.log.length;
  t.equal((await sh(`printf '%s' '${content}' > ${m.mnt}/${name}`)).code, 0, `write ${name}`);
  const r = await envx.coffer(['sync', '--wait', '--timeout', '120'], extraEnv);
  t.equal(r.code, 0, `sync ${name}: ${r.stderr}`);
  const after = envx.proxy.log.slice(mark);
  // New vlobs: version 1 writes, batched (vlobs-write) or single (POST vlobs); blocks: batched or single PUT.
  const vlobs = after.flatMap((l) => {
    if (l.method !== 'POST') return [];
    if (/\/vlobs$/.test(l.path) && l.status === 201) return [(JSON.parse(l.body.toString()) as { vlobId: string }).vlobId];
    if (/\/vlobs-write$/.test(l.path) && l.status === 200) return (JSON.parse(l.body.toString()) as { writes: Array<{ vlobId: string; version: number }> }).writes.filter((w) => w.version === 1).map((w) => w.vlobId);
    return [];
  });
  const blocks = after.flatMap((l) => {
    if (l.method === 'PUT' && /\/blocks\/[0-9a-f]{32}$/.test(l.path)) return [l.path.split('/').pop()!];
    if (l.method === 'POST' && /\/blocks-write$/.test(l.path)) return decodeBlockBatch(l.body).map((b) => b.blockId);
    return [];
  });
  return { vlobs, blocks };
}

async function serverGet(envx: HostileEnvironment, path: string): Promise<{ status: number; json: any; body: Buffer }> {
  return envx.server.request('GET', path, { device: envx.org.device });
}

function vlobPath(envx: HostileEnvironment, realmId: string, vlobId: string, query = ''): string {
  return `/v1/orgs/${envx.org.device.orgId}/realms/${realmId}/vlobs/${vlobId}${query}`;
}

async function waitForLog(m: MountedWorkspace, pattern: RegExp, timeoutMs = 20_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (pattern.test(m.output())) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return false;
}

function expectEio(t: Test, r: ShellResult, what: string): void {
  t.not(r.code, 0, `${what}: refused`);
  t.match(r.stderr, /Input\/output error/, `${what}: EIO`);
  t.equal(r.stdout, '', `${what}: no byte shown`);
}

t.test('tampered content: flipped block and vlob bytes, another file\'s vlob, another realm\'s block -> EIO, logged', async (t) => {
  const envx = await hostileEnvironment(t);
  const otherRealm = await newWorkspace(envx.org.device, 'Other');
  const m = await mountWorkspace(t, envx, { dataDir: join(envx.root, 'writer') });
  const writer = { COFFER_DATA_DIR: join(envx.root, 'writer') };
  const good = await writeAndSync(t, envx, m, 'good.txt', 'all fine here', writer);
  const flipBlock = await writeAndSync(t, envx, m, 'flip-block.txt', 'this block will be flipped', writer);
  const flipVlob = await writeAndSync(t, envx, m, 'flip-vlob.txt', 'this manifest will be flipped', writer);
  const swapped = await writeAndSync(t, envx, m, 'swapped.txt', 'this manifest will be replaced by another file', writer);
  const foreign = await writeAndSync(t, envx, m, 'foreign.txt', 'this block will come from another realm', writer);
  for (const [name, ids] of Object.entries({ good, flipBlock, flipVlob, swapped, foreign })) {
    t.equal(ids.vlobs.length, 1, `${name}: one new vlob`);
    t.equal(ids.blocks.length, 1, `${name}: one new block`);
  }
  const o = await mountWorkspace(t, envx, { workspace: 'Other', dataDir: join(envx.root, 'other') });
  const otherBlock = await writeAndSync(t, envx, o, 'secret.txt', 'a block of the Other workspace', { COFFER_DATA_DIR: join(envx.root, 'other') });
  await o.stop();
  await m.stop();

  const goodRecord = (await serverGet(envx, vlobPath(envx, envx.realmId, good.vlobs[0]!))).json as VlobRec;
  const foreignBytes = (await serverGet(envx, `/v1/orgs/${envx.org.device.orgId}/realms/${otherRealm}/blocks/${otherBlock.blocks[0]}`)).body;
  t.ok(foreignBytes.length > 28, 'a real sealed block of the other realm');

  envx.proxy.rule('flip block byte', blockRule(flipBlock.blocks[0]!, (b) => {
    const c = Buffer.from(b);
    c[c.length - 5]! ^= 0x01;
    return c;
  }));
  envx.proxy.rule('flip vlob byte', vlobRule((rec) => (rec.vlobId === flipVlob.vlobs[0] ? { ...rec, blob: flipBase64(rec.blob) } : undefined)));
  envx.proxy.rule('vlob of another file', vlobRule((rec) => (rec.vlobId === swapped.vlobs[0] ? { ...goodRecord, vlobId: rec.vlobId } : undefined)));
  envx.proxy.rule('block of another realm', blockRule(foreign.blocks[0]!, () => foreignBytes));

  const r = await mountWorkspace(t, envx, { dataDir: join(envx.root, 'reader') });
  t.equal((await sh(`cat ${r.mnt}/good.txt`)).stdout, 'all fine here', 'an untouched file reads');
  expectEio(t, await sh(`cat ${r.mnt}/flip-block.txt`), 'flipped block byte');
  expectEio(t, await sh(`cat ${r.mnt}/flip-vlob.txt`), 'flipped vlob byte');
  expectEio(t, await sh(`cat ${r.mnt}/swapped.txt`), 'vlob of another file');
  expectEio(t, await sh(`cat ${r.mnt}/foreign.txt`), 'block of another realm');
  t.equal((await sh(`cat ${r.mnt}/good.txt`)).stdout, 'all fine here', 'the untouched file still reads');
  for (const rule of ['flip block byte', 'flip vlob byte', 'vlob of another file', 'block of another realm']) t.ok((envx.proxy.hits.get(rule) ?? 0) > 0, `the proxy applied "${rule}"`);
  // The mount's log arrives through a pipe: wait for each line rather than race it.
  t.ok(await waitForLog(r, new RegExp(`"blockId":"${flipBlock.blocks[0]}".*block failed its digest or decryption check`)), 'log names the flipped block');
  t.ok(await waitForLog(r, new RegExp(`"blockId":"${foreign.blocks[0]}".*block failed its digest or decryption check`)), 'log names the foreign block');
  t.ok(await waitForLog(r, new RegExp(`"vlobId":"${flipVlob.vlobs[0]}".*decryption failed.*refusing a manifest`)), 'log names the flipped vlob');
  t.ok(await waitForLog(r, new RegExp(`"vlobId":"${swapped.vlobs[0]}".*a blob of another vlob.*refusing a manifest`)), 'log names the swapped vlob');
  const out = r.output();
  t.notMatch(out, /all fine here|will be flipped|another realm|Other workspace/, 'no plaintext in the logs');
});

t.test('a batched block answer out of shape: a block not asked for, one answered twice, sizes that lie -> EIO', async (t) => {
  const envx = await hostileEnvironment(t);
  const m = await mountWorkspace(t, envx, { dataDir: join(envx.root, 'writer') });
  const contents = { good: 'all fine here', other: 'a block answered in place of another', twice: 'a block answered twice', lying: 'a block whose answer has a stray byte' };
  const written = new Map<string, string>();
  for (const [name, text] of Object.entries(contents)) written.set(name, (await writeAndSync(t, envx, m, `${name}.txt`, text, { COFFER_DATA_DIR: join(envx.root, 'writer') })).blocks[0]!);
  const block = (name: keyof typeof contents) => written.get(name)!;
  await m.stop();
  const goodBytes = (await envx.server.request('GET', `/v1/orgs/${envx.org.device.orgId}/realms/${envx.realmId}/blocks/${block('good')}`, { device: envx.org.device })).body;

  // Each rewrites the framed answer of a batched read that asked for its block (the bytes stay genuine).
  const answerRule = (blockId: string, fn: (items: BlockReadItem[], body: Buffer) => Buffer): Rule => (req, res) => {
    const ids = blockReadIds(req);
    return res.status === 200 && ids?.includes(blockId) ? withBody(res, fn(decodeBlockReadAnswer(res.body, ids), res.body)) : undefined;
  };
  envx.proxy.rule('unrequested block', answerRule(block('other'), (items) => encodeBlockReadAnswer(items.map((it) => (it.blockId === block('other') ? { blockId: block('good'), data: goodBytes } : it)))));
  envx.proxy.rule('block twice', answerRule(block('twice'), (items) => encodeBlockReadAnswer([...items, ...items.filter((it) => it.blockId === block('twice'))])));
  envx.proxy.rule('stray byte', answerRule(block('lying'), (_items, body) => Buffer.concat([body, Buffer.from([0])])));

  const r = await mountWorkspace(t, envx, { dataDir: join(envx.root, 'reader') });
  t.equal((await sh(`cat ${r.mnt}/good.txt`)).stdout, 'all fine here', 'an untouched file reads');
  expectEio(t, await sh(`cat ${r.mnt}/other.txt`), 'another block answered in place of the one asked for');
  expectEio(t, await sh(`cat ${r.mnt}/twice.txt`), 'a block answered twice');
  expectEio(t, await sh(`cat ${r.mnt}/lying.txt`), 'sizes that do not add up');
  for (const rule of ['unrequested block', 'block twice', 'stray byte']) t.ok((envx.proxy.hits.get(rule) ?? 0) > 0, `the proxy applied "${rule}"`);
  envx.proxy.clearRules();
  t.equal((await sh(`cat ${r.mnt}/other.txt`)).stdout, 'a block answered in place of another', 'nothing wrong was cached: the honest answer reads');
  t.notMatch(r.output(), /all fine here|in place of another|answered twice|stray byte/, 'no plaintext in the logs');
});

t.test('rollback: an older version after a newer one, a forgotten vlob, the checkpoint going back, a fork', async (t) => {
  const envx = await hostileEnvironment(t);
  const writerEnv = { COFFER_DATA_DIR: join(envx.root, 'writer') };
  const readerDir = join(envx.root, 'reader');
  const w = await mountWorkspace(t, envx, { dataDir: writerEnv.COFFER_DATA_DIR });
  const created = await writeAndSync(t, envx, w, 'f.txt', 'version one', writerEnv);
  const f = created.vlobs[0]!;
  await writeAndSync(t, envx, w, 'f.txt', 'version two, newer', writerEnv);
  const latest = (await serverGet(envx, vlobPath(envx, envx.realmId, f))).json as VlobRec;
  t.ok(latest.version >= 2, `f.txt is at version ${latest.version}`);
  const v1 = (await serverGet(envx, vlobPath(envx, envx.realmId, f, '?version=1'))).json as VlobRec;
  t.equal(v1.version, 1);

  // The reader sees the newer version first.
  const r = await mountWorkspace(t, envx, { dataDir: readerDir });
  t.equal((await sh(`cat ${r.mnt}/f.txt`)).stdout, 'version two, newer', 'reader sees the newer version');

  // From now on the server answers every latest read of f with version 1.
  envx.proxy.rule('rollback f', vlobRule((rec, req) => (rec.vlobId === f && !req.path.includes('?') && !req.body.includes('"at"') ? { ...v1 } : undefined)));
  await writeAndSync(t, envx, w, 'f.txt', 'version three, newest', writerEnv);
  t.ok(await waitForLog(r, /rollback: the server served version 1 of [0-9a-f]{32} after this device had seen version/), 'the reader refuses the older version and says so');
  t.ok(await waitForLog(r, /sync failed; will retry/), 'its sync round is refused (and retried), not silently skipped');
  t.equal((await sh(`cat ${r.mnt}/f.txt`)).stdout, 'version two, newer', 'the reader keeps showing the last verified version, never version 1');
  await r.stop();

  // The local cache is gone, the device's trust state is not: still refused, now as EIO.
  const dev = join(readerDir, envx.org.device.orgId, envx.org.device.deviceId);
  t.equal((await sh(`ls ${dev}/trust.sqlite && rm -rf ${dev}/${envx.realmId}.sqlite*`)).code, 0, 'workspace cache wiped, trust state kept');
  const r2 = await mountWorkspace(t, envx, { dataDir: readerDir });
  expectEio(t, await sh(`cat ${r2.mnt}/f.txt`), 'older version after a wiped cache');
  t.ok(await waitForLog(r2, /rollback: the server served version 1/), 'logged');

  // The server now pretends f never existed.
  envx.proxy.removeRule('rollback f');
  envx.proxy.rule('forget f', (req, res) => {
    if (isLatestVlobRead(req, f)) return { status: 404, headers: { 'content-type': 'application/json' }, body: Buffer.from(JSON.stringify({ error: 'not_found', message: 'no such vlob' })) };
    if (req.method === 'POST' && pathOf(req).endsWith('/vlobs-read') && res.status === 200) {
      const j = jsonOf(res) as { vlobs: VlobRec[]; missing: string[] };
      if (!j.vlobs.some((v) => v.vlobId === f)) return undefined;
      return withJson(res, { vlobs: j.vlobs.filter((v) => v.vlobId !== f), missing: [...j.missing, f] });
    }
    return undefined;
  });
  await r2.stop();
  t.equal((await sh(`rm -rf ${dev}/${envx.realmId}.sqlite*`)).code, 0);
  const r3 = await mountWorkspace(t, envx, { dataDir: readerDir });
  const gone = await sh(`cat ${r3.mnt}/f.txt`);
  t.not(gone.code, 0, 'a vlob the server forgot is not shown');
  t.equal(gone.stdout, '');
  t.match(gone.stderr, /Input\/output error/, 'EIO, not "no such file"');
  t.ok(await waitForLog(r3, /rollback: the server says [0-9a-f]{32} does not exist, but this device had seen its version/), 'logged');
  envx.proxy.removeRule('forget f');

  // The change log goes back: the checkpoint answered is lower than one already seen.
  envx.proxy.rule('checkpoint back', (req, res) => (req.method === 'GET' && pathOf(req).endsWith('/changes') && res.status === 200 ? withJson(res, { checkpoint: 1, changes: [] }) : undefined));
  t.ok(await waitForLog(r3, /rollback: the server's change log went back to checkpoint 1/), 'a checkpoint going back is refused and logged');
  t.ok((envx.proxy.hits.get('checkpoint back') ?? 0) > 0);
  await r3.stop();
  envx.proxy.removeRule('checkpoint back');

  // A fork: the version the reader saw, served again with other (validly signed) bytes.
  const device = envx.org.device;
  const conn = new ServerConnection(device.serverUrl, device);
  t.teardown(() => conn.close());
  const key = WorkspaceKeys.open(envx.realmId, (await conn.listRealms())[0]!.keys, device, await verifiedChain(conn, device)).key(1);
  // The version this reader saw (its trust state): the writer may have uploaded more than one.
  const trustDb = new Database(join(dev, 'trust.sqlite'), { readonly: true });
  const seen = (trustDb.prepare('SELECT version FROM seen_vlobs WHERE vlob_id = ?').get(f) as { version: number }).version;
  trustDb.close();
  const seenRecord = (await serverGet(envx, vlobPath(envx, envx.realmId, f, `?version=${seen}`))).json as VlobRec;
  const other = { ...newFileManifest(f, envx.realmId, Date.now()), size: 3 };
  const forkBlob = sealVlob(other, { realmId: envx.realmId, vlobId: f, version: seen, keyIndex: 1 }, { deviceId: device.deviceId, timestamp: Date.now() }, device.signingKey, key);
  const fork: VlobRec = { ...seenRecord, author: device.deviceId, blob: Buffer.from(forkBlob).toString('base64') };
  envx.proxy.rule('fork f', vlobRule((rec, req) => (rec.vlobId === f && !req.path.includes('?') ? fork : undefined)));
  t.equal((await sh(`rm -rf ${dev}/${envx.realmId}.sqlite*`)).code, 0);
  const r4 = await mountWorkspace(t, envx, { dataDir: readerDir });
  expectEio(t, await sh(`cat ${r4.mnt}/f.txt`), 'the same version with other bytes');
  t.ok(await waitForLog(r4, new RegExp(`fork: the server served other bytes for version ${seen} of ${f}`)), 'logged as a fork');
  await r4.stop();
  await w.stop();
});

t.test('certificates: replayed, reordered, dropped (last or in the middle) -> refused', async (t) => {
  const envx = await hostileEnvironment(t);
  await newWorkspace(envx.org.device, 'Second'); // two more certificates (role + key)
  const list = await envx.coffer(['workspace', 'list']);
  t.equal(list.code, 0, `the honest chain verifies: ${list.stderr}`);
  const certsPath = `/v1/orgs/${envx.org.device.orgId}/certificates`;
  const honest = (await serverGet(envx, `${certsPath}?since=0`)).json as { certificates: Array<{ index: number; blob: string }> };
  const n = honest.certificates.length;
  t.ok(n >= 6, `${n} certificates`);

  const rewrite = (fn: (certs: Array<{ index: number; blob: string }>, since: number) => Array<{ index: number; blob: string }>): Rule => (req, res) => {
    if (req.method !== 'GET' || pathOf(req) !== certsPath || res.status !== 200) return undefined;
    const since = Number(new URL(req.path, 'http://x').searchParams.get('since') ?? '0');
    const all = (jsonOf(res) as { certificates: Array<{ index: number; blob: string }> }).certificates;
    // Rewrite the whole list, then answer the part after `since` as a server would.
    const full = since === 0 ? all : [...honest.certificates.slice(0, since), ...all];
    return withJson(res, { certificates: fn(full, since).filter((c) => c.index > since) });
  };
  const cases: Array<[string, Rule, RegExp]> = [
    ['replayed', rewrite((c) => [...c, { index: c.length + 1, blob: c[2]!.blob }]), new RegExp(`certificate ${n + 1} is a replay of certificate 3`)],
    ['reordered', rewrite((c) => c.map((x, i) => (i === n - 2 ? { index: x.index, blob: c[n - 1]!.blob } : i === n - 1 ? { index: x.index, blob: c[n - 2]!.blob } : x))), /certificate|differ/],
    ['last dropped', rewrite((c) => c.slice(0, -1)), new RegExp(`lists ${n - 1} certificates but this device already verified ${n}: certificates were dropped`)],
    ['middle dropped, renumbered', rewrite((c) => c.filter((_x, i) => i !== n - 2).map((x, i) => ({ index: i + 1, blob: x.blob }))), /certificate|differ|dropped/],
    ['middle dropped, gap', rewrite((c) => c.filter((_x, i) => i !== 3)), /certificate 5 out of order \(expected 4\)/],
  ];
  for (const [name, rule, message] of cases) {
    envx.proxy.rule(name, rule);
    const r = await envx.coffer(['workspace', 'list']);
    t.not(r.code, 0, `${name}: refused`);
    t.match(r.stderr, message, `${name}: ${r.stderr.trim()}`);
    t.match(r.stderr, /\[integrity\]/, `${name}: an integrity error`);
    envx.proxy.removeRule(name);
  }
  t.equal((await envx.coffer(['workspace', 'list'])).code, 0, 'the honest chain still verifies afterwards');

  // A mount refuses to start on a shortened chain, naming the problem.
  envx.proxy.rule('last dropped', cases[2]![1]);
  let started: MountedWorkspace | null = null;
  try {
    started = await mountWorkspace(t, envx);
  } catch (err) {
    t.match((err as Error).message, /certificates were dropped/, 'the mount refuses to start and says why');
  }
  t.equal(started, null, 'no mount on a shortened chain');
});

t.test('a write by a reader, served by a colluding server, is refused by the other clients', async (t) => {
  const envx = await hostileEnvironment(t);
  const alice = envx.org.device;
  const { g, c, conn } = await enroll(envx, alice, 'user', 'bob@example.org', 'bob', envx.proxy.url);
  t.teardown(() => conn.close());
  const [bob] = await Promise.all([c.finish({ password: 'bob password', deviceFile: join(envx.root, 'bob.device'), label: 'b' }), g.finish()]);
  await setMemberRole(alice, conn, envx.realmId, 'bob@example.org', 'reader');
  const bobConn = new ServerConnection(bob.serverUrl, bob);
  t.teardown(() => bobConn.close());
  const bobKeys = WorkspaceKeys.open(envx.realmId, (await bobConn.listRealms())[0]!.keys, bob, await verifiedChain(bobConn, bob));

  const w = await mountWorkspace(t, envx, { dataDir: join(envx.root, 'writer') });
  const created = await writeAndSync(t, envx, w, 'f.txt', 'written by alice', { COFFER_DATA_DIR: join(envx.root, 'writer') });
  await w.stop();
  const f = created.vlobs[0]!;
  const latest = (await serverGet(envx, vlobPath(envx, envx.realmId, f))).json as VlobRec;

  // Bob (a reader: the honest server refuses his writes) signs a new version; the server serves it as the latest.
  const now = Date.now();
  const forgedManifest = { ...newFileManifest(f, envx.realmId, now), size: 16 }; // 16 bytes of zeros, if it were believed
  const version = latest.version + 1;
  const blob = sealVlob(forgedManifest, { realmId: envx.realmId, vlobId: f, version, keyIndex: 1 }, { deviceId: bob.deviceId, timestamp: now }, bob.signingKey, bobKeys.key(1));
  const honest = await bobConn.writeVlob(envx.realmId, f, version, 1, now, blob).then(() => 'accepted', (err: { code?: string }) => err.code);
  t.equal(honest, 'forbidden', 'the honest server refuses the reader\'s write');
  const forged: VlobRec = { ...latest, version, author: bob.deviceId, timestamp: now, blob: Buffer.from(blob).toString('base64') };
  envx.proxy.rule('reader write', vlobRule((rec, req) => (rec.vlobId === f && !req.path.includes('?') ? forged : undefined)));

  const r = await mountWorkspace(t, envx, { dataDir: join(envx.root, 'reader') });
  expectEio(t, await sh(`cat ${r.mnt}/f.txt`), "a reader's write");
  t.ok(await waitForLog(r, new RegExp(`"vlobId":"${f}".*manifest written by a device without write access at that time \\(${bob.deviceId}\\)`)), 'logged, naming the device');
});
