/**
 * The server API over real HTTP (loopback, temp data dir): organizations, certificates, realms,
 * roles, blocks, vlobs, and device-signature authentication.
 */
import { randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import t, { type Test } from 'tap';
import { generateSigningKeyPair, openSealed, sodiumReady } from '../../src/crypto/index.js';
import { peekCertificate, signCertificate, verifyCertificate } from '../../src/model/certificates.js';
import { newId } from '../../src/model/ids.js';
import { buildAuthHeader } from '../../src/protocol/auth.js';
import { ServerConnection } from '../../src/client/connection.js';
import { decodeBlockReadAnswer } from '../../src/protocol/block-batch.js';
import { MAX_BLOCK_BYTES, MAX_BLOCK_READ_BATCH, MAX_BLOCK_READ_BYTES, MAX_BLOCK_WRITE_BATCH, MAX_VLOB_WRITE_BATCH, ROUTES, routePath } from '../../src/protocol/schemas.js';
import { addUser, bootstrapOrg, bootstrapRequest, createOrg, createRealm, grant, mustGrant, newIdentity, realmKeyCertificate } from '../helpers/org.js';
import { blockBatchBody, isErrorBody, request, startTestServer, type DeviceCredentials, type TestResponse } from '../helpers/server.js';

await sodiumReady();
const server = await startTestServer({ teardown: (fn) => t.teardown(fn) });

const b64 = (u8: Uint8Array) => Buffer.from(u8).toString('base64');
const paths = {
  users: (org: string) => routePath(ROUTES.users, { org }),
  certificates: (org: string) => routePath(ROUTES.certificates, { org }),
  realms: (org: string) => routePath(ROUTES.realms, { org }),
  block: (org: string, realm: string, block: string) => routePath(ROUTES.block, { org, realm, block }),
  vlobs: (org: string, realm: string) => routePath(ROUTES.vlobs, { org, realm }),
  vlob: (org: string, realm: string, vlob: string) => routePath(ROUTES.vlob, { org, realm, vlob }),
  readVlobs: (org: string, realm: string) => routePath(ROUTES.readVlobs, { org, realm }),
  writeVlobs: (org: string, realm: string) => routePath(ROUTES.writeVlobs, { org, realm }),
  writeBlocks: (org: string, realm: string) => routePath(ROUTES.writeBlocks, { org, realm }),
  readBlocks: (org: string, realm: string) => routePath(ROUTES.readBlocks, { org, realm }),
  changes: (org: string, realm: string) => routePath(ROUTES.changes, { org, realm }),
  role: (org: string, realm: string, user: string) => routePath(ROUTES.role, { org, realm, user }),
};

/** Asserts the status and that the body is a proper `{ error, message }` error body. */
function expectError(t: Test, res: TestResponse, status: number | number[], code?: string, what = ''): void {
  const allowed = Array.isArray(status) ? status : [status];
  t.ok(allowed.includes(res.status), `${what} status ${res.status} in [${allowed.join(', ')}]`.trim());
  t.ok(isErrorBody(res.json), `${what} error body is { error, message }: ${res.body.toString('utf8').slice(0, 200)}`.trim());
  if (code !== undefined) t.equal(res.json?.error, code, `${what} error code`.trim());
}

function vlobBody(vlobId: string, blob: Buffer, timestamp = Date.now()) {
  return { vlobId, keyIndex: 1, timestamp, blob: b64(blob) };
}

function updateBody(version: number, blob: Buffer, timestamp = Date.now()) {
  return { version, keyIndex: 1, timestamp, blob: b64(blob) };
}

// Shared fixture: organization "acme" with an admin and a few users.
const admin = await bootstrapOrg(server, 'acme');

t.test('health answers without authentication', async (t) => {
  const res = await server.request('GET', ROUTES.health);
  t.equal(res.status, 200);
  t.same(res.json, { status: 'ok' });
});

t.test('organization creation needs the administration token', async (t) => {
  const missing = await request(server, 'POST', ROUTES.orgs, { json: { orgId: 'nope' } });
  expectError(t, missing, 401, 'unauthorized', 'missing token');
  const wrong = await request(server, 'POST', ROUTES.orgs, { json: { orgId: 'nope' }, headers: { 'x-coffer-admin-token': `${server.adminToken}x` } });
  expectError(t, wrong, 401, 'unauthorized', 'wrong token');
  const empty = await request(server, 'POST', ROUTES.orgs, { json: { orgId: 'nope' }, headers: { 'x-coffer-admin-token': '' } });
  expectError(t, empty, 401, 'unauthorized', 'empty token');
  const badId = await request(server, 'POST', ROUTES.orgs, { json: { orgId: 'no spaces!' }, headers: { 'x-coffer-admin-token': server.adminToken } });
  expectError(t, badId, 400, 'bad_request', 'bad org id');

  const ok = await request(server, 'POST', ROUTES.orgs, { json: { orgId: 'umbrella' }, headers: { 'x-coffer-admin-token': server.adminToken } });
  t.equal(ok.status, 201);
  t.equal(ok.json.orgId, 'umbrella');
  t.type(ok.json.bootstrapToken, 'string');
  t.ok(ok.json.bootstrapToken.length >= 16, 'bootstrap token is long');

  const dup = await request(server, 'POST', ROUTES.orgs, { json: { orgId: 'umbrella' }, headers: { 'x-coffer-admin-token': server.adminToken } });
  expectError(t, dup, 409, 'exists', 'duplicate');
  // The refused attempts created nothing: "nope" can still be created.
  t.type(await createOrg(server, 'nope'), 'string');
});

t.test('bootstrap', async (t) => {
  const org = 'initech';
  const token = await createOrg(server, org);
  const path = routePath(ROUTES.bootstrap, { org });

  const unknown = await bootstrapRequest('nosuchorg', token);
  expectError(t, await request(server, 'POST', routePath(ROUTES.bootstrap, { org: 'nosuchorg' }), { json: unknown.body }), 404, 'not_found', 'unknown org');

  const wrongToken = await bootstrapRequest(org, randomBytes(24).toString('hex'));
  expectError(t, await request(server, 'POST', path, { json: wrongToken.body }), 403, 'forbidden', 'wrong token');

  // Certificates signed by a key other than the declared root key.
  const forged = await bootstrapRequest(org, token);
  const otherRoot = generateSigningKeyPair();
  const badSig = { ...forged.body, rootVerifyKey: b64(otherRoot.publicKey) };
  expectError(t, await request(server, 'POST', path, { json: badSig }), 400, 'bad_request', 'certificate signed by another key');

  // A flipped byte inside the signed certificate.
  const flipped = Buffer.from(forged.body.userCertificate, 'base64');
  flipped[flipped.length - 1]! ^= 0x01;
  expectError(t, await request(server, 'POST', path, { json: { ...forged.body, userCertificate: b64(flipped) } }), 400, 'bad_request', 'tampered certificate');

  const notAdmin = await bootstrapRequest(org, token, { profile: 'standard' });
  expectError(t, await request(server, 'POST', path, { json: notAdmin.body }), 400, 'bad_request', 'first user not admin');

  // Device certificate of another user (both signed by the same root).
  const a = await bootstrapRequest(org, token);
  const other = await newIdentity(org, 'admin', 'root', a.root.secretKey);
  const mixed = { ...a.body, deviceCertificate: b64(other.deviceCertificate) };
  expectError(t, await request(server, 'POST', path, { json: mixed }), 400, 'bad_request', 'device of another user');

  // Certificates far in the past.
  const stale = await newIdentity(org, 'admin', 'root', a.root.secretKey, Date.now() - 60 * 60 * 1000);
  const staleBody = { ...a.body, userCertificate: b64(stale.userCertificate), deviceCertificate: b64(stale.deviceCertificate) };
  expectError(t, await request(server, 'POST', path, { json: staleBody }), 400, 'bad_request', 'stale certificates');

  // None of the refusals consumed the bootstrap: the genuine one succeeds once.
  const good = await bootstrapRequest(org, token);
  const ok = await request(server, 'POST', path, { json: good.body });
  t.equal(ok.status, 201, 'bootstrap succeeds');
  t.same(ok.json, { orgId: org });
  const again = await bootstrapRequest(org, token);
  expectError(t, await request(server, 'POST', path, { json: again.body }), 409, 'exists', 'second bootstrap');
  expectError(t, await request(server, 'POST', path, { json: good.body }), 409, 'exists', 'replayed bootstrap');

  // The bootstrapped admin device works.
  const list = await request(server, 'GET', paths.realms(org), { device: good.device });
  t.equal(list.status, 200);
  t.same(list.json, { realms: [] });
});

t.test('users and certificates', async (t) => {
  const org = 'hooli';
  const boss = await bootstrapOrg(server, org);
  const all0 = await request(server, 'GET', paths.certificates(org), { device: boss });
  t.equal(all0.status, 200);
  t.same(
    all0.json.certificates.map((c: { index: number }) => c.index),
    [1, 2],
    'bootstrap wrote the user then the device certificate',
  );
  const first = peekCertificate(Buffer.from(all0.json.certificates[0].blob, 'base64'));
  t.equal(first.type, 'user');
  t.equal(first.type === 'user' && first.userId, boss.userId);
  t.equal(first.author, 'root');

  const standard = await addUser(server, boss, 'standard');
  const outsider = await addUser(server, boss, 'outsider');
  const all = await request(server, 'GET', paths.certificates(org), { device: standard });
  t.same(
    all.json.certificates.map((c: { index: number }) => c.index),
    [1, 2, 3, 4, 5, 6],
  );
  const since2 = await request(server, 'GET', `${paths.certificates(org)}?since=2`, { device: standard });
  t.equal(since2.status, 200);
  t.same(
    since2.json.certificates.map((c: { index: number }) => c.index),
    [3, 4, 5, 6],
    'since=2 lists only later certificates',
  );
  const verifyKeyOf = (author: string) => (author === boss.deviceId ? boss.verifyKey : undefined);
  const c3 = verifyCertificate(Buffer.from(since2.json.certificates[0].blob, 'base64'), verifyKeyOf);
  t.ok(c3.type === 'user' && c3.userId === standard.userId && c3.profile === 'standard', 'certificate 3 is the added user, signed by the admin device');
  const c6 = verifyCertificate(Buffer.from(since2.json.certificates[3].blob, 'base64'), verifyKeyOf);
  t.ok(c6.type === 'device' && c6.deviceId === outsider.deviceId, 'certificate 6 is the outsider device');
  const since6 = await request(server, 'GET', `${paths.certificates(org)}?since=6`, { device: boss });
  t.same(since6.json, { certificates: [] });
  expectError(t, await request(server, 'GET', `${paths.certificates(org)}?since=-1`, { device: boss }), 400, 'bad_request', 'negative since');
  expectError(t, await request(server, 'GET', paths.certificates(org)), 401, 'unauthorized', 'anonymous');

  // Only an admin adds users; certificates must be signed by the calling device.
  const id = await newIdentity(org, 'standard', standard.deviceId, standard.signingKey);
  const byStandard = await request(server, 'POST', paths.users(org), {
    device: standard,
    json: { userCertificate: b64(id.userCertificate), deviceCertificate: b64(id.deviceCertificate) },
  });
  expectError(t, byStandard, 403, 'forbidden', 'non-admin adds a user');
  const wrongSigner = await request(server, 'POST', paths.users(org), {
    device: boss,
    json: { userCertificate: b64(id.userCertificate), deviceCertificate: b64(id.deviceCertificate) },
  });
  expectError(t, wrongSigner, 400, 'bad_request', 'certificates signed by another device');
  const dupId = await newIdentity(org, 'standard', boss.deviceId, boss.signingKey);
  const dupBody = { userCertificate: b64(dupId.userCertificate), deviceCertificate: b64(dupId.deviceCertificate) };
  t.equal((await request(server, 'POST', paths.users(org), { device: boss, json: dupBody })).status, 201);
  expectError(t, await request(server, 'POST', paths.users(org), { device: boss, json: dupBody }), 409, 'exists', 'same user twice');
  const after = await request(server, 'GET', paths.certificates(org), { device: boss });
  t.equal(after.json.certificates.length, 8, 'refused user creations appended nothing');
});

t.test('realms: create and list', async (t) => {
  const owner = await addUser(server, admin, 'standard');
  const r1 = await createRealm(server, owner);
  const r2 = await createRealm(server, owner);
  const list = await request(server, 'GET', paths.realms('acme'), { device: owner });
  t.equal(list.status, 200);
  const byId = new Map<string, { role: string; keys: Array<{ keyIndex: number; sealedKey: string }> }>(
    list.json.realms.map((r: { realmId: string }) => [r.realmId, r]),
  );
  t.equal(byId.size, 2, 'two realms listed');
  for (const r of [r1, r2]) {
    const got = byId.get(r.realmId);
    t.equal(got?.role, 'owner');
    t.same(got?.keys, [{ keyIndex: 1, sealedKey: b64(r.sealedKey) }], 'the sealed key is returned as stored');
    const opened = openSealed(Buffer.from(got!.keys[0]!.sealedKey, 'base64'), owner.userBox.publicKey, owner.userBox.secretKey);
    t.ok(opened.equals(r.workspaceKey), 'the owner opens the workspace key');
  }
  const dup = await request(server, 'POST', paths.realms('acme'), {
    device: owner,
    json: {
      realmId: r1.realmId,
      keyIndex: 1,
      sealedKey: b64(r1.sealedKey),
      roleCertificate: b64(
        signCertificate({ type: 'realm_role', realmId: r1.realmId, userId: owner.userId, role: 'owner', timestamp: Date.now(), author: owner.deviceId }, owner.signingKey),
      ),
      keyCertificate: b64(realmKeyCertificate(owner, r1.realmId, r1.workspaceKey)),
    },
  });
  expectError(t, dup, 409, 'exists', 'duplicate realm');
  const tooSmall = await request(server, 'POST', paths.realms('acme'), { device: owner, json: { realmId: newId(), keyIndex: 1, sealedKey: b64(randomBytes(8)) } });
  expectError(t, tooSmall, 400, 'bad_request', 'impossible sealed key');
  const other = await addUser(server, admin, 'standard');
  const otherList = await request(server, 'GET', paths.realms('acme'), { device: other });
  t.same(otherList.json, { realms: [] }, 'another user sees none of them');
});

t.test('blocks', async (t) => {
  const realm = await createRealm(server, admin);
  const otherRealm = await createRealm(server, admin);
  const blockId = newId();
  const data = randomBytes(100_000);
  const path = paths.block('acme', realm.realmId, blockId);

  const put = await request(server, 'PUT', path, { device: admin, raw: data });
  t.equal(put.status, 201);
  t.same(put.json, { blockId, created: true });
  const again = await request(server, 'PUT', path, { device: admin, raw: data });
  t.equal(again.status, 200, 'identical bytes again: idempotent');
  t.same(again.json, { blockId, created: false });
  const different = Buffer.from(data);
  different[0]! ^= 0xff;
  expectError(t, await request(server, 'PUT', path, { device: admin, raw: different }), 409, 'exists', 'different bytes, same id');
  expectError(t, await request(server, 'PUT', paths.block('acme', otherRealm.realmId, blockId), { device: admin, raw: data }), 409, 'exists', 'same id in another realm');

  const get = await request(server, 'GET', path, { device: admin });
  t.equal(get.status, 200);
  t.equal(get.headers.get('content-type'), 'application/octet-stream');
  t.ok(get.body.equals(data), 'exact bytes returned (the refused overwrite changed nothing)');

  expectError(t, await request(server, 'GET', paths.block('acme', realm.realmId, newId()), { device: admin }), 404, 'not_found', 'unknown block');
  expectError(t, await request(server, 'GET', paths.block('acme', otherRealm.realmId, blockId), { device: admin }), 404, 'not_found', 'block of another realm');
  expectError(t, await request(server, 'GET', paths.block('acme', realm.realmId, 'NOT-AN-ID'), { device: admin }), 400, 'bad_request', 'malformed block id');

  const emptyId = newId();
  expectError(t, await request(server, 'PUT', paths.block('acme', realm.realmId, emptyId), { device: admin, raw: Buffer.alloc(0) }), [400, 413], 'bad_request', 'empty block');
  const bigId = newId();
  const big = await request(server, 'PUT', paths.block('acme', realm.realmId, bigId), { device: admin, raw: Buffer.alloc(MAX_BLOCK_BYTES + 1, 7) });
  expectError(t, big, 413, 'too_large', 'oversized block');
  for (const id of [emptyId, bigId]) {
    expectError(t, await request(server, 'GET', paths.block('acme', realm.realmId, id), { device: admin }), 404, 'not_found', 'refused block not stored');
  }
  const maxId = newId();
  const max = randomBytes(MAX_BLOCK_BYTES);
  t.equal((await request(server, 'PUT', paths.block('acme', realm.realmId, maxId), { device: admin, raw: max })).status, 201, 'a block of exactly MAX_BLOCK_BYTES is accepted');
  t.ok((await request(server, 'GET', paths.block('acme', realm.realmId, maxId), { device: admin })).body.equals(max), 'and reads back');
  const asJson = await request(server, 'PUT', paths.block('acme', realm.realmId, newId()), { device: admin, json: { data: 'x' } });
  expectError(t, asJson, 400, 'bad_request', 'JSON body for a block');
});

t.test('concurrent writes: one winner, and the stored bytes are the winner\'s', async (t) => {
  const realm = await createRealm(server, admin);
  for (let round = 0; round < 5; round++) {
    const blockId = newId();
    const path = paths.block('acme', realm.realmId, blockId);
    const candidates = Array.from({ length: 6 }, () => randomBytes(150_000));
    const results = await Promise.all(candidates.map((raw) => request(server, 'PUT', path, { device: admin, raw })));
    const winners = results.flatMap((r, i) => (r.status === 201 ? [i] : []));
    t.equal(winners.length, 1, `round ${round}: exactly one PUT created the block`);
    t.ok(results.every((r) => r.status === 201 || r.status === 409), `round ${round}: the others were refused (${results.map((r) => r.status)})`);
    const got = await request(server, 'GET', path, { device: admin });
    t.ok(got.body.equals(candidates[winners[0]!]!), `round ${round}: the stored bytes are those of the acknowledged PUT`);
  }
  const same = randomBytes(100_000);
  const samePath = paths.block('acme', realm.realmId, newId());
  const sameResults = await Promise.all(Array.from({ length: 6 }, () => request(server, 'PUT', samePath, { device: admin, raw: same })));
  t.same(
    sameResults.map((r) => r.status).sort(),
    [200, 200, 200, 200, 200, 201],
    'identical concurrent PUTs: one creates, the others are idempotent',
  );
  t.ok((await request(server, 'GET', samePath, { device: admin })).body.equals(same));

  const vlobId = newId();
  t.equal((await request(server, 'POST', paths.vlobs('acme', realm.realmId), { device: admin, json: vlobBody(vlobId, randomBytes(10)) })).status, 201);
  const blobs = Array.from({ length: 6 }, () => randomBytes(64));
  const updates = await Promise.all(blobs.map((b) => request(server, 'PUT', paths.vlob('acme', realm.realmId, vlobId), { device: admin, json: updateBody(2, b) })));
  const ok = updates.flatMap((r, i) => (r.status === 200 ? [i] : []));
  t.equal(ok.length, 1, 'exactly one concurrent v2 wins');
  t.ok(updates.every((r) => r.status === 200 || (r.status === 409 && r.json.details?.currentVersion === 2)), 'the others see currentVersion 2');
  const latest = await request(server, 'GET', paths.vlob('acme', realm.realmId, vlobId), { device: admin });
  t.ok(Buffer.from(latest.json.blob, 'base64').equals(blobs[ok[0]!]!), 'the stored v2 is the winner\'s');
});

t.test('vlobs: versions, reads, changes', async (t) => {
  const realm = await createRealm(server, admin);
  const org = 'acme';
  const vlobId = newId();
  const blobs = [randomBytes(300), randomBytes(500), randomBytes(200)];

  const before = await request(server, 'GET', paths.changes(org, realm.realmId), { device: admin });
  t.same(before.json, { checkpoint: 0, changes: [] }, 'a new realm has no changes');

  const v1 = await request(server, 'POST', paths.vlobs(org, realm.realmId), { device: admin, json: vlobBody(vlobId, blobs[0]!, 1111) });
  t.equal(v1.status, 201);
  t.same(v1.json, { vlobId, version: 1, checkpoint: 1 });
  const dupCreate = await request(server, 'POST', paths.vlobs(org, realm.realmId), { device: admin, json: vlobBody(vlobId, blobs[0]!) });
  expectError(t, dupCreate, 409, 'conflict', 'create twice');
  t.equal(dupCreate.json.details?.currentVersion, 1);

  const readV1 = await request(server, 'GET', paths.vlob(org, realm.realmId, vlobId), { device: admin });
  t.equal(readV1.status, 200);
  const createdAtV1 = readV1.json.createdAt as number;
  t.ok(Math.abs(createdAtV1 - Date.now()) < 60_000, 'createdAt is server time');
  await sleep(5); // "as of" reads resolve by millisecond

  const v2 = await request(server, 'PUT', paths.vlob(org, realm.realmId, vlobId), { device: admin, json: updateBody(2, blobs[1]!, 2222) });
  t.equal(v2.status, 200);
  t.same(v2.json, { vlobId, version: 2, checkpoint: 2 });

  const conflict = await request(server, 'PUT', paths.vlob(org, realm.realmId, vlobId), { device: admin, json: updateBody(2, blobs[2]!) });
  expectError(t, conflict, 409, 'conflict', 'v2 again');
  t.equal(conflict.json.details?.currentVersion, 2, 'conflict reports the stored version');
  const skip = await request(server, 'PUT', paths.vlob(org, realm.realmId, vlobId), { device: admin, json: updateBody(4, blobs[2]!) });
  expectError(t, skip, 409, 'conflict', 'skip to v4');
  t.equal(skip.json.details?.currentVersion, 2);
  const reCreate = await request(server, 'PUT', paths.vlob(org, realm.realmId, vlobId), { device: admin, json: updateBody(1, blobs[2]!) });
  expectError(t, reCreate, 409, 'conflict', 'version 1 over an existing vlob');
  const neverCreated = await request(server, 'PUT', paths.vlob(org, realm.realmId, newId()), { device: admin, json: updateBody(2, blobs[2]!) });
  expectError(t, neverCreated, 409, 'conflict', 'update of a missing vlob');
  t.equal(neverCreated.json.details?.currentVersion ?? null, null);
  expectError(t, await request(server, 'PUT', paths.vlob(org, realm.realmId, vlobId), { device: admin, json: updateBody(0, blobs[2]!) }), 400, 'bad_request', 'version 0');
  expectError(t, await request(server, 'PUT', paths.vlob(org, realm.realmId, vlobId), { device: admin, json: updateBody(3, Buffer.alloc(0)) }), 400, 'bad_request', 'empty blob');

  const latest = await request(server, 'GET', paths.vlob(org, realm.realmId, vlobId), { device: admin });
  t.equal(latest.status, 200);
  t.equal(latest.json.version, 2);
  t.equal(latest.json.timestamp, 2222);
  t.equal(latest.json.author, admin.deviceId);
  t.equal(latest.json.keyIndex, 1);
  t.ok(Buffer.from(latest.json.blob, 'base64').equals(blobs[1]!), 'latest blob is v2');

  const byVersion = await request(server, 'GET', `${paths.vlob(org, realm.realmId, vlobId)}?version=1`, { device: admin });
  t.equal(byVersion.json.version, 1);
  t.equal(byVersion.json.timestamp, 1111);
  t.ok(Buffer.from(byVersion.json.blob, 'base64').equals(blobs[0]!), 'v1 kept and readable');
  const asOf = await request(server, 'GET', `${paths.vlob(org, realm.realmId, vlobId)}?at=${createdAtV1}`, { device: admin });
  t.equal(asOf.status, 200);
  t.equal(asOf.json.version, 1, 'as of v1 creation time: v1');
  expectError(t, await request(server, 'GET', `${paths.vlob(org, realm.realmId, vlobId)}?at=${createdAtV1 - 1}`, { device: admin }), 404, 'not_found', 'before creation');
  expectError(t, await request(server, 'GET', `${paths.vlob(org, realm.realmId, vlobId)}?version=3`, { device: admin }), 404, 'not_found', 'future version');
  expectError(t, await request(server, 'GET', `${paths.vlob(org, realm.realmId, vlobId)}?version=-1`, { device: admin }), 400, 'bad_request', 'negative version');
  expectError(t, await request(server, 'GET', `${paths.vlob(org, realm.realmId, vlobId)}?bogus=1`, { device: admin }), 400, 'bad_request', 'unknown query');
  expectError(t, await request(server, 'GET', paths.vlob(org, realm.realmId, newId()), { device: admin }), 404, 'not_found', 'unknown vlob');

  const cp2 = (await request(server, 'GET', paths.changes(org, realm.realmId), { device: admin })).json.checkpoint as number;
  t.equal(cp2, 2);

  const second = newId();
  t.equal((await request(server, 'POST', paths.vlobs(org, realm.realmId), { device: admin, json: vlobBody(second, blobs[2]!) })).status, 201);
  await sleep(2);
  const v3 = await request(server, 'PUT', paths.vlob(org, realm.realmId, vlobId), { device: admin, json: updateBody(3, blobs[2]!) });
  t.same(v3.json, { vlobId, version: 3, checkpoint: 4 });

  const missing = newId();
  const many = await request(server, 'POST', paths.readVlobs(org, realm.realmId), { device: admin, json: { vlobIds: [vlobId, missing, second] } });
  t.equal(many.status, 200);
  t.same(
    many.json.vlobs.map((v: { vlobId: string; version: number }) => [v.vlobId, v.version]).sort(),
    [
      [vlobId, 3],
      [second, 1],
    ].sort(),
    'latest version of each found vlob',
  );
  t.same(many.json.missing, [missing]);
  expectError(t, await request(server, 'POST', paths.readVlobs(org, realm.realmId), { device: admin, json: { vlobIds: [] } }), 400, 'bad_request', 'read none');

  const all = await request(server, 'GET', `${paths.changes(org, realm.realmId)}?since=0`, { device: admin });
  t.equal(all.status, 200);
  t.same(all.json, {
    checkpoint: 4,
    changes: [
      { vlobId: second, version: 1, checkpoint: 3 },
      { vlobId, version: 3, checkpoint: 4 },
    ],
  });
  const sinceCp2 = await request(server, 'GET', `${paths.changes(org, realm.realmId)}?since=${cp2}`, { device: admin });
  t.same(sinceCp2.json.changes.map((c: { vlobId: string }) => c.vlobId), [second, vlobId], 'both changed after checkpoint 2');
  const sinceCp3 = await request(server, 'GET', `${paths.changes(org, realm.realmId)}?since=3`, { device: admin });
  t.same(sinceCp3.json, { checkpoint: 4, changes: [{ vlobId, version: 3, checkpoint: 4 }] });
  const sinceNow = await request(server, 'GET', `${paths.changes(org, realm.realmId)}?since=4`, { device: admin });
  t.same(sinceNow.json, { checkpoint: 4, changes: [] });

  for (const [version, blob] of [
    [1, blobs[0]],
    [2, blobs[1]],
    [3, blobs[2]],
  ] as const) {
    const r = await request(server, 'GET', `${paths.vlob(org, realm.realmId, vlobId)}?version=${version}`, { device: admin });
    t.ok(Buffer.from(r.json.blob, 'base64').equals(blob!), `old version ${version} kept`);
  }
  const asOfStillV1 = await request(server, 'GET', `${paths.vlob(org, realm.realmId, vlobId)}?at=${createdAtV1}`, { device: admin });
  t.equal(asOfStillV1.json.version, 1, 'as-of read still finds v1');

  // A vlob id belongs to one realm: the same id cannot be created in another.
  const realm2 = await createRealm(server, admin);
  expectError(t, await request(server, 'POST', paths.vlobs(org, realm2.realmId), { device: admin, json: vlobBody(vlobId, blobs[0]!) }), 409, 'conflict', 'vlob id of another realm');
  expectError(t, await request(server, 'GET', paths.vlob(org, realm2.realmId, vlobId), { device: admin }), 404, 'not_found', 'not visible through another realm');
});

t.test('batched block writes: each block stored and answered as by its own PUT', async (t) => {
  const realm = await createRealm(server, admin);
  const R = realm.realmId;
  const existing = { blockId: newId(), data: randomBytes(500) };
  t.equal((await request(server, 'PUT', paths.block('acme', R, existing.blockId), { device: admin, raw: existing.data })).status, 201);
  const fresh = Array.from({ length: 5 }, (_, i) => ({ blockId: newId(), data: randomBytes(1 + i * 1000) }));
  const clash = { blockId: existing.blockId, data: randomBytes(500) }; // other bytes under a taken id
  const batch = [fresh[0]!, clash, ...fresh.slice(1)];
  const res = await request(server, 'POST', paths.writeBlocks('acme', R), { device: admin, raw: blockBatchBody(batch) });
  t.equal(res.status, 200);
  t.same(res.json.results.map((r: { blockId: string }) => r.blockId), batch.map((b) => b.blockId), 'one result per block, in order');
  t.same(res.json.results[1], { blockId: existing.blockId, error: { error: 'exists', message: 'a different block already has this id' } }, 'other bytes under a taken id: refused on its own');
  for (const [i, b] of fresh.entries()) {
    t.same(res.json.results[i === 0 ? 0 : i + 1], { blockId: b.blockId, created: true });
    const got = await request(server, 'GET', paths.block('acme', R, b.blockId), { device: admin });
    t.ok(got.body.equals(b.data), `block ${i} reads back exactly`);
  }
  t.ok((await request(server, 'GET', paths.block('acme', R, existing.blockId), { device: admin })).body.equals(existing.data), 'the refused block changed nothing');
  const same = await request(server, 'POST', paths.writeBlocks('acme', R), { device: admin, raw: blockBatchBody([existing, fresh[0]!]) });
  t.same(same.json, { results: [{ blockId: existing.blockId, created: false }, { blockId: fresh[0]!.blockId, created: false }] }, 'the same bytes again: accepted (idempotent)');

  // Malformed bodies are refused whole, and store nothing.
  const one = { blockId: newId(), data: randomBytes(100) };
  const bad: Array<[string, Buffer]> = [
    ['shorter than the index length field', Buffer.from([0, 0])],
    ['index longer than the body', Buffer.concat([Buffer.from([0, 0, 1, 0]), Buffer.from('{}')])],
    ['index not JSON', (() => { const b = blockBatchBody([one]); b.write('!', 4); return b; })()],
    ['sizes do not add up', blockBatchBody([one], [99])],
    ['a zero size', blockBatchBody([{ blockId: one.blockId, data: Buffer.alloc(0) }])],
    ['the same id twice', blockBatchBody([one, one])],
    ['a malformed id', blockBatchBody([{ blockId: 'NOT-AN-ID', data: one.data }])],
    ['too many blocks', blockBatchBody(Array.from({ length: MAX_BLOCK_WRITE_BATCH + 1 }, () => ({ blockId: newId(), data: Buffer.alloc(1) })))],
  ];
  for (const [what, body] of bad) expectError(t, await request(server, 'POST', paths.writeBlocks('acme', R), { device: admin, raw: body }), 400, 'bad_request', what);
  expectError(t, await request(server, 'POST', paths.writeBlocks('acme', R), { device: admin, json: { blocks: [] } }), 400, 'bad_request', 'a JSON body');
  expectError(t, await request(server, 'GET', paths.block('acme', R, one.blockId), { device: admin }), 404, 'not_found', 'nothing of the refused batches stored');

  // Roles: a reader may not write; the whole request is refused.
  const reader = await addUser(server, admin, 'standard');
  await mustGrant(server, admin, R, reader.userId, 'reader', reader.userBox.publicKey, realm.workspaceKey);
  expectError(t, await request(server, 'POST', paths.writeBlocks('acme', R), { device: reader, raw: blockBatchBody([one]) }), 403, 'forbidden', 'reader');
  expectError(t, await request(server, 'GET', paths.block('acme', R, one.blockId), { device: admin }), 404, 'not_found', "the reader's block was not stored");
});

t.test('batched block reads: each block answered as by its own GET, in order; limits; roles', async (t) => {
  const realm = await createRealm(server, admin);
  const other = await createRealm(server, admin);
  const R = realm.realmId;
  const stored = Array.from({ length: 4 }, (_, i) => ({ blockId: newId(), data: randomBytes(1 + i * 70_000) }));
  for (const b of stored) t.equal((await request(server, 'PUT', paths.block('acme', R, b.blockId), { device: admin, raw: b.data })).status, 201);
  const foreign = { blockId: newId(), data: randomBytes(10) };
  t.equal((await request(server, 'PUT', paths.block('acme', other.realmId, foreign.blockId), { device: admin, raw: foreign.data })).status, 201);
  // A block recorded but gone from the block store: removable by hand only from the folder store
  // (this suite also runs on S3 and Swift, see backend-server-api.test.ts).
  const onFolderStore = process.env.COFFER_BLOCKS_URL === undefined;
  const lost = { blockId: newId(), data: randomBytes(10) };
  t.equal((await request(server, 'PUT', paths.block('acme', R, lost.blockId), { device: admin, raw: lost.data })).status, 201);
  if (onFolderStore) await rm(join(server.dataDir, 'blocks', 'acme', lost.blockId.slice(0, 2), lost.blockId));
  const unknown = newId();

  const ids = [stored[2]!.blockId, unknown, stored[0]!.blockId, foreign.blockId, lost.blockId, stored[3]!.blockId, stored[1]!.blockId];
  const res = await request(server, 'POST', paths.readBlocks('acme', R), { device: admin, json: { blockIds: ids } });
  t.equal(res.status, 200);
  t.match(res.headers.get('content-type'), /application\/octet-stream/);
  const items = decodeBlockReadAnswer(res.body, ids);
  const single = async (id: string) => {
    const r = await request(server, 'GET', paths.block('acme', R, id), { device: admin });
    return r.status === 200 ? { blockId: id, data: r.body } : { blockId: id, error: r.json };
  };
  for (const [i, id] of ids.entries()) t.same(items[i], await single(id), `item ${i} answered exactly as its own GET`);
  t.match(items.map((it) => ('error' in it ? it.error.error : 'ok')), ['ok', 'not_found', 'ok', 'not_found', onFolderStore ? 'unavailable' : 'ok', 'ok', 'ok'], 'unknown, other realm, lost: refused on their own');

  // Memory per request is bounded: blocks past MAX_BLOCK_READ_BYTES (recorded sizes) are left for another request.
  const big = Array.from({ length: Math.floor(MAX_BLOCK_READ_BYTES / MAX_BLOCK_BYTES) + 1 }, () => ({ blockId: newId(), data: randomBytes(MAX_BLOCK_BYTES) }));
  for (const b of big) t.equal((await request(server, 'PUT', paths.block('acme', R, b.blockId), { device: admin, raw: b.data })).status, 201);
  const bigIds = [...big.map((b) => b.blockId), stored[0]!.blockId];
  const capped = decodeBlockReadAnswer((await request(server, 'POST', paths.readBlocks('acme', R), { device: admin, json: { blockIds: bigIds } })).body, bigIds);
  t.same(
    capped.map((it) => ('error' in it ? it.error.error : 'ok')),
    [...big.slice(0, -1).map(() => 'ok'), 'too_large', 'ok'],
    'the block past the byte limit is answered too_large; a later one that fits is still answered',
  );
  for (const [i, b] of big.slice(0, -1).entries()) t.ok((capped[i] as { data: Buffer }).data.equals(b.data), `big block ${i} exact`);

  // The server reuses the memory of blocks it answered: many reads at once, each gets its own bytes.
  // Answers of 12 MiB (three big blocks): more than the socket takes at once, so a buffer reused too
  // early would be overwritten while its answer is still being sent.
  const mixed = [...big.slice(0, 3), stored[3]!];
  const rotations = Array.from({ length: 12 }, (_, r) => mixed.map((_, i) => mixed[(i + r) % mixed.length]!));
  const answers = await Promise.all(
    rotations.map(async (blocks, r) => {
      const blockIds = blocks.map((b) => b.blockId);
      if (r % 3 === 0) return Promise.all(blocks.map(async (b) => (await request(server, 'GET', paths.block('acme', R, b.blockId), { device: admin })).body));
      const answer = decodeBlockReadAnswer((await request(server, 'POST', paths.readBlocks('acme', R), { device: admin, json: { blockIds } })).body, blockIds);
      return answer.map((it) => ('data' in it ? it.data : Buffer.alloc(0)));
    }),
  );
  t.ok(
    answers.every((datas, r) => datas.every((d, i) => d.equals(rotations[r]![i]!.data))),
    '12 reads at once (batched and single): every block exact',
  );

  // Malformed requests are refused whole.
  const bad: Array<[string, unknown]> = [
    ['no ids', { blockIds: [] }],
    ['too many ids', { blockIds: Array.from({ length: MAX_BLOCK_READ_BATCH + 1 }, () => newId()) }],
    ['the same id twice', { blockIds: [stored[0]!.blockId, stored[0]!.blockId] }],
    ['a malformed id', { blockIds: ['NOT-AN-ID'] }],
    ['an extra field', { blockIds: [stored[0]!.blockId], sizes: [1] }],
    ['ids not a list', { blockIds: stored[0]!.blockId }],
  ];
  for (const [what, json] of bad) expectError(t, await request(server, 'POST', paths.readBlocks('acme', R), { device: admin, json }), 400, 'bad_request', what);
  expectError(t, await request(server, 'POST', paths.readBlocks('acme', R), { device: admin, raw: Buffer.from('{}') }), 400, 'bad_request', 'a binary body');
  expectError(t, await request(server, 'POST', paths.readBlocks('acme', R), { json: { blockIds: [stored[0]!.blockId] } }), 401, 'unauthorized', 'unsigned');

  // Roles: a reader may read; a non-member may not, not even to learn which ids exist.
  const reader = await addUser(server, admin, 'standard');
  expectError(t, await request(server, 'POST', paths.readBlocks('acme', R), { device: reader, json: { blockIds: [stored[0]!.blockId] } }), 403, 'forbidden', 'non-member');
  await mustGrant(server, admin, R, reader.userId, 'reader', reader.userBox.publicKey, realm.workspaceKey);
  const byReader = await request(server, 'POST', paths.readBlocks('acme', R), { device: reader, json: { blockIds: [stored[1]!.blockId] } });
  t.same(decodeBlockReadAnswer(byReader.body, [stored[1]!.blockId]), [{ blockId: stored[1]!.blockId, data: stored[1]!.data }], 'a reader reads');
});

t.test('ServerConnection.getBlock: reads of one turn go as one request; per-item errors; blocks past the byte limit fetched alone', async (t) => {
  const realm = await createRealm(server, admin);
  const R = realm.realmId;
  const conn = new ServerConnection(server.url, admin);
  t.teardown(() => conn.close());
  const blocks = Array.from({ length: 3 }, () => ({ blockId: newId(), data: randomBytes(MAX_BLOCK_BYTES) }));
  for (const b of blocks) t.equal((await request(server, 'PUT', paths.block('acme', R, b.blockId), { device: admin, raw: b.data })).status, 201);
  const count = async (method: string, route: string) => {
    const m = (await server.request('GET', '/metrics')).body.toString('utf8');
    return [...m.matchAll(new RegExp(`^coffer_http_requests_total\\{method="${method}",route="${route.replace(/[/:]/g, (c) => `\\${c}`)}",status="(\\d+)"\\} (\\d+)$`, 'gm'))].reduce((n, x) => n + Number(x[2]), 0);
  };
  const batches0 = await count('POST', ROUTES.readBlocks);
  const singles0 = await count('GET', ROUTES.block);
  // Small size hints (what a hostile manifest could claim): the server's byte limit still holds, and
  // the block it leaves out (the fourth would pass 16 MiB) is asked for again on its own.
  const missing = newId();
  const results = await Promise.allSettled([...blocks, ...blocks.slice(0, 1).map(() => ({ blockId: missing }))].map((b) => conn.getBlock(R, b.blockId, { sizeHint: 100 })));
  for (const [i, b] of blocks.entries()) {
    const r = results[i]!;
    t.ok(r.status === 'fulfilled' && r.value.equals(b.data), `block ${i} exact`);
  }
  t.match(results[3], { status: 'rejected', reason: { code: 'not_found' } }, 'an unknown block: its own not_found, the others unaffected');
  t.equal((await count('POST', ROUTES.readBlocks)) - batches0, 1, 'one batched request for the four reads');
  t.equal((await count('GET', ROUTES.block)) - singles0, 0, 'nothing fetched alone under the limit');

  const more = Array.from({ length: 2 }, () => ({ blockId: newId(), data: randomBytes(MAX_BLOCK_BYTES) }));
  for (const b of more) t.equal((await request(server, 'PUT', paths.block('acme', R, b.blockId), { device: admin, raw: b.data })).status, 201);
  const all = [...blocks, ...more];
  const got = await Promise.all(all.map((b) => conn.getBlock(R, b.blockId, { sizeHint: 100 })));
  t.ok(got.every((g, i) => g.equals(all[i]!.data)), 'five 4 MiB blocks read exactly');
  t.equal((await count('GET', ROUTES.block)) - singles0, 2, 'the two past the byte limit fetched alone');
});

t.test('batched vlob writes: each created or updated as by its own request, answered in order', async (t) => {
  const realm = await createRealm(server, admin);
  const R = realm.realmId;
  const a = newId();
  const b = newId();
  const c = newId();
  t.equal((await request(server, 'POST', paths.vlobs('acme', R), { device: admin, json: vlobBody(a, randomBytes(50)) })).status, 201);
  const blobs = [randomBytes(60), randomBytes(70), randomBytes(80), randomBytes(90)];
  const writes = [
    { vlobId: a, version: 2, keyIndex: 1, timestamp: Date.now(), blob: b64(blobs[0]!) }, // update
    { vlobId: b, version: 1, keyIndex: 1, timestamp: Date.now(), blob: b64(blobs[1]!) }, // create
    { vlobId: c, version: 3, keyIndex: 1, timestamp: Date.now(), blob: b64(blobs[2]!) }, // no version 2: conflict
  ];
  const res = await request(server, 'POST', paths.writeVlobs('acme', R), { device: admin, json: { writes } });
  t.equal(res.status, 200);
  t.equal(res.json.results.length, 3);
  t.match(res.json.results[0], { vlobId: a, version: 2 });
  t.match(res.json.results[1], { vlobId: b, version: 1 });
  t.same(res.json.results[2], { vlobId: c, error: { error: 'conflict', message: 'version conflict: stored version is none', details: { currentVersion: null } } });
  t.not(res.json.results[0].checkpoint, res.json.results[1].checkpoint, 'each write has its own checkpoint');
  const read = await request(server, 'POST', paths.readVlobs('acme', R), { device: admin, json: { vlobIds: [a, b, c] } });
  t.same(read.json.missing, [c], 'the conflicting write stored nothing');
  t.same(
    read.json.vlobs.map((v: { vlobId: string; version: number; blob: string }) => [v.vlobId, v.version, v.blob]).sort(),
    [[a, 2, b64(blobs[0]!)], [b, 1, b64(blobs[1]!)]].sort(),
    'the others are stored exactly',
  );
  const again = await request(server, 'POST', paths.writeVlobs('acme', R), { device: admin, json: { writes: [{ ...writes[1]!, blob: b64(blobs[3]!) }] } });
  t.match(again.json.results[0], { vlobId: b, error: { error: 'conflict', details: { currentVersion: 1 } } }, 'creating an existing vlob again is a conflict');

  const w = (vlobId = newId()) => ({ vlobId, version: 1, keyIndex: 1, timestamp: Date.now(), blob: b64(randomBytes(10)) });
  const same = w();
  const badBodies: Array<[string, unknown]> = [
    ['no writes', { writes: [] }],
    ['the same id twice', { writes: [same, same] }],
    ['too many writes', { writes: Array.from({ length: MAX_VLOB_WRITE_BATCH + 1 }, () => w()) }],
    ['a write without a blob', { writes: [{ ...w(), blob: undefined }] }],
    ['an extra field', { writes: [{ ...w(), extra: 1 }] }],
    ['version 0', { writes: [{ ...w(), version: 0 }] }],
  ];
  for (const [what, json] of badBodies) expectError(t, await request(server, 'POST', paths.writeVlobs('acme', R), { device: admin, json }), 400, 'bad_request', what);
  const emptyBlob = await request(server, 'POST', paths.writeVlobs('acme', R), { device: admin, json: { writes: [{ ...w(), blob: '' }] } });
  t.equal(emptyBlob.json.results[0].error.error, 'bad_request', 'an empty blob is refused on its own');

  const reader = await addUser(server, admin, 'standard');
  await mustGrant(server, admin, R, reader.userId, 'reader', reader.userBox.publicKey, realm.workspaceKey);
  const refused = w();
  expectError(t, await request(server, 'POST', paths.writeVlobs('acme', R), { device: reader, json: { writes: [refused] } }), 403, 'forbidden', 'reader');
  t.same((await request(server, 'POST', paths.readVlobs('acme', R), { device: admin, json: { vlobIds: [refused.vlobId] } })).json.missing, [refused.vlobId], "the reader's write was not stored");
});

t.test('roles: reader, contributor, manager, outsider, non-member', async (t) => {
  const org = 'acme';
  const owner = await addUser(server, admin, 'standard');
  const reader = await addUser(server, admin, 'standard');
  const contributor = await addUser(server, admin, 'standard');
  const manager = await addUser(server, admin, 'standard');
  const outsider = await addUser(server, admin, 'outsider');
  const stranger = await addUser(server, admin, 'standard');
  const realm = await createRealm(server, owner);
  const R = realm.realmId;

  const blockId = newId();
  const blockData = randomBytes(1000);
  t.equal((await request(server, 'PUT', paths.block(org, R, blockId), { device: owner, raw: blockData })).status, 201);
  const vlobId = newId();
  t.equal((await request(server, 'POST', paths.vlobs(org, R), { device: owner, json: vlobBody(vlobId, randomBytes(64)) })).status, 201);

  await mustGrant(server, owner, R, reader.userId, 'reader', reader.userBox.publicKey, realm.workspaceKey);
  await mustGrant(server, owner, R, contributor.userId, 'contributor', contributor.userBox.publicKey, realm.workspaceKey);
  await mustGrant(server, owner, R, manager.userId, 'manager', manager.userBox.publicKey, realm.workspaceKey);

  // The reader got the workspace key sealed to them.
  const readerRealms = await request(server, 'GET', paths.realms(org), { device: reader });
  t.equal(readerRealms.json.realms.length, 1);
  t.equal(readerRealms.json.realms[0].role, 'reader');
  const sealed = Buffer.from(readerRealms.json.realms[0].keys[0].sealedKey, 'base64');
  t.ok(openSealed(sealed, reader.userBox.publicKey, reader.userBox.secretKey).equals(realm.workspaceKey), 'reader opens the workspace key');

  // Reader: reads everything, writes nothing.
  const got = await request(server, 'GET', paths.block(org, R, blockId), { device: reader });
  t.equal(got.status, 200);
  t.ok(got.body.equals(blockData), 'reader reads the block');
  t.equal((await request(server, 'GET', paths.vlob(org, R, vlobId), { device: reader })).status, 200, 'reader reads the vlob');
  t.equal((await request(server, 'POST', paths.readVlobs(org, R), { device: reader, json: { vlobIds: [vlobId] } })).status, 200, 'reader reads many');
  t.equal((await request(server, 'GET', paths.changes(org, R), { device: reader })).status, 200, 'reader lists changes');
  expectError(t, await request(server, 'PUT', paths.block(org, R, newId()), { device: reader, raw: randomBytes(10) }), 403, 'forbidden', 'reader puts a block');
  expectError(t, await request(server, 'POST', paths.vlobs(org, R), { device: reader, json: vlobBody(newId(), randomBytes(10)) }), 403, 'forbidden', 'reader creates a vlob');
  expectError(t, await request(server, 'PUT', paths.vlob(org, R, vlobId), { device: reader, json: updateBody(2, randomBytes(10)) }), 403, 'forbidden', 'reader updates a vlob');
  expectError(t, await grant(server, reader, R, stranger.userId, 'reader', stranger.userBox.publicKey), 403, 'forbidden', 'reader grants');

  // Contributor: writes, cannot grant.
  t.equal((await request(server, 'PUT', paths.block(org, R, newId()), { device: contributor, raw: randomBytes(10) })).status, 201, 'contributor puts a block');
  t.equal((await request(server, 'PUT', paths.vlob(org, R, vlobId), { device: contributor, json: updateBody(2, randomBytes(10)) })).status, 200, 'contributor updates a vlob');
  expectError(t, await grant(server, contributor, R, stranger.userId, 'reader', stranger.userBox.publicKey), 403, 'forbidden', 'contributor grants');

  // Manager: grants reader/contributor, never manager/owner, never touches the owner.
  expectError(t, await grant(server, manager, R, stranger.userId, 'owner', stranger.userBox.publicKey), 403, 'forbidden', 'manager grants owner');
  expectError(t, await grant(server, manager, R, stranger.userId, 'manager', stranger.userBox.publicKey), 403, 'forbidden', 'manager grants manager');
  expectError(t, await grant(server, manager, R, owner.userId, 'reader', owner.userBox.publicKey), 403, 'forbidden', 'manager demotes the owner');
  expectError(t, await grant(server, manager, R, owner.userId, null, owner.userBox.publicKey), 403, 'forbidden', 'manager removes the owner');
  // Outsiders cannot be promoted to manager, even by the owner.
  expectError(t, await grant(server, owner, R, outsider.userId, 'manager', outsider.userBox.publicKey), 403, 'forbidden', 'outsider as manager');
  expectError(t, await grant(server, owner, R, newId(), 'reader', outsider.userBox.publicKey), 404, 'not_found', 'grant to an unknown user');
  const noKeys = await request(server, 'PUT', paths.role(org, R, stranger.userId), { device: owner, json: { role: 'reader', keys: [] } });
  expectError(t, noKeys, 400, 'bad_request', 'grant without keys');
  const ownerRole = (await request(server, 'GET', paths.realms(org), { device: owner })).json.realms[0].role;
  t.equal(ownerRole, 'owner', 'the owner is still owner');

  // Non-member: refused everywhere in the realm, sees no realm.
  const routes: Array<[string, string, Record<string, unknown>]> = [
    ['GET', paths.block(org, R, blockId), {}],
    ['PUT', paths.block(org, R, newId()), { raw: randomBytes(10) }],
    ['POST', paths.vlobs(org, R), { json: vlobBody(newId(), randomBytes(10)) }],
    ['PUT', paths.vlob(org, R, vlobId), { json: updateBody(3, randomBytes(10)) }],
    ['GET', paths.vlob(org, R, vlobId), {}],
    ['POST', paths.readVlobs(org, R), { json: { vlobIds: [vlobId] } }],
    ['GET', paths.changes(org, R), {}],
  ];
  for (const [method, path, opts] of routes) {
    expectError(t, await request(server, method, path, { device: stranger, ...opts }), 403, 'forbidden', `non-member ${method} ${path}`);
  }
  expectError(t, await grant(server, stranger, R, stranger.userId, 'owner', stranger.userBox.publicKey), 403, 'forbidden', 'non-member grants itself');
  t.same((await request(server, 'GET', paths.realms(org), { device: stranger })).json, { realms: [] });

  // Unknown realm: 404 on every realm route.
  const U = newId();
  const unknownRoutes: Array<[string, string, Record<string, unknown>]> = [
    ['GET', paths.block(org, U, blockId), {}],
    ['PUT', paths.block(org, U, newId()), { raw: randomBytes(10) }],
    ['POST', paths.vlobs(org, U), { json: vlobBody(newId(), randomBytes(10)) }],
    ['PUT', paths.vlob(org, U, vlobId), { json: updateBody(1, randomBytes(10)) }],
    ['GET', paths.vlob(org, U, vlobId), {}],
    ['POST', paths.readVlobs(org, U), { json: { vlobIds: [vlobId] } }],
    ['GET', paths.changes(org, U), {}],
    ['PUT', paths.role(org, U, reader.userId), { json: { role: 'reader', keys: [{ keyIndex: 1, sealedKey: b64(randomBytes(80)) }] } }],
  ];
  for (const [method, path, opts] of unknownRoutes) {
    expectError(t, await request(server, method, path, { device: owner, ...opts }), 404, 'not_found', `unknown realm ${method}`);
  }

  // Removing the reader's role takes effect at once.
  await mustGrant(server, owner, R, reader.userId, null, reader.userBox.publicKey);
  expectError(t, await request(server, 'GET', paths.block(org, R, blockId), { device: reader }), 403, 'forbidden', 'removed reader');
  t.same((await request(server, 'GET', paths.realms(org), { device: reader })).json, { realms: [] }, 'removed reader keeps no key');
});

t.test('a user of another organization is refused on every realm route', async (t) => {
  const org = 'acme';
  const owner = await addUser(server, admin, 'standard');
  const realm = await createRealm(server, owner);
  const R = realm.realmId;
  const blockId = newId();
  t.equal((await request(server, 'PUT', paths.block(org, R, blockId), { device: owner, raw: randomBytes(100) })).status, 201);
  const vlobId = newId();
  t.equal((await request(server, 'POST', paths.vlobs(org, R), { device: owner, json: vlobBody(vlobId, randomBytes(64)) })).status, 201);

  const foreign = await bootstrapOrg(server, 'globex');
  // The foreign device claiming its own organization (org mismatch) or forging ours (unknown device).
  const forged: DeviceCredentials = { orgId: org, deviceId: foreign.deviceId, signingKey: foreign.signingKey };
  const routes: Array<[string, string, Record<string, unknown>]> = [
    ['GET', paths.realms(org), {}],
    ['POST', paths.realms(org), { json: { realmId: newId(), keyIndex: 1, sealedKey: b64(randomBytes(80)) } }],
    ['GET', paths.certificates(org), {}],
    ['POST', paths.users(org), { json: { userCertificate: 'AAAA', deviceCertificate: 'AAAA' } }],
    ['GET', paths.block(org, R, blockId), {}],
    ['PUT', paths.block(org, R, newId()), { raw: randomBytes(10) }],
    ['POST', paths.vlobs(org, R), { json: vlobBody(newId(), randomBytes(10)) }],
    ['PUT', paths.vlob(org, R, vlobId), { json: updateBody(2, randomBytes(10)) }],
    ['GET', paths.vlob(org, R, vlobId), {}],
    ['POST', paths.readVlobs(org, R), { json: { vlobIds: [vlobId] } }],
    ['GET', paths.changes(org, R), {}],
    ['PUT', paths.role(org, R, foreign.userId), { json: { role: 'owner', keys: [{ keyIndex: 1, sealedKey: b64(randomBytes(80)) }] } }],
  ];
  for (const [method, path, opts] of routes) {
    expectError(t, await request(server, method, path, { device: foreign, ...opts }), 403, 'forbidden', `org mismatch ${method} ${path}`);
    expectError(t, await request(server, method, path, { device: forged, ...opts }), 401, 'unauthorized', `forged org ${method} ${path}`);
  }
  // Through its own organization's path the realm simply does not exist.
  expectError(t, await request(server, 'GET', paths.block('globex', R, blockId), { device: foreign }), 404, 'not_found', 'own org path');
  expectError(t, await request(server, 'GET', paths.vlob('globex', R, vlobId), { device: foreign }), 404, 'not_found', 'own org path (vlob)');
  // Nothing was written: still one version, and the owner is still alone.
  const latest = await request(server, 'GET', paths.vlob(org, R, vlobId), { device: owner });
  t.equal(latest.json.version, 1);
  const changes = await request(server, 'GET', paths.changes(org, R), { device: owner });
  t.equal(changes.json.checkpoint, 1);
});

t.test('device-signature authentication', async (t) => {
  const realm = await createRealm(server, admin);
  const path = paths.changes('acme', realm.realmId);
  t.equal((await request(server, 'GET', path, { device: admin })).status, 200, 'a good signature passes');

  expectError(t, await request(server, 'GET', path), 401, 'unauthorized', 'no header');
  expectError(t, await request(server, 'GET', path, { headers: { authorization: 'Bearer abc' } }), 401, 'unauthorized', 'other scheme');
  expectError(t, await request(server, 'GET', path, { headers: { authorization: 'Coffer-Ed25519 garbage' } }), 401, 'unauthorized', 'garbled header');

  // Flip one byte of the signature.
  const header = buildAuthHeader(admin.orgId, admin.deviceId, admin.signingKey, 'GET', path, null);
  const sig = Buffer.from(header.slice(header.indexOf('sig=') + 4), 'base64url');
  sig[10]! ^= 0x01;
  const flipped = `${header.slice(0, header.indexOf('sig=') + 4)}${sig.toString('base64url')}`;
  expectError(t, await request(server, 'GET', path, { headers: { authorization: flipped } }), 401, 'unauthorized', 'flipped signature byte');
  t.equal((await request(server, 'GET', path, { headers: { authorization: header } })).status, 200, 'the unflipped header passes');

  // Body altered after signing.
  const vlobPath = paths.vlobs('acme', realm.realmId);
  const signed = Buffer.from(JSON.stringify(vlobBody(newId(), randomBytes(16))));
  const altered = await request(server, 'POST', vlobPath, {
    device: admin,
    json: vlobBody(newId(), randomBytes(16)),
    signedBody: signed,
  });
  expectError(t, altered, 401, 'unauthorized', 'body altered after signing');
  expectError(t, await request(server, 'POST', vlobPath, { device: admin, json: vlobBody(newId(), randomBytes(16)), signedBody: null }), 401, 'unauthorized', 'body not signed');
  // Path or method altered after signing.
  expectError(t, await request(server, 'GET', path, { device: admin, signedPath: paths.changes('acme', newId()) }), 401, 'unauthorized', 'path altered');
  expectError(t, await request(server, 'GET', `${path}?since=1`, { device: admin, signedPath: path }), 401, 'unauthorized', 'query added');
  const postHeader = buildAuthHeader(admin.orgId, admin.deviceId, admin.signingKey, 'POST', path, null);
  expectError(t, await request(server, 'GET', path, { headers: { authorization: postHeader } }), 401, 'unauthorized', 'method altered');

  // Clock window: 6 minutes either side is refused (a captured request cannot be replayed later).
  expectError(t, await request(server, 'GET', path, { device: admin, timestamp: Date.now() - 6 * 60 * 1000 }), 401, 'unauthorized', '6 minutes old');
  expectError(t, await request(server, 'GET', path, { device: admin, timestamp: Date.now() + 6 * 60 * 1000 }), 401, 'unauthorized', '6 minutes ahead');
  t.equal((await request(server, 'GET', path, { device: admin, timestamp: Date.now() - 60 * 1000 })).status, 200, 'one minute of skew is fine');

  // Unknown device, and a known device id with the wrong key.
  const stranger = generateSigningKeyPair();
  expectError(t, await request(server, 'GET', path, { device: { orgId: 'acme', deviceId: newId(), signingKey: stranger.secretKey } }), 401, 'unauthorized', 'unknown device');
  expectError(t, await request(server, 'GET', path, { device: { orgId: 'acme', deviceId: admin.deviceId, signingKey: stranger.secretKey } }), 401, 'unauthorized', 'wrong key for a known device');
  expectError(t, await request(server, 'GET', paths.realms('nosuchorg'), { device: { orgId: 'nosuchorg', deviceId: admin.deviceId, signingKey: admin.signingKey } }), 401, 'unauthorized', 'unknown organization');

  // A failed write is not applied.
  const after = await request(server, 'GET', path, { device: admin });
  t.same(after.json, { checkpoint: 0, changes: [] }, 'no refused request wrote a vlob');
});

t.test('unknown routes and methods answer a JSON 404', async (t) => {
  expectError(t, await request(server, 'GET', '/v1/nope'), 404, 'not_found');
  expectError(t, await request(server, 'DELETE', paths.realms('acme'), { device: admin }), 404, 'not_found');
  expectError(t, await request(server, 'GET', '/'), 404, 'not_found');
});


t.test('ServerConnection: batched writes and blocks are stored, each item answered; broken answers are clear errors', async (t) => {
  const realm = await createRealm(server, admin);
  const R = realm.realmId;
  const conn = new ServerConnection(server.url, admin);
  t.teardown(() => conn.close());
  // The real server: one write batch of three, one block batch of two.
  const [a, b, c] = [newId(), newId(), newId()];
  const checkpoints = await Promise.all([a, b, c].map((id) => conn.writeVlob(R, id, 1, 1, Date.now(), randomBytes(100))));
  t.same([...checkpoints].sort((x, y) => x - y), [1, 2, 3], 'three vlobs, three checkpoints');
  await t.rejects(conn.writeVlob(R, a, 1, 1, Date.now(), randomBytes(100)), { code: 'conflict' }, 'a conflicting item is its own error');
  const small = [randomBytes(1000), randomBytes(2000)];
  const ids = [newId(), newId()];
  await Promise.all(small.map((d, i) => conn.putBlock(R, ids[i]!, d)));
  for (let i = 0; i < 2; i++) t.ok((await request(server, 'GET', paths.block('acme', R, ids[i]!), { device: admin })).body.equals(small[i]!), `block ${i} stored`);

  // A server whose answers are broken: each is a clear error, never a result.
  const { createServer } = await import('node:http');
  let answer: (res: import('node:http').ServerResponse) => void = () => {};
  const fake = createServer((req, res) => {
    req.resume();
    req.on('end', () => answer(res));
  });
  await new Promise<void>((r) => fake.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => fake.close(() => r())));
  const addr = fake.address() as import('node:net').AddressInfo;
  const hostile = new ServerConnection(`http://127.0.0.1:${addr.port}`, admin);
  t.teardown(() => hostile.close());
  answer = (res) => res.writeHead(200, { 'content-type': 'application/json' }).end('not json');
  await t.rejects(hostile.writeVlob(R, newId(), 1, 1, Date.now(), randomBytes(10)), { name: 'BadInputError' }, 'an answer that is not JSON');
  answer = (res) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ results: [] }));
  await t.rejects(hostile.putBlock(R, newId(), randomBytes(10)), { code: 'integrity' }, 'an answer for none of the batch');
  answer = (res) => res.writeHead(503, { 'content-type': 'application/json' }).end(JSON.stringify({ error: 'unavailable', message: 'later' }));
  await t.rejects(hostile.writeVlob(R, newId(), 1, 1, Date.now(), randomBytes(10)), { code: 'unavailable' }, 'an error status is that error');
  answer = (res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    const mib = Buffer.alloc(1024 * 1024, 0x20);
    for (let i = 0; i < 17; i++) res.write(mib);
    res.end('{}');
  };
  await t.rejects(hostile.writeVlob(R, newId(), 1, 1, Date.now(), randomBytes(10)), { code: 'integrity' }, 'an answer over 16 MiB is refused as it arrives');
});
