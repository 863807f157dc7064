/**
 * Durability across a restart: everything written before reads back identical afterwards
 * (block bytes, every vlob version, checkpoints, realms, certificates), and writing continues
 * where it stopped.
 */
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { sodiumReady } from '../../src/crypto/index.js';
import { newId } from '../../src/model/ids.js';
import { ROUTES, routePath } from '../../src/protocol/schemas.js';
import { addUser, bootstrapOrg, bootstrapRequest, createRealm, mustGrant } from '../helpers/org.js';
import { request, snapshotStorage, startTestServer } from '../helpers/server.js';

await sodiumReady();
const b64 = (u8: Uint8Array) => Buffer.from(u8).toString('base64');

t.test('blocks, vlob versions and checkpoints survive a restart', async (t) => {
  const server = await startTestServer({ teardown: (fn) => t.teardown(fn) });
  const admin = await bootstrapOrg(server, 'acme');
  const reader = await addUser(server, admin, 'standard');
  const realmA = await createRealm(server, admin);
  const realmB = await createRealm(server, admin);
  await mustGrant(server, admin, realmA.realmId, reader.userId, 'reader', reader.userBox.publicKey, realmA.workspaceKey);
  const org = 'acme';
  const blockPath = (realm: string, id: string) => routePath(ROUTES.block, { org, realm, block: id });
  const vlobPath = (realm: string, id: string) => routePath(ROUTES.vlob, { org, realm, vlob: id });

  // Blocks of several sizes in two realms.
  const blocks: Array<{ realm: string; id: string; data: Buffer }> = [];
  for (const [i, size] of [1, 1000, 65_536, 1_000_000, 3_000_000].entries()) {
    const realm = i % 2 === 0 ? realmA.realmId : realmB.realmId;
    const b = { realm, id: newId(), data: randomBytes(size) };
    const res = await request(server, 'PUT', blockPath(b.realm, b.id), { device: admin, raw: b.data });
    t.equal(res.status, 201, `block of ${size} bytes stored`);
    blocks.push(b);
  }

  // Vlobs with several versions each, interleaved so checkpoints mix.
  const vlobs: Array<{ realm: string; id: string; versions: Buffer[] }> = [];
  for (let i = 0; i < 4; i++) vlobs.push({ realm: i < 3 ? realmA.realmId : realmB.realmId, id: newId(), versions: [] });
  for (let round = 1; round <= 4; round++) {
    for (const [i, v] of vlobs.entries()) {
      if (round > i + 1) continue; // vlob i gets i+1 versions
      const blob = randomBytes(100 + round * 10 + i);
      const res =
        round === 1
          ? await request(server, 'POST', routePath(ROUTES.vlobs, { org, realm: v.realm }), {
              device: admin,
              json: { vlobId: v.id, keyIndex: 1, timestamp: 1000 + round, blob: b64(blob) },
            })
          : await request(server, 'PUT', vlobPath(v.realm, v.id), {
              device: admin,
              json: { version: round, keyIndex: 1, timestamp: 1000 + round, blob: b64(blob) },
            });
      t.ok(res.status === 200 || res.status === 201, `vlob ${i} v${round} written`);
      v.versions.push(blob);
      await sleep(2); // distinct createdAt per version
    }
  }

  /** Everything readable through the API, as one comparable value. */
  const readAll = async () => {
    const out: Record<string, unknown> = {};
    for (const b of blocks) {
      const res = await request(server, 'GET', blockPath(b.realm, b.id), { device: admin });
      out[`block ${b.id}`] = { status: res.status, exact: res.body.equals(b.data) };
    }
    for (const v of vlobs) {
      for (let version = 1; version <= v.versions.length; version++) {
        const res = await request(server, 'GET', `${vlobPath(v.realm, v.id)}?version=${version}`, { device: admin });
        out[`vlob ${v.id} v${version}`] = res.json;
      }
      const latest = await request(server, 'GET', vlobPath(v.realm, v.id), { device: admin });
      out[`vlob ${v.id} latest`] = latest.json;
      const v1 = out[`vlob ${v.id} v1`] as { createdAt: number };
      const asOf = await request(server, 'GET', `${vlobPath(v.realm, v.id)}?at=${v1.createdAt}`, { device: admin });
      out[`vlob ${v.id} at v1`] = asOf.json;
    }
    for (const realm of [realmA.realmId, realmB.realmId]) {
      out[`changes ${realm}`] = (await request(server, 'GET', routePath(ROUTES.changes, { org, realm }), { device: admin })).json;
      out[`changes ${realm} since 2`] = (await request(server, 'GET', `${routePath(ROUTES.changes, { org, realm })}?since=2`, { device: admin })).json;
      out[`many ${realm}`] = (
        await request(server, 'POST', routePath(ROUTES.readVlobs, { org, realm }), { device: admin, json: { vlobIds: vlobs.map((v) => v.id) } })
      ).json;
    }
    out.realmsAdmin = (await request(server, 'GET', routePath(ROUTES.realms, { org }), { device: admin })).json;
    out.realmsReader = (await request(server, 'GET', routePath(ROUTES.realms, { org }), { device: reader })).json;
    out.certificates = (await request(server, 'GET', routePath(ROUTES.certificates, { org }), { device: admin })).json;
    return out;
  };

  const before = await readAll();
  // Sanity: what we read before the restart is what we wrote.
  for (const b of blocks) t.same(before[`block ${b.id}`], { status: 200, exact: true }, 'block bytes exact before restart');
  for (const v of vlobs) {
    for (const [i, blob] of v.versions.entries()) {
      t.ok(Buffer.from((before[`vlob ${v.id} v${i + 1}`] as { blob: string }).blob, 'base64').equals(blob), `vlob v${i + 1} exact before restart`);
    }
    t.equal((before[`vlob ${v.id} at v1`] as { version: number }).version, 1, 'as-of read finds v1');
  }
  const cpA = (before[`changes ${realmA.realmId}`] as { checkpoint: number }).checkpoint;
  const cpB = (before[`changes ${realmB.realmId}`] as { checkpoint: number }).checkpoint;
  t.equal(cpA, 1 + 2 + 3, 'realm A checkpoint counts every write');
  t.equal(cpB, 4);
  const storageBefore = await snapshotStorage(server.dataDir);

  const oldUrl = server.url;
  await server.restart();
  t.type(server.url, 'string');
  t.ok(server.url.startsWith('http://127.0.0.1:'), `restarted (${oldUrl} -> ${server.url})`);

  const after = await readAll();
  t.same(after, before, 'everything reads back identical after the restart');
  t.same(await snapshotStorage(server.dataDir), storageBefore, 'stored rows and block files are unchanged by the restart');

  // Writing continues where it stopped: conflicts, idempotence, checkpoints.
  const b0 = blocks[0]!;
  const again = await request(server, 'PUT', blockPath(b0.realm, b0.id), { device: admin, raw: b0.data });
  t.same([again.status, again.json], [200, { blockId: b0.id, created: false }], 'same block again: idempotent');
  const diff = await request(server, 'PUT', blockPath(b0.realm, b0.id), { device: admin, raw: randomBytes(b0.data.length + 1) });
  t.equal(diff.status, 409, 'different bytes still refused');
  const v3 = vlobs[3]!; // four versions, in realm B
  const stale = await request(server, 'PUT', vlobPath(v3.realm, v3.id), { device: admin, json: { version: 4, keyIndex: 1, timestamp: 1, blob: b64(randomBytes(10)) } });
  t.equal(stale.status, 409);
  t.equal(stale.json.details?.currentVersion, 4, 'stored version survived');
  const v5 = await request(server, 'PUT', vlobPath(v3.realm, v3.id), { device: admin, json: { version: 5, keyIndex: 1, timestamp: 1, blob: b64(randomBytes(10)) } });
  t.same(v5.json, { vlobId: v3.id, version: 5, checkpoint: cpB + 1 }, 'next checkpoint follows the persisted one');
  const readerBlock = await request(server, 'GET', blockPath(blocks[0]!.realm, blocks[0]!.id), { device: reader });
  t.equal(readerBlock.status, 200, 'roles survived the restart');
  const readerWrite = await request(server, 'PUT', blockPath(realmA.realmId, newId()), { device: reader, raw: randomBytes(5) });
  t.equal(readerWrite.status, 403, 'and still restrict');

  // A second restart keeps the newest write too.
  await server.restart();
  const latest = await request(server, 'GET', vlobPath(v3.realm, v3.id), { device: admin });
  t.equal(latest.json.version, 5);
  const changes = await request(server, 'GET', `${routePath(ROUTES.changes, { org, realm: realmB.realmId })}?since=${cpB}`, { device: admin });
  t.same(changes.json, { checkpoint: cpB + 1, changes: [{ vlobId: v3.id, version: 5, checkpoint: cpB + 1 }] });
});

t.test('an organization created but not bootstrapped stays bootstrappable after a restart', async (t) => {
  const server = await startTestServer({ teardown: (fn) => t.teardown(fn) });
  const res = await request(server, 'POST', ROUTES.orgs, { json: { orgId: 'later' }, headers: { 'x-coffer-admin-token': server.adminToken } });
  t.equal(res.status, 201);
  await server.restart();
  const dup = await request(server, 'POST', ROUTES.orgs, { json: { orgId: 'later' }, headers: { 'x-coffer-admin-token': server.adminToken } });
  t.equal(dup.status, 409, 'the organization persisted');
  const boot = await bootstrapRequest('later', res.json.bootstrapToken);
  const ok = await request(server, 'POST', routePath(ROUTES.bootstrap, { org: 'later' }), { json: boot.body });
  t.equal(ok.status, 201, 'the bootstrap token persisted (as its hash)');
});
