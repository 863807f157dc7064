/**
 * One conformance suite, run over real HTTP against every storage backend combination:
 *
 *   sqlite+folder   the embedded default (one instance, temp data directory)
 *   postgres+s3     a throw-away PostgreSQL 15 cluster and s3rver (test/helpers/services.ts),
 *                   a fresh database and bucket per test, several server instances sharing them
 *   postgres+swift  the same PostgreSQL cluster and Debian's OpenStack Swift (native API, TempAuth),
 *                   a fresh database and container per test
 *
 * Same assertions for both: block and vlob lifecycle, 409 on version conflicts, as-of reads,
 * changes since a checkpoint, invitation step guards, roles, data kept across a restart, and races
 * (through two instances where the backend is shared). The shared backends also get outages
 * (→ 503, then recovery) and the storage URL settings are checked at the end.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { setTimeout as sleep } from 'node:timers/promises';
import t, { type Test } from 'tap';
import { sodiumReady } from '../../src/crypto/index.js';
import { BadInputError } from '../../src/errors.js';
import { newId } from '../../src/model/ids.js';
import { MAX_BLOCK_BYTES, ROUTES, routePath } from '../../src/protocol/schemas.js';
import { decodeBlockReadAnswer } from '../../src/protocol/block-batch.js';
import { startServer } from '../../src/server/main.js';
import { PostgresMetadataStore } from '../../src/server/metadata/postgres.js';
import { openStores, parseBlocksSetting, parseMetadataSetting, redactUrl } from '../../src/server/storage.js';
import { addUser, bootstrapOrg, createRealm, grant, mustGrant, newIdentity, type TestDevice } from '../helpers/org.js';
import { isErrorBody, request, startTestServer, type TestResponse, type TestServer } from '../helpers/server.js';
import { freePort, startPostgres, startS3, startSwift, type PostgresCluster, type S3Service, type SwiftService } from '../helpers/services.js';

// The pinned SDK warns that its future releases need Node 22: known (docs/deploy.md), not test output.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true';
await sodiumReady();
const b64 = (u8: Uint8Array) => Buffer.from(u8).toString('base64');
const key32 = () => b64(randomBytes(32));
const ORG = 'acme';

const paths = {
  block: (realm: string, block: string) => routePath(ROUTES.block, { org: ORG, realm, block }),
  readBlocks: (realm: string) => routePath(ROUTES.readBlocks, { org: ORG, realm }),
  vlobs: (realm: string) => routePath(ROUTES.vlobs, { org: ORG, realm }),
  vlob: (realm: string, vlob: string) => routePath(ROUTES.vlob, { org: ORG, realm, vlob }),
  readVlobs: (realm: string) => routePath(ROUTES.readVlobs, { org: ORG, realm }),
  changes: (realm: string) => routePath(ROUTES.changes, { org: ORG, realm }),
  realms: () => routePath(ROUTES.realms, { org: ORG }),
  members: (realm: string) => routePath(ROUTES.members, { org: ORG, realm }),
  certificates: () => routePath(ROUTES.certificates, { org: ORG }),
  invitations: () => routePath(ROUTES.invitations, { org: ORG }),
  invitation: (id: string) => routePath(ROUTES.invitation, { org: ORG, invitation: id }),
  greeter: (id: string) => routePath(ROUTES.greeterStep, { org: ORG, invitation: id }),
  claim: () => routePath(ROUTES.claim, { org: ORG }),
};

function expectError(t: Test, res: TestResponse, status: number, code: string, what: string): void {
  t.equal(res.status, status, `${what}: HTTP ${status}`);
  t.ok(isErrorBody(res.json), `${what}: error body`);
  t.equal(res.json?.error, code, `${what}: error ${code}`);
}

const createBody = (vlobId: string, blob: Buffer) => ({ vlobId, keyIndex: 1, timestamp: Date.now(), blob: b64(blob) });
const updateBody = (version: number, blob: Buffer) => ({ version, keyIndex: 1, timestamp: Date.now(), blob: b64(blob) });

// ---------------------------------------------------------------------------------------------
// Backends

interface Backend {
  name: string;
  /** Several instances can share the stores (else races run through one instance). */
  shared: boolean;
  /** Fresh, empty stores: the settings every instance of one test uses. */
  fresh(): Promise<{ metadataUrl?: string; blocksUrl?: string }>;
  /** Makes the metadata / block service unreachable, then reachable again (shared backends). */
  outage?: { metadata: { pause(): Promise<void>; resume(): Promise<void> }; blocks: { pause(): Promise<void>; resume(): Promise<void> } };
}

const t0 = Date.now();
const [pgCluster, s3, swift]: [PostgresCluster, S3Service, SwiftService] = await Promise.all([startPostgres(), startS3(), startSwift()]);
t.teardown(async () => {
  await Promise.all([pgCluster.stop(), s3.stop(), swift.stop()]);
});
t.comment(`PostgreSQL cluster started in ${pgCluster.startupMs} ms, s3rver in ${s3.startupMs} ms, Swift in ${swift.startupMs} ms (all: ${Date.now() - t0} ms)`);

const backends: Backend[] = [
  { name: 'sqlite+folder', shared: false, fresh: async () => ({}) },
  {
    name: 'postgres+s3',
    shared: true,
    fresh: async () => {
      const [metadataUrl, blocksUrl] = await Promise.all([pgCluster.createDatabase(), s3.createBucket()]);
      return { metadataUrl, blocksUrl };
    },
    outage: { metadata: pgCluster, blocks: s3 },
  },
  {
    name: 'postgres+swift',
    shared: true,
    fresh: async () => {
      const [metadataUrl, blocksUrl] = await Promise.all([pgCluster.createDatabase(), swift.createContainer()]);
      return { metadataUrl, blocksUrl };
    },
    outage: { metadata: pgCluster, blocks: swift },
  },
];

interface Deployment {
  /** One instance (embedded backend) or two sharing the stores. */
  servers: TestServer[];
  /** The first instance. */
  main: TestServer;
  urls: { metadataUrl?: string; blocksUrl?: string };
  adminToken: string;
  admin: TestDevice;
  /** Starts one more instance on the same stores (shared backends only). */
  another(): Promise<TestServer>;
}

async function deploy(t: Test, backend: Backend): Promise<Deployment> {
  const urls = await backend.fresh();
  const adminToken = randomBytes(24).toString('hex');
  const start = () => startTestServer({ teardown: (fn) => t.teardown(fn), adminToken, ...urls });
  const servers = backend.shared ? await Promise.all([start(), start()]) : [await start()];
  const main = servers[0]!;
  const admin = await bootstrapOrg(main, ORG);
  return { servers, main, urls, adminToken, admin, another: start };
}

/** The i-th instance, round robin (what a load balancer does). */
const pick = (d: Deployment, i: number) => d.servers[i % d.servers.length]!;

// ---------------------------------------------------------------------------------------------
// The suite

function conformance(backend: Backend): void {
  t.test(`${backend.name}: blocks`, async (t) => {
    const d = await deploy(t, backend);
    const realm = await createRealm(d.main, d.admin);
    const other = await createRealm(d.main, d.admin);
    const stored: Array<{ blockId: string; data: Buffer }> = [];
    for (const size of [1, 100_000, MAX_BLOCK_BYTES]) {
      const id = newId();
      const data = randomBytes(size);
      stored.push({ blockId: id, data });
      const put = await request(pick(d, 0), 'PUT', paths.block(realm.realmId, id), { device: d.admin, raw: data });
      t.same([put.status, put.json], [201, { blockId: id, created: true }], `${size} bytes stored`);
      const again = await request(pick(d, 1), 'PUT', paths.block(realm.realmId, id), { device: d.admin, raw: data });
      t.same([again.status, again.json], [200, { blockId: id, created: false }], `${size} bytes again: idempotent`);
      const changed = Buffer.from(data);
      changed[0]! ^= 0xff;
      expectError(t, await request(pick(d, 1), 'PUT', paths.block(realm.realmId, id), { device: d.admin, raw: changed }), 409, 'exists', 'other bytes, same id');
      expectError(t, await request(pick(d, 0), 'PUT', paths.block(other.realmId, id), { device: d.admin, raw: data }), 409, 'exists', 'same id in another realm');
      for (const s of d.servers) {
        const get = await request(s, 'GET', paths.block(realm.realmId, id), { device: d.admin });
        t.equal(get.status, 200);
        t.ok(get.body.equals(data), `${size} bytes read back exactly (the refused overwrites changed nothing)`);
      }
      expectError(t, await request(d.main, 'GET', paths.block(other.realmId, id), { device: d.admin }), 404, 'not_found', 'block read through another realm');
    }
    expectError(t, await request(d.main, 'GET', paths.block(realm.realmId, newId()), { device: d.admin }), 404, 'not_found', 'unknown block');
    // A batched read answers each block as its own GET does, on every instance.
    const unknown = newId();
    const ids = [stored[2]!.blockId, unknown, stored[0]!.blockId, stored[1]!.blockId];
    for (const s of d.servers) {
      const res = await request(s, 'POST', paths.readBlocks(realm.realmId), { device: d.admin, json: { blockIds: ids } });
      t.equal(res.status, 200);
      const items = decodeBlockReadAnswer(res.body, ids);
      t.same(items, [stored[2], { blockId: unknown, error: { error: 'not_found', message: 'no such block in this workspace' } }, stored[0], stored[1]], 'batched read: the blocks exactly, the unknown one not_found, in order');
    }
    const viaOther = await request(d.main, 'POST', paths.readBlocks(other.realmId), { device: d.admin, json: { blockIds: [stored[0]!.blockId] } });
    t.match(decodeBlockReadAnswer(viaOther.body, [stored[0]!.blockId]), [{ error: { error: 'not_found' } }], 'batched read through another realm: not_found');
    const outsider = await addUser(d.main, d.admin, 'standard');
    expectError(t, await request(d.main, 'PUT', paths.block(realm.realmId, newId()), { device: outsider, raw: randomBytes(10) }), 403, 'forbidden', 'non-member writes a block');
    expectError(t, await request(d.main, 'POST', paths.readBlocks(realm.realmId), { device: outsider, json: { blockIds: [stored[0]!.blockId] } }), 403, 'forbidden', 'non-member reads blocks');
  });

  t.test(`${backend.name}: vlobs — versions, conflicts, as-of reads, changes`, async (t) => {
    const d = await deploy(t, backend);
    const realm = await createRealm(d.main, d.admin);
    const realmB = await createRealm(d.main, d.admin);
    const r = realm.realmId;
    const id = newId();
    const blobs = [randomBytes(200), randomBytes(300), randomBytes(400)];

    const c1 = await request(pick(d, 0), 'POST', paths.vlobs(r), { device: d.admin, json: createBody(id, blobs[0]!) });
    t.same([c1.status, c1.json], [201, { vlobId: id, version: 1, checkpoint: 1 }], 'v1 created at checkpoint 1');
    const dupCreate = await request(pick(d, 1), 'POST', paths.vlobs(r), { device: d.admin, json: createBody(id, randomBytes(10)) });
    expectError(t, dupCreate, 409, 'conflict', 'creating an existing vlob');
    t.equal(dupCreate.json.details?.currentVersion, 1, 'the conflict names the stored version');
    await sleep(3); // distinct server times for the as-of reads
    const u2 = await request(pick(d, 1), 'PUT', paths.vlob(r, id), { device: d.admin, json: updateBody(2, blobs[1]!) });
    t.same([u2.status, u2.json], [200, { vlobId: id, version: 2, checkpoint: 2 }], 'v2');
    for (const [version, what] of [[2, 'same version again'], [4, 'a version skipped'], [1, 'version 1 through PUT']] as const) {
      const res = await request(pick(d, 0), 'PUT', paths.vlob(r, id), { device: d.admin, json: updateBody(version, randomBytes(10)) });
      expectError(t, res, 409, 'conflict', what);
      t.equal(res.json.details?.currentVersion, 2, `${what}: currentVersion 2`);
    }
    const other = newId();
    const cOther = await request(pick(d, 1), 'POST', paths.vlobs(r), { device: d.admin, json: createBody(other, randomBytes(50)) });
    t.equal(cOther.json.checkpoint, 3, 'checkpoints count every write of the realm');
    await sleep(3);
    const u3 = await request(pick(d, 0), 'PUT', paths.vlob(r, id), { device: d.admin, json: updateBody(3, blobs[2]!) });
    t.same(u3.json, { vlobId: id, version: 3, checkpoint: 4 });

    // The same vlob id through another realm: refused (an id belongs to one realm forever).
    const crossCreate = await request(d.main, 'POST', paths.vlobs(realmB.realmId), { device: d.admin, json: createBody(id, randomBytes(10)) });
    expectError(t, crossCreate, 409, 'conflict', 'vlob id of another realm');
    const crossUpdate = await request(d.main, 'PUT', paths.vlob(realmB.realmId, id), { device: d.admin, json: updateBody(4, randomBytes(10)) });
    expectError(t, crossUpdate, 409, 'conflict', 'update through another realm');
    expectError(t, await request(d.main, 'GET', paths.vlob(realmB.realmId, id), { device: d.admin }), 404, 'not_found', 'read through another realm');

    // Reads: latest, exact versions, as of a server time — through every instance.
    const versions: Array<{ createdAt: number; author: string; blob: string }> = [];
    for (let v = 1; v <= 3; v++) {
      const res = await request(pick(d, v), 'GET', `${paths.vlob(r, id)}?version=${v}`, { device: d.admin });
      t.equal(res.status, 200);
      t.equal(res.json.version, v);
      t.equal(res.json.author, d.admin.deviceId, 'author is the writing device');
      t.equal(res.json.keyIndex, 1);
      t.ok(Number.isSafeInteger(res.json.createdAt) && Number.isSafeInteger(res.json.timestamp), 'times are integers (BIGINT columns read as numbers)');
      t.ok(Buffer.from(res.json.blob, 'base64').equals(blobs[v - 1]!), `v${v} bytes exact`);
      versions.push(res.json);
    }
    t.ok(versions[0]!.createdAt < versions[1]!.createdAt && versions[1]!.createdAt < versions[2]!.createdAt, 'server times increase');
    for (const s of d.servers) t.equal((await request(s, 'GET', paths.vlob(r, id), { device: d.admin })).json.version, 3, 'latest is v3');
    expectError(t, await request(d.main, 'GET', `${paths.vlob(r, id)}?version=4`, { device: d.admin }), 404, 'not_found', 'version not written');
    const asOf = async (at: number) => (await request(pick(d, at), 'GET', `${paths.vlob(r, id)}?at=${at}`, { device: d.admin })).json?.version as number | undefined;
    t.equal(await asOf(versions[0]!.createdAt), 1, 'as of v1 time: v1');
    t.equal(await asOf(versions[1]!.createdAt - 1), 1, 'just before v2: v1');
    t.equal(await asOf(versions[1]!.createdAt), 2, 'as of v2 time: v2');
    t.equal(await asOf(versions[2]!.createdAt + 60_000), 3, 'later: v3');
    expectError(t, await request(d.main, 'GET', `${paths.vlob(r, id)}?at=${versions[0]!.createdAt - 1}`, { device: d.admin }), 404, 'not_found', 'before v1');
    const atV2 = await request(d.main, 'GET', `${paths.vlob(r, id)}?version=2&at=${versions[2]!.createdAt}`, { device: d.admin });
    t.equal(atV2.json.version, 2, 'version and at together');

    // Batch read: latest of each, in the order asked, unknown ids listed as missing.
    const unknown = newId();
    const many = await request(pick(d, 1), 'POST', paths.readVlobs(r), { device: d.admin, json: { vlobIds: [other, unknown, id] } });
    t.equal(many.status, 200);
    t.same(
      many.json.vlobs.map((v: { vlobId: string; version: number }) => [v.vlobId, v.version]),
      [[other, 1], [id, 3]],
      'batch read: latest versions in request order',
    );
    t.same(many.json.missing, [unknown]);

    // Changes: latest version per vlob changed after a checkpoint, ordered by checkpoint.
    const changes = async (since?: number) =>
      (await request(pick(d, since ?? 0), 'GET', since === undefined ? paths.changes(r) : `${paths.changes(r)}?since=${since}`, { device: d.admin })).json;
    t.same(await changes(), { checkpoint: 4, changes: [{ vlobId: other, version: 1, checkpoint: 3 }, { vlobId: id, version: 3, checkpoint: 4 }] }, 'all changes');
    t.same(await changes(3), { checkpoint: 4, changes: [{ vlobId: id, version: 3, checkpoint: 4 }] }, 'since 3');
    t.same(await changes(4), { checkpoint: 4, changes: [] }, 'since the current checkpoint: nothing');
    t.same(
      (await request(d.main, 'GET', paths.changes(realmB.realmId), { device: d.admin })).json,
      { checkpoint: 0, changes: [] },
      'refused writes left the other realm untouched',
    );
    const empty = await request(d.main, 'POST', paths.vlobs(r), { device: d.admin, json: { vlobId: newId(), keyIndex: 1, timestamp: Date.now(), blob: '' } });
    expectError(t, empty, 400, 'bad_request', 'empty blob');
    t.equal((await changes()).checkpoint, 4, 'a refused write takes no checkpoint');
  });

  t.test(`${backend.name}: roles`, async (t) => {
    const d = await deploy(t, backend);
    const realm = await createRealm(d.main, d.admin);
    const r = realm.realmId;
    const alice = await addUser(d.main, d.admin, 'standard');
    const bob = await addUser(pick(d, 1), d.admin, 'standard');
    const outsider = await addUser(d.main, d.admin, 'outsider');
    const id = newId();
    t.equal((await request(d.main, 'POST', paths.vlobs(r), { device: d.admin, json: createBody(id, randomBytes(20)) })).status, 201);

    expectError(t, await request(pick(d, 1), 'GET', paths.vlob(r, id), { device: alice }), 403, 'forbidden', 'non-member reads');
    expectError(t, await request(d.main, 'GET', paths.vlob(newId(), id), { device: alice }), 404, 'not_found', 'unknown realm');

    const aliceKey = randomBytes(32);
    await mustGrant(pick(d, 1), d.admin, r, alice.userId, 'reader', alice.userBox.publicKey, aliceKey);
    t.equal((await request(d.main, 'GET', paths.vlob(r, id), { device: alice })).status, 200, 'reader reads (through the other instance)');
    expectError(t, await request(pick(d, 1), 'PUT', paths.vlob(r, id), { device: alice, json: updateBody(2, randomBytes(5)) }), 403, 'forbidden', 'reader writes');
    const aliceRealms = (await request(d.main, 'GET', paths.realms(), { device: alice })).json;
    t.same(aliceRealms.realms.map((x: { realmId: string; role: string }) => [x.realmId, x.role]), [[r, 'reader']], 'the reader lists the realm');
    t.equal(aliceRealms.realms[0].keys.length, 1, 'with the key sealed to her');

    await mustGrant(d.main, d.admin, r, alice.userId, 'contributor', alice.userBox.publicKey, aliceKey);
    t.equal((await request(pick(d, 1), 'PUT', paths.vlob(r, id), { device: alice, json: updateBody(2, randomBytes(5)) })).status, 200, 'contributor writes');
    await mustGrant(d.main, d.admin, r, bob.userId, 'manager', bob.userBox.publicKey);
    const members = (await request(pick(d, 1), 'GET', paths.members(r), { device: alice })).json.members as Array<{ userId: string; role: string }>;
    t.same(
      [...members].sort((a, b) => a.userId.localeCompare(b.userId)),
      [
        { userId: d.admin.userId, role: 'owner' },
        { userId: alice.userId, role: 'contributor' },
        { userId: bob.userId, role: 'manager' },
      ].sort((a, b) => a.userId.localeCompare(b.userId)),
      'members and roles',
    );
    expectError(t, await grant(d.main, bob, r, alice.userId, 'manager', alice.userBox.publicKey), 403, 'forbidden', 'manager grants manager');
    t.equal((await grant(pick(d, 1), bob, r, alice.userId, 'reader', alice.userBox.publicKey)).status, 200, 'manager demotes a contributor');
    expectError(t, await grant(d.main, d.admin, r, outsider.userId, 'manager', outsider.userBox.publicKey), 403, 'forbidden', 'outsider as manager');

    await mustGrant(pick(d, 1), d.admin, r, alice.userId, null, alice.userBox.publicKey);
    expectError(t, await request(d.main, 'GET', paths.vlob(r, id), { device: alice }), 403, 'forbidden', 'removed member reads');
    t.same((await request(pick(d, 1), 'GET', paths.realms(), { device: alice })).json, { realms: [] }, 'and no longer lists it (keys gone too)');

    // Users added concurrently through both instances: certificate indexes stay 1..n without gaps.
    const certsBefore = (await request(d.main, 'GET', paths.certificates(), { device: d.admin })).json.certificates as Array<{ index: number }>;
    const ts = Date.now(); // one timestamp: equal times may be appended in any order
    const ids = await Promise.all(Array.from({ length: 6 }, () => newIdentity(ORG, 'standard', d.admin.deviceId, d.admin.signingKey, ts)));
    const added = await Promise.all(
      ids.map((id, i) =>
        request(pick(d, i), 'POST', routePath(ROUTES.users, { org: ORG }), {
          device: d.admin,
          json: { userCertificate: b64(id.userCertificate), deviceCertificate: b64(id.deviceCertificate) },
        }),
      ),
    );
    t.same(added.map((x) => x.status), Array(6).fill(201), 'all concurrent additions succeed');
    const certs = (await request(pick(d, 1), 'GET', paths.certificates(), { device: d.admin })).json.certificates as Array<{ index: number }>;
    t.same(
      certs.map((c) => c.index),
      Array.from({ length: certsBefore.length + 12 }, (_, i) => i + 1),
      'certificates 1..n, two more per user (user + device), no gap, no duplicate',
    );
    // A certificate older than the last one is refused whole: the chain's time never goes backwards.
    const old = await newIdentity(ORG, 'standard', d.admin.deviceId, d.admin.signingKey, ts - 1000);
    const refused = await request(d.main, 'POST', routePath(ROUTES.users, { org: ORG }), {
      device: d.admin,
      json: { userCertificate: b64(old.userCertificate), deviceCertificate: b64(old.deviceCertificate) },
    });
    expectError(t, refused, 409, 'conflict', 'certificate older than the last');
    t.equal((await request(d.main, 'GET', paths.certificates(), { device: d.admin })).json.certificates.length, certs.length, 'nothing appended');
    expectError(t, await grant(d.main, d.admin, r, old.device.userId, 'reader', old.device.userBox.publicKey), 404, 'not_found', 'and the user was not created');
  });

  t.test(`${backend.name}: invitations — each step once, in order`, async (t) => {
    const d = await deploy(t, backend);
    const create = await request(d.main, 'POST', paths.invitations(), { device: d.admin, json: { type: 'user', handle: 'carol@acme.example' } });
    t.equal(create.status, 201);
    const { invitationId, token } = create.json as { invitationId: string; token: string };
    const claim = (i: number, body: Record<string, unknown>) => request(pick(d, i), 'POST', paths.claim(), { json: { token, ...body } });
    const greet = (i: number, body: Record<string, unknown>) => request(pick(d, i), 'POST', paths.greeter(invitationId), { device: d.admin, json: body });

    const listed = (await request(pick(d, 1), 'GET', paths.invitations(), { device: d.admin })).json.invitations;
    t.same(listed.map((x: { invitationId: string; status: string }) => [x.invitationId, x.status]), [[invitationId, 'pending']], 'listed as pending');
    expectError(t, await greet(1, { step: 'keys', publicKey: key32(), nonce: key32() }), 409, 'conflict', 'greeter before the claimer');
    expectError(t, await claim(0, { step: 'reveal', nonce: key32() }), 409, 'conflict', 'reveal before start');

    // Racing starts through both instances: exactly one wins.
    const starts = await Promise.all(Array.from({ length: 4 }, (_, i) => claim(i, { step: 'start', publicKey: key32(), commitment: key32() })));
    t.same(starts.map((s) => s.status).sort(), [200, 409, 409, 409], 'one start wins, the replays are conflicts');
    const won = starts.find((s) => s.status === 200)!.json;
    t.equal(won.status, 'claiming');
    const state = (await request(pick(d, 1), 'GET', paths.invitation(invitationId), { device: d.admin })).json;
    t.equal(state.claimerPublicKey, won.claimerPublicKey, 'the stored key is the winner\'s');

    const gk = await greet(1, { step: 'keys', publicKey: key32(), nonce: key32() });
    t.equal(gk.status, 200, 'greeter keys');
    expectError(t, await greet(0, { step: 'keys', publicKey: key32(), nonce: key32() }), 409, 'conflict', 'greeter keys twice');
    expectError(t, await claim(1, { step: 'payload', payload: b64(randomBytes(64)) }), 409, 'conflict', 'payload before reveal');
    t.equal((await claim(0, { step: 'reveal', nonce: key32() })).status, 200, 'reveal');
    expectError(t, await claim(1, { step: 'reveal', nonce: key32() }), 409, 'conflict', 'reveal twice');
    t.equal((await claim(1, { step: 'payload', payload: b64(randomBytes(64)) })).status, 200, 'claimer payload');
    const payload = b64(randomBytes(100));
    const done = await greet(0, { step: 'payload', payload });
    t.same([done.status, done.json.status], [200, 'done'], 'greeter payload completes it');
    expectError(t, await greet(1, { step: 'payload', payload }), 403, 'forbidden', 'greeter payload after done');
    expectError(t, await claim(0, { step: 'start', publicKey: key32(), commitment: key32() }), 403, 'forbidden', 'start after done');
    const poll = await claim(1, { step: 'poll' });
    t.same([poll.status, poll.json.status, poll.json.greeterPayload], [200, 'done', payload], 'the claimer still polls the result');
    t.same((await request(d.main, 'GET', paths.invitations(), { device: d.admin })).json.invitations, [], 'done invitations are not listed');

    const second = (await request(pick(d, 1), 'POST', paths.invitations(), { device: d.admin, json: { type: 'device' } })).json;
    const cancel = await request(d.main, 'DELETE', paths.invitation(second.invitationId), { device: d.admin });
    t.same([cancel.status, cancel.json.status], [200, 'cancelled']);
    expectError(t, await request(pick(d, 1), 'DELETE', paths.invitation(second.invitationId), { device: d.admin }), 403, 'forbidden', 'cancel twice');
    expectError(t, await request(d.main, 'POST', paths.claim(), { json: { token: second.token, step: 'start', publicKey: key32(), commitment: key32() } }), 403, 'forbidden', 'claim a cancelled invitation');
    expectError(t, await request(d.main, 'POST', paths.claim(), { json: { token: randomBytes(24).toString('base64url'), step: 'poll' } }), 404, 'not_found', 'unknown token');
  });

  t.test(`${backend.name}: a restart keeps everything`, async (t) => {
    const d = await deploy(t, backend);
    const realm = await createRealm(d.main, d.admin);
    const reader = await addUser(d.main, d.admin, 'standard');
    await mustGrant(d.main, d.admin, realm.realmId, reader.userId, 'reader', reader.userBox.publicKey);
    const blocks = [randomBytes(1), randomBytes(700_000)].map((data) => ({ id: newId(), data }));
    for (const b of blocks) t.equal((await request(d.main, 'PUT', paths.block(realm.realmId, b.id), { device: d.admin, raw: b.data })).status, 201);
    const vlobIds = [newId(), newId()];
    for (const id of vlobIds) {
      t.equal((await request(d.main, 'POST', paths.vlobs(realm.realmId), { device: d.admin, json: createBody(id, randomBytes(100)) })).status, 201);
      t.equal((await request(d.main, 'PUT', paths.vlob(realm.realmId, id), { device: d.admin, json: updateBody(2, randomBytes(120)) })).status, 200);
    }
    const inv = (await request(d.main, 'POST', paths.invitations(), { device: d.admin, json: { type: 'device' } })).json;

    const readAll = async (s: TestServer) => {
      const out: Record<string, unknown> = {};
      for (const b of blocks) {
        const res = await request(s, 'GET', paths.block(realm.realmId, b.id), { device: reader });
        out[`block ${b.id}`] = [res.status, res.body.equals(b.data)];
      }
      for (const id of vlobIds) {
        for (const v of [1, 2]) out[`vlob ${id} v${v}`] = (await request(s, 'GET', `${paths.vlob(realm.realmId, id)}?version=${v}`, { device: reader })).json;
      }
      out.changes = (await request(s, 'GET', paths.changes(realm.realmId), { device: reader })).json;
      out.realms = (await request(s, 'GET', paths.realms(), { device: reader })).json;
      out.members = (await request(s, 'GET', paths.members(realm.realmId), { device: reader })).json;
      out.certificates = (await request(s, 'GET', paths.certificates(), { device: reader })).json;
      out.invitations = (await request(s, 'GET', paths.invitations(), { device: d.admin })).json;
      return out;
    };
    const before = await readAll(d.main);
    for (const b of blocks) t.same(before[`block ${b.id}`], [200, true], 'block readable before');
    t.equal((before.changes as { checkpoint: number }).checkpoint, 4);
    t.equal((before.invitations as { invitations: unknown[] }).invitations.length, 1);

    for (const s of d.servers) await s.restart();
    t.same(await readAll(d.main), before, 'identical after restarting every instance');
    if (backend.shared) {
      // A brand-new instance (empty data directory) serves the same data: nothing lives on an instance.
      const fresh = await d.another();
      t.same(await readAll(fresh), before, 'identical through a new instance');
    }
    // Writing continues where it stopped.
    const cont = await request(d.main, 'PUT', paths.vlob(realm.realmId, vlobIds[0]!), { device: d.admin, json: updateBody(3, randomBytes(10)) });
    t.same(cont.json, { vlobId: vlobIds[0], version: 3, checkpoint: 5 }, 'next version and checkpoint after the restart');
    const stale = await request(pick(d, 1), 'PUT', paths.vlob(realm.realmId, vlobIds[1]!), { device: d.admin, json: updateBody(2, randomBytes(10)) });
    expectError(t, stale, 409, 'conflict', 'conflicts still detected');
    const b0 = blocks[0]!;
    t.same((await request(d.main, 'PUT', paths.block(realm.realmId, b0.id), { device: d.admin, raw: b0.data })).json, { blockId: b0.id, created: false });
    const claim = await request(d.main, 'POST', paths.claim(), { json: { token: inv.token, step: 'start', publicKey: key32(), commitment: key32() } });
    t.equal(claim.status, 200, 'the invitation made before the restart is claimable');
  });

  t.test(`${backend.name}: races ${backend.shared ? 'between two instances' : 'within the instance'} — one winner each`, async (t) => {
    const d = await deploy(t, backend);
    t.equal(d.servers.length, backend.shared ? 2 : 1);
    const realm = await createRealm(d.main, d.admin);
    const r = realm.realmId;
    const N = 8;

    // Vlob updates: every round, N writers (alternating instances) want the same next version.
    const id = newId();
    t.equal((await request(d.main, 'POST', paths.vlobs(r), { device: d.admin, json: createBody(id, randomBytes(10)) })).status, 201);
    for (let version = 2; version <= 6; version++) {
      const blobs = Array.from({ length: N }, () => randomBytes(64));
      const res = await Promise.all(blobs.map((b, i) => request(pick(d, i), 'PUT', paths.vlob(r, id), { device: d.admin, json: updateBody(version, b) })));
      const winners = res.flatMap((x, i) => (x.status === 200 ? [i] : []));
      t.equal(winners.length, 1, `v${version}: exactly one 200 (${res.map((x) => x.status).join(' ')})`);
      t.ok(
        res.every((x) => x.status === 200 || (x.status === 409 && x.json?.error === 'conflict' && x.json.details?.currentVersion === version)),
        `v${version}: every other writer got 409 with currentVersion ${version}`,
      );
      const latest = await request(pick(d, version), 'GET', paths.vlob(r, id), { device: d.admin });
      t.ok(Buffer.from(latest.json.blob, 'base64').equals(blobs[winners[0]!]!), `v${version}: the stored blob is the winner's`);
    }

    // Creating the same vlob id: in one realm, and in two realms at once (no realm lock in common).
    const fresh = newId();
    const creates = await Promise.all(Array.from({ length: N }, (_, i) => request(pick(d, i), 'POST', paths.vlobs(r), { device: d.admin, json: createBody(fresh, randomBytes(8)) })));
    t.same(creates.map((x) => x.status).sort(), [201, ...Array(N - 1).fill(409)], 'same new id: one 201');
    const realmB = await createRealm(d.main, d.admin);
    for (let round = 0; round < 3; round++) {
      const shared = newId();
      const res = await Promise.all(
        Array.from({ length: 4 }, (_, i) => request(pick(d, i), 'POST', paths.vlobs(i % 2 === 0 ? r : realmB.realmId), { device: d.admin, json: createBody(shared, randomBytes(8)) })),
      );
      t.same(res.map((x) => x.status).sort(), [201, 409, 409, 409], `one id created through two realms at once: one 201 (round ${round})`);
      t.ok(res.every((x) => x.status === 201 || x.json?.details?.currentVersion === 1), 'losers see version 1');
    }

    // Many different vlobs at once: checkpoints stay unique and contiguous, and the change list matches.
    const base = (await request(d.main, 'GET', paths.changes(r), { device: d.admin })).json.checkpoint as number;
    const ids = Array.from({ length: 20 }, () => newId());
    const made = await Promise.all(ids.map((v, i) => request(pick(d, i), 'POST', paths.vlobs(r), { device: d.admin, json: createBody(v, randomBytes(16)) })));
    t.ok(made.every((x) => x.status === 201), 'all distinct creates succeed');
    const cps = made.map((x) => x.json.checkpoint as number).sort((a, b) => a - b);
    t.same(cps, Array.from({ length: 20 }, (_, i) => base + 1 + i), 'checkpoints unique and contiguous');
    const listed = (await request(pick(d, 1), 'GET', `${paths.changes(r)}?since=${base}`, { device: d.admin })).json;
    t.equal(listed.checkpoint, base + 20);
    t.same(
      listed.changes.map((c: { vlobId: string; checkpoint: number }) => `${c.checkpoint} ${c.vlobId}`),
      made.map((x, i) => ({ cp: x.json.checkpoint as number, id: ids[i]! })).sort((a, b) => a.cp - b.cp).map((x) => `${x.cp} ${x.id}`),
      'the change list names each vlob at the checkpoint its writer was given',
    );

    // Blocks: different bytes under one id — one 201, the rest 409, and the stored bytes are the winner's.
    for (let round = 0; round < 4; round++) {
      const blockId = newId();
      const candidates = Array.from({ length: 6 }, () => randomBytes(200_000));
      const res = await Promise.all(candidates.map((raw, i) => request(pick(d, i), 'PUT', paths.block(r, blockId), { device: d.admin, raw })));
      const winners = res.flatMap((x, i) => (x.status === 201 ? [i] : []));
      t.equal(winners.length, 1, `block round ${round}: exactly one 201 (${res.map((x) => x.status).join(' ')})`);
      t.ok(res.every((x) => x.status === 201 || (x.status === 409 && x.json?.error === 'exists')), 'the others: 409 exists');
      for (const s of d.servers) {
        const got = await request(s, 'GET', paths.block(r, blockId), { device: d.admin });
        t.ok(got.status === 200 && got.body.equals(candidates[winners[0]!]!), `block round ${round}: every instance serves the winner's bytes`);
      }
    }
    // Identical bytes under one id: one creates, the others are idempotent.
    const same = randomBytes(300_000);
    const sameId = newId();
    const sameRes = await Promise.all(Array.from({ length: 6 }, (_, i) => request(pick(d, i), 'PUT', paths.block(r, sameId), { device: d.admin, raw: same })));
    t.same(sameRes.map((x) => x.status).sort(), [200, 200, 200, 200, 200, 201], 'identical concurrent PUTs: one 201, five 200');
    t.ok((await request(pick(d, 1), 'GET', paths.block(r, sameId), { device: d.admin })).body.equals(same));
  });

  if (backend.outage) {
    const outage = backend.outage;
    t.test(`${backend.name}: an unreachable database or bucket is 503 (retryable), then service resumes`, async (t) => {
      const d = await deploy(t, backend);
      const realm = await createRealm(d.main, d.admin);
      const id = newId();
      t.equal((await request(d.main, 'POST', paths.vlobs(realm.realmId), { device: d.admin, json: createBody(id, randomBytes(10)) })).status, 201);
      const block = { id: newId(), data: randomBytes(50_000) };
      t.equal((await request(d.main, 'PUT', paths.block(realm.realmId, block.id), { device: d.admin, raw: block.data })).status, 201);

      await outage.metadata.pause();
      try {
        for (const s of d.servers) {
          expectError(t, await request(s, 'GET', paths.vlob(realm.realmId, id), { device: d.admin }), 503, 'unavailable', 'vlob read, database down');
          expectError(t, await request(s, 'PUT', paths.vlob(realm.realmId, id), { device: d.admin, json: updateBody(2, randomBytes(5)) }), 503, 'unavailable', 'vlob write, database down');
        }
      } finally {
        await outage.metadata.resume();
      }
      const after = await request(pick(d, 1), 'PUT', paths.vlob(realm.realmId, id), { device: d.admin, json: updateBody(2, randomBytes(5)) });
      t.same([after.status, after.json.version], [200, 2], 'the retried write succeeds once the database is back (pools reconnect)');

      const late = { id: newId(), data: randomBytes(60_000) };
      await outage.blocks.pause();
      try {
        expectError(t, await request(d.main, 'GET', paths.block(realm.realmId, block.id), { device: d.admin }), 503, 'unavailable', 'block read, bucket down');
        expectError(t, await request(pick(d, 1), 'PUT', paths.block(realm.realmId, late.id), { device: d.admin, raw: late.data }), 503, 'unavailable', 'block write, bucket down');
      } finally {
        await outage.blocks.resume();
      }
      const got = await request(pick(d, 1), 'GET', paths.block(realm.realmId, block.id), { device: d.admin });
      t.ok(got.status === 200 && got.body.equals(block.data), 'blocks readable again');
      const retry = await request(d.main, 'PUT', paths.block(realm.realmId, late.id), { device: d.admin, raw: late.data });
      t.ok(retry.status === 200 || retry.status === 201, `the failed upload retried succeeds (${retry.status})`);
      const lateGot = await request(pick(d, 1), 'GET', paths.block(realm.realmId, late.id), { device: d.admin });
      t.ok(lateGot.status === 200 && lateGot.body.equals(late.data), 'and its bytes are stored');
      const otherBytes = await request(d.main, 'PUT', paths.block(realm.realmId, late.id), { device: d.admin, raw: randomBytes(60_000) });
      expectError(t, otherBytes, 409, 'exists', 'other bytes under that id still refused');
    });
  }
}

for (const backend of backends) conformance(backend);

t.test('postgres+swift: an expired or forgotten Swift token is renewed without the client noticing', async (t) => {
  const d = await deploy(t, backends.find((b) => b.name === 'postgres+swift')!);
  const realm = await createRealm(d.main, d.admin);
  const a = { id: newId(), data: randomBytes(70_000) };
  t.equal((await request(d.main, 'PUT', paths.block(realm.realmId, a.id), { device: d.admin, raw: a.data })).status, 201);
  // TempAuth keeps its tokens in memcached: restarting it invalidates every token the instances hold.
  await swift.forgetTokens();
  for (const s of d.servers) {
    const got = await request(s, 'GET', paths.block(realm.realmId, a.id), { device: d.admin });
    t.ok(got.status === 200 && got.body.equals(a.data), 'read after the token was forgotten: 401 from Swift, new token, same request again');
  }
  const b = { id: newId(), data: randomBytes(80_000) };
  t.equal((await request(pick(d, 1), 'PUT', paths.block(realm.realmId, b.id), { device: d.admin, raw: b.data })).status, 201, 'writes too');
});

// ---------------------------------------------------------------------------------------------
// Storage settings

t.test('storage URLs: parsing, defaults and clear refusals', async (t) => {
  const dir = '/srv/coffer';
  t.same(parseMetadataSetting(undefined, dir), { kind: 'sqlite', file: '/srv/coffer/metadata.sqlite' }, 'default metadata');
  t.same(parseMetadataSetting('sqlite:', dir), { kind: 'sqlite', file: '/srv/coffer/metadata.sqlite' });
  t.same(parseMetadataSetting('sqlite:/var/lib/m.sqlite', dir), { kind: 'sqlite', file: '/var/lib/m.sqlite' });
  t.same(parseMetadataSetting('postgresql://coffer@db:5432/coffer', dir), { kind: 'postgres', url: 'postgresql://coffer@db:5432/coffer' });
  t.same(parseBlocksSetting(undefined, dir, {}), { kind: 'folder', dir: '/srv/coffer/blocks' }, 'default blocks');
  t.same(parseBlocksSetting('folder:/data/blocks', dir, {}), { kind: 'folder', dir: '/data/blocks' });
  t.same(
    parseBlocksSetting('s3://AK:S%2FK@my-bucket/coffer/blocks/?endpoint=http://127.0.0.1:9000&region=eu-west-3', dir, {}),
    {
      kind: 's3',
      bucket: 'my-bucket',
      prefix: 'coffer/blocks/',
      endpoint: 'http://127.0.0.1:9000',
      region: 'eu-west-3',
      credentials: { accessKeyId: 'AK', secretAccessKey: 'S/K' },
      forcePathStyle: true,
    },
    'S3 URL with credentials, prefix, endpoint',
  );
  t.same(
    parseBlocksSetting('s3://bucket-x', dir, { AWS_ACCESS_KEY_ID: 'EK', AWS_SECRET_ACCESS_KEY: 'ES', AWS_REGION: 'us-west-2' }),
    { kind: 's3', bucket: 'bucket-x', prefix: '', region: 'us-west-2', credentials: { accessKeyId: 'EK', secretAccessKey: 'ES' }, forcePathStyle: false },
    'AWS itself: credentials and region from the environment, virtual-hosted style',
  );
  t.same(
    parseBlocksSetting('swift://coffer%3Ablocks:s3cr%2Ft@swift.example:8080/coffer-blocks/org/a?auth=v1', dir, {}),
    { kind: 'swift', authUrl: 'http://swift.example:8080/auth/v1.0', user: 'coffer:blocks', key: 's3cr/t', container: 'coffer-blocks', prefix: 'org/a/' },
    'Swift URL: account:user, key, container, prefix (native API, TempAuth v1)',
  );
  t.same(
    parseBlocksSetting('swift://acct%3Au@h:443/c?tls=true&authPath=/auth/v1', dir, { SWIFT_KEY: 'from-env' }),
    { kind: 'swift', authUrl: 'https://h:443/auth/v1', user: 'acct:u', key: 'from-env', container: 'c', prefix: '' },
    'Swift URL: TLS, auth path, key from SWIFT_KEY',
  );
  for (const [value, what] of [
    ['swift://h:8080/c', 'no user'],
    ['swift://acct%3Au@h:8080/c', 'no key'],
    ['swift://user:k@h:8080/c', 'user without account'],
    ['swift://a%3Au:k@h:8080/', 'no container'],
    ['swift://a%3Au:k@h:8080/c?auth=v3', 'keystone v3 not supported'],
    ['swift://a%3Au:k@h:8080/c?region=x', 'unknown parameter'],
  ] as const) {
    t.throws(() => parseBlocksSetting(value, dir, {}), BadInputError, what);
  }
  t.equal(redactUrl('swift://coffer%3Ablocks:secret@h:8080/c'), 'swift://coffer%3Ablocks:***@h:8080/c');
  for (const [value, what] of [
    ['mysql://x@h/db', 'unknown metadata scheme'],
    ['postgresql://user@host:5432', 'no database'],
  ] as const) {
    t.throws(() => parseMetadataSetting(value, dir), BadInputError, what);
  }
  try {
    parseMetadataSetting('redis://u:secret@h/0', dir);
  } catch (err) {
    t.match((err as Error).message, /unknown metadata store .*use sqlite: .* or postgresql:\/\//, 'the message says what is accepted');
    t.notMatch((err as Error).message, /secret/, 'and does not echo the password');
  }
  for (const [value, what] of [
    ['gcs://bucket', 'unknown blocks scheme'],
    ['s3://Bad_Bucket', 'invalid bucket name'],
    ['s3://bucket?endpoint=ftp://x', 'endpoint not http(s)'],
    ['s3://bucket?endpont=http://x', 'misspelt parameter'],
    ['s3://onlykey@bucket', 'key without secret'],
    ['s3://bucket?pathStyle=yes', 'pathStyle not a boolean'],
  ] as const) {
    t.throws(() => parseBlocksSetting(value, dir, {}), BadInputError, what);
  }
  t.equal(redactUrl('postgresql://coffer:hunter2@db:5432/coffer'), 'postgresql://coffer:***@db:5432/coffer');
  t.equal(redactUrl('s3://AK:SK@bucket/p?endpoint=http://h:1'), 's3://AK:***@bucket/p?endpoint=http://h:1');
});

t.test('storage URLs: unusable stores fail at startup with a clear message', async (t) => {
  const dataDir = await mkdtemp(join(tmpdir(), 'coffer-urls-'));
  t.teardown(() => rm(dataDir, { recursive: true, force: true }));
  const closedPort = await freePort();
  await t.rejects(
    startServer({ dataDir, host: '127.0.0.1', port: 0, adminToken: 'x', metadataUrl: `postgresql://postgres:pw@127.0.0.1:${closedPort}/coffer` }),
    /cannot open the PostgreSQL metadata store postgresql:\/\/postgres:\*\*\*@127\.0\.0\.1:\d+\/coffer/,
    'PostgreSQL not listening: named (password hidden)',
  );
  await t.rejects(
    openStores({ dataDir, metadata: await pgCluster.createDatabase(), blocks: `s3://S3RVER:S3RVER@no-such-bucket?endpoint=${s3.endpoint}` }),
    /S3 bucket no-such-bucket at http:\/\/127\.0\.0\.1:\d+ does not exist/,
    'missing bucket',
  );
  const missingContainer = (await swift.createContainer()).replace(/\/coffer-[0-9a-f]+\//, '/no-such-container/');
  await t.rejects(openStores({ dataDir, metadata: 'sqlite:', blocks: missingContainer }), /Swift container no-such-container at .* does not exist/, 'missing Swift container');
  const badKey = (await swift.createContainer()).replace(/:([0-9a-f]+)@/, ':wrong-key@');
  await t.rejects(openStores({ dataDir, metadata: 'sqlite:', blocks: badKey }), /refused the Swift credentials of coffer:blocks/, 'wrong Swift key');
  await t.rejects(startServer({ dataDir, host: '127.0.0.1', port: 0, adminToken: 'x', blocksUrl: 'ftp://x' }), BadInputError, 'unknown scheme refused');
  // Migrations are recorded and idempotent: a second open of the same database applies nothing.
  const url = await pgCluster.createDatabase();
  const a = await openStores({ dataDir, metadata: url, blocks: `folder:${dataDir}/b` });
  const b = await openStores({ dataDir, metadata: url, blocks: `folder:${dataDir}/b` });
  t.ok(a.metadata instanceof PostgresMetadataStore && b.metadata instanceof PostgresMetadataStore);
  t.equal(await (b.metadata as PostgresMetadataStore).schemaVersion(), PostgresMetadataStore.SCHEMA_VERSION, 'schema_migrations records every migration once');
  await Promise.all([a.close(), b.close()]);
  // The two stores evolve together: as many PostgreSQL migrations as SQLite ones.
  const lite = await openStores({ dataDir, metadata: 'sqlite:', blocks: 'folder:' });
  await lite.close();
  const db = new Database(join(dataDir, 'metadata.sqlite'), { readonly: true });
  t.equal(PostgresMetadataStore.SCHEMA_VERSION, db.pragma('user_version', { simple: true }), 'a migration added to the SQLite store needs its PostgreSQL twin');
  db.close();
});

t.test('coffer server --metadata/--blocks (and COFFER_*_URL) runs on PostgreSQL + S3', async (t) => {
  const [metadataUrl, blocksUrl] = await Promise.all([pgCluster.createDatabase(), s3.createBucket()]);
  const cli = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url));
  const dataDir = await mkdtemp(join(tmpdir(), 'coffer-cli-'));
  t.teardown(() => rm(dataDir, { recursive: true, force: true }));
  const child = spawn(process.execPath, ['--import', 'tsx', cli, 'server', '--port', '0', '--data', dataDir, '--admin-token', 'cli-admin-token-0123456789', '--metadata', metadataUrl], {
    env: { ...process.env, COFFER_BLOCKS_URL: blocksUrl, AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  let out = '';
  let err = '';
  child.stderr.on('data', (c: Buffer) => (err += c.toString()));
  const url = await new Promise<string>((resolve, reject) => {
    child.stdout.on('data', (c: Buffer) => {
      out += c.toString();
      const m = /listening on (http:\/\/\S+)/.exec(out);
      if (m && out.includes('blocks:')) resolve(m[1]!);
    });
    child.once('exit', (code) => reject(new Error(`coffer server exited ${code}: ${err.slice(-1000)}`)));
  });
  t.match(out, /metadata: postgresql:\/\/postgres@127\.0\.0\.1:\d+\/coffer_/, 'prints the metadata store');
  t.match(out, /blocks: s3:\/\/S3RVER:\*\*\*@coffer-/, 'prints the block store, secret hidden');
  const server = { url, adminToken: 'cli-admin-token-0123456789' };
  const admin = await bootstrapOrg(server, ORG);
  const realm = await createRealm(server, admin);
  const data = randomBytes(1000);
  const blockId = newId();
  t.equal((await request(server, 'PUT', paths.block(realm.realmId, blockId), { device: admin, raw: data })).status, 201);
  // Another in-process instance on the same stores sees what the CLI server wrote.
  const peer = await startTestServer({ teardown: (fn) => t.teardown(fn), adminToken: server.adminToken, metadataUrl, blocksUrl });
  t.ok((await request(peer, 'GET', paths.block(realm.realmId, blockId), { device: admin })).body.equals(data), 'a peer instance reads the block');
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  t.equal(await exited, 0, 'SIGTERM drains and exits 0');
});
