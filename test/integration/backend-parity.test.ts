/**
 * The PostgreSQL metadata store answers like the SQLite one, call for call: one scripted sequence of
 * MetadataStore calls (organizations, certificates, users, devices, realms, roles, groups, keys,
 * revocation, vlobs, blocks, invitations, including the refusals) runs against both stores and
 * every answer — value or error code — is compared. A method whose PostgreSQL twin drifts from the
 * SQLite behaviour fails here with the step's name. Real PostgreSQL (test/helpers/services.ts).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { CofferError } from '../../src/errors.js';
import { PostgresMetadataStore } from '../../src/server/metadata/postgres.js';
import { SqliteMetadataStore } from '../../src/server/metadata/sqlite.js';
import type { InvitationRow, MetadataStore, NewDevice, NewUser, VlobWrite } from '../../src/server/metadata/types.js';
import { startPostgres } from '../helpers/services.js';

const pgCluster = await startPostgres();
t.teardown(() => pgCluster.stop());
const dir = await mkdtemp(join(tmpdir(), 'coffer-parity-'));
t.teardown(() => rm(dir, { recursive: true, force: true }));

/** Comparable form of any answer: Buffers as hex, errors as their code. */
function canonical(value: unknown): unknown {
  if (Buffer.isBuffer(value)) return `hex:${value.toString('hex')}`;
  if (Array.isArray(value)) return value.map(canonical);
  if (value !== null && typeof value === 'object') return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, canonical(v)]));
  return value;
}

async function answer(fn: () => Promise<unknown>): Promise<unknown> {
  try {
    return { ok: canonical(await fn()) };
  } catch (err) {
    if (err instanceof CofferError) return { error: err.code };
    return { threw: err instanceof Error ? err.constructor.name : String(err) };
  }
}

const id = (n: number) => n.toString(16).padStart(32, '0');
const buf = (s: string) => Buffer.from(s, 'utf8');
const ORG = 'acme';
const [ADMIN, ALICE, BOB, CAROL] = [id(1), id(2), id(3), id(4)];
const [ADMIN_DEV, ALICE_DEV, BOB_DEV, CAROL_DEV, ALICE_DEV2] = [id(11), id(12), id(13), id(14), id(15)];
const [REALM, REALM2, GROUP] = [id(21), id(22), id(31)];
const [V1, V2, V3] = [id(41), id(42), id(43)];
const [BLOCK] = [id(51)];
/** Certificate times, increasing in the order the script appends them (the stores refuse time going backwards). */
const at = (n: number) => 1_800_000_000_000 + n;
const user = (userId: string, profile: string, n: number): NewUser => ({ userId, publicKey: buf(`pk-${userId}`), profile, certificate: buf(`cert-user-${userId}`), timestamp: at(n) });
const device = (deviceId: string, userId: string, n: number): NewDevice => ({ deviceId, userId, verifyKey: buf(`vk-${deviceId}`), certificate: buf(`cert-dev-${deviceId}`), timestamp: at(n) });
const cert = (what: string, n: number) => ({ blob: buf(`cert-${what}`), timestamp: at(n) });
const vlob = (realmId: string, vlobId: string, version: number, createdAt: number): VlobWrite => ({
  orgId: ORG,
  realmId,
  vlobId,
  version,
  keyIndex: 1,
  author: ADMIN_DEV,
  timestamp: 1000 + version,
  createdAt,
  blob: buf(`${vlobId}-v${version}`),
});
const invitation = (n: number, status: InvitationRow['status'] = 'pending'): InvitationRow => ({
  invitationId: id(60 + n),
  tokenHash: buf(`token-${n}`),
  type: n % 2 ? 'user' : 'device',
  handle: n % 2 ? `user${n}@acme.example` : null,
  greeterUserId: ADMIN,
  greeterDeviceId: ADMIN_DEV,
  status,
  createdAt: 5000 + n,
  claimerPublicKey: null,
  claimerCommitment: null,
  claimerNonce: null,
  claimerPayload: null,
  greeterPublicKey: null,
  greeterNonce: null,
  greeterPayload: null,
});

/** The script: [step name, call] pairs; calls use only fixed inputs so both stores get identical ones. */
function script(): Array<[string, (m: MetadataStore) => Promise<unknown>]> {
  const steps: Array<[string, (m: MetadataStore) => Promise<unknown>]> = [];
  const step = (name: string, fn: (m: MetadataStore) => Promise<unknown>) => steps.push([name, fn]);
  const u = { admin: user(ADMIN, 'admin', 10), alice: user(ALICE, 'standard', 12), bob: user(BOB, 'standard', 14), carol: user(CAROL, 'outsider', 16) };
  const d = { admin: device(ADMIN_DEV, ADMIN, 11), alice: device(ALICE_DEV, ALICE, 13), bob: device(BOB_DEV, BOB, 15), carol: device(CAROL_DEV, CAROL, 17), alice2: device(ALICE_DEV2, ALICE, 18) };
  const c = {
    realm: cert('realm', 20),
    realmDup: cert('realm-dup', 21),
    realm2: cert('realm2', 22),
    realm2b: cert('realm2-b', 22),
    aliceReader: cert('alice-reader', 23),
    aliceContrib: cert('alice-contrib', 24),
    group: cert('group', 25),
    groupDup: cert('group-dup', 26),
    bobIn: cert('bob-in', 27),
    carolIn: cert('carol-in', 28),
    groupRole: cert('group-role', 29),
    aliceIn: cert('alice-in', 30),
    groupRole2: cert('group-role-2', 31),
    aliceOut: cert('alice-out', 32),
    bobOut: cert('bob-out', 33),
    rotateWrong: cert('rotate-wrong', 33),
    rotate: cert('rotate', 33),
    rotateAgain: cert('rotate-again', 33),
    groupRoleOff: cert('group-role-off', 36),
  };

  step('create organization', (m) => m.createOrganization(ORG, buf('token-hash'), 100));
  step('create it again', (m) => m.createOrganization(ORG, buf('other'), 101));
  step('get organization', (m) => m.getOrganization(ORG));
  step('unknown organization', (m) => m.getOrganization('nope'));
  step('bootstrap', (m) => m.bootstrapOrganization(ORG, buf('root-key'), u.admin, d.admin, 200));
  step('bootstrap again', (m) => m.bootstrapOrganization(ORG, buf('root-key-2'), u.alice, d.alice, 201));
  step('organization after bootstrap', (m) => m.getOrganization(ORG));
  step('admin device', (m) => m.getDevice(ORG, ADMIN_DEV));
  step('unknown device', (m) => m.getDevice(ORG, ALICE_DEV));
  step('add alice', (m) => m.createUser(ORG, u.alice, d.alice));
  step('add alice again', (m) => m.createUser(ORG, u.alice, d.bob));
  step('add bob with alice\'s device id', (m) => m.createUser(ORG, u.bob, { ...d.bob, deviceId: ALICE_DEV }));
  step('add bob', (m) => m.createUser(ORG, u.bob, d.bob));
  step('add carol', (m) => m.createUser(ORG, u.carol, d.carol));
  step('certificate older than the last', (m) => m.createDevice(ORG, { ...d.alice2, timestamp: 1 }));
  step('alice second device', (m) => m.createDevice(ORG, d.alice2));
  step('same device again', (m) => m.createDevice(ORG, d.alice2));
  step('get alice', (m) => m.getUser(ORG, ALICE));
  step('unknown user', (m) => m.getUser(ORG, id(99)));
  step('certificates', (m) => m.listCertificates(ORG, 0));
  step('certificates since 5', (m) => m.listCertificates(ORG, 5));

  step('create realm', (m) => m.createRealm(ORG, REALM, ADMIN, 1, buf('sealed-admin-1'), 300, [c.realm]));
  step('create it again', (m) => m.createRealm(ORG, REALM, ALICE, 1, buf('x'), 301, [c.realmDup]));
  step('second realm', (m) => m.createRealm(ORG, REALM2, ALICE, 1, buf('sealed-alice-r2'), 302, [c.realm2, c.realm2b]));
  step('realm exists', (m) => m.realmExists(ORG, REALM));
  step('unknown realm', (m) => m.realmExists(ORG, id(98)));
  step('owner role', (m) => m.getRole(ORG, REALM, ADMIN));
  step('alice reader', (m) => m.setRole(ORG, REALM, ALICE, 'reader', [{ keyIndex: 1, sealedKey: buf('sealed-alice-1') }], c.aliceReader));
  step('alice role', (m) => m.getRole(ORG, REALM, ALICE));
  step('alice contributor, key resealed', (m) => m.setRole(ORG, REALM, ALICE, 'contributor', [{ keyIndex: 1, sealedKey: buf('sealed-alice-1b') }], c.aliceContrib));
  step('alice realms', (m) => m.listRealms(ORG, ALICE));
  step('members', (m) => m.listMembers(ORG, REALM));

  step('create group', (m) => m.createGroup(ORG, GROUP, c.group));
  step('create it again', (m) => m.createGroup(ORG, GROUP, c.groupDup));
  step('group exists', (m) => m.groupExists(ORG, GROUP));
  step('unknown group', (m) => m.groupExists(ORG, id(97)));
  step('bob joins', (m) => m.setGroupMember(ORG, GROUP, BOB, true, c.bobIn));
  step('carol joins', (m) => m.setGroupMember(ORG, GROUP, CAROL, true, c.carolIn));
  step('share realm with group (bob\'s key only)', (m) =>
    m.setGroupRole(ORG, REALM, GROUP, 'contributor', [{ userId: BOB, keyIndex: 1, sealedKey: buf('sealed-bob-1') }], c.groupRole),
  );
  step('group role', (m) => m.getGroupRole(ORG, REALM, GROUP));
  step('bob role through the group', (m) => m.getRole(ORG, REALM, BOB));
  step('members with the group', (m) => m.listMembers(ORG, REALM));
  step('admin realms: carol misses a key', (m) => m.listRealms(ORG, ADMIN));
  step('carol gets her key (bob\'s kept)', (m) => m.addMemberKeys(ORG, REALM, [{ userId: CAROL, keyIndex: 1, sealedKey: buf('sealed-carol-1') }, { userId: BOB, keyIndex: 1, sealedKey: buf('replaced?') }]));
  step('bob realms', (m) => m.listRealms(ORG, BOB));
  step('admin realms: nobody misses a key', (m) => m.listRealms(ORG, ADMIN));
  step('alice direct role beats the group', (m) => m.setGroupMember(ORG, GROUP, ALICE, true, c.aliceIn));
  step('alice role', (m) => m.getRole(ORG, REALM, ALICE));
  step('group as manager', (m) => m.setGroupRole(ORG, REALM, GROUP, 'manager', [], c.groupRole2));
  step('alice still contributor (direct)', (m) => m.getRole(ORG, REALM, ALICE));
  step('alice loses the direct role, keeps the group one', (m) => m.setRole(ORG, REALM, ALICE, null, [], c.aliceOut));
  step('alice role now', (m) => m.getRole(ORG, REALM, ALICE));
  step('alice keeps her keys', (m) => m.listRealms(ORG, ALICE));
  step('bob leaves the group', (m) => m.setGroupMember(ORG, GROUP, BOB, false, c.bobOut));
  step('bob role', (m) => m.getRole(ORG, REALM, BOB));
  step('bob realms', (m) => m.listRealms(ORG, BOB));
  step('admin realms: rotation needed', (m) => m.listRealms(ORG, ADMIN));
  step('rotate to a wrong index', (m) => m.addRealmKey(ORG, REALM, 3, [{ userId: ADMIN, sealedKey: buf('k3') }], c.rotateWrong));
  step('rotate to key 2', (m) =>
    m.addRealmKey(ORG, REALM, 2, [
      { userId: ADMIN, sealedKey: buf('admin-2') },
      { userId: ALICE, sealedKey: buf('alice-2') },
      { userId: CAROL, sealedKey: buf('carol-2') },
    ], c.rotate),
  );
  step('rotate to key 2 again', (m) => m.addRealmKey(ORG, REALM, 2, [{ userId: ADMIN, sealedKey: buf('again') }], c.rotateAgain));
  step('admin realms after rotation', (m) => m.listRealms(ORG, ADMIN));
  step('revoke carol', (m) => m.revokeUser(ORG, CAROL, buf('cert-revoke-carol'), at(34), 400));
  step('revoke carol again', (m) => m.revokeUser(ORG, CAROL, buf('cert-revoke-carol-2'), at(35), 401));
  step('carol device', (m) => m.getDevice(ORG, CAROL_DEV));
  step('carol role', (m) => m.getRole(ORG, REALM, CAROL));
  step('members after revocation', (m) => m.listMembers(ORG, REALM));
  step('admin realms after revocation', (m) => m.listRealms(ORG, ADMIN));
  step('stop sharing with the group', (m) => m.setGroupRole(ORG, REALM, GROUP, null, [], c.groupRoleOff));
  step('alice role after the group lost the realm', (m) => m.getRole(ORG, REALM, ALICE));
  step('certificates at the end of the role steps', (m) => m.listCertificates(ORG, 0));

  step('create v1', (m) => m.createVlob(vlob(REALM, V1, 1, 1000)));
  step('create v1 again', (m) => m.createVlob(vlob(REALM, V1, 1, 1001)));
  step('update to v2', (m) => m.updateVlob(vlob(REALM, V1, 2, 1010)));
  step('update to v2 again', (m) => m.updateVlob(vlob(REALM, V1, 2, 1011)));
  step('update to v4', (m) => m.updateVlob(vlob(REALM, V1, 4, 1012)));
  step('update to v3', (m) => m.updateVlob(vlob(REALM, V1, 3, 1020)));
  step('create V2', (m) => m.createVlob(vlob(REALM, V2, 1, 1030)));
  step('V1 through another realm', (m) => m.updateVlob(vlob(REALM2, V1, 4, 1040)));
  step('create V1 in another realm', (m) => m.createVlob(vlob(REALM2, V1, 1, 1041)));
  step('create V3 in realm 2', (m) => m.createVlob(vlob(REALM2, V3, 1, 1042)));
  step('update of a missing vlob', (m) => m.updateVlob(vlob(REALM, id(49), 2, 1043)));
  step('read latest', (m) => m.readVlob(ORG, REALM, V1, {}));
  step('read v2', (m) => m.readVlob(ORG, REALM, V1, { version: 2 }));
  step('read v5', (m) => m.readVlob(ORG, REALM, V1, { version: 5 }));
  step('read at 1015', (m) => m.readVlob(ORG, REALM, V1, { at: 1015 }));
  step('read at 999', (m) => m.readVlob(ORG, REALM, V1, { at: 999 }));
  step('read v3 at 1015', (m) => m.readVlob(ORG, REALM, V1, { version: 3, at: 1015 }));
  step('read through the wrong realm', (m) => m.readVlob(ORG, REALM2, V1, {}));
  step('batch read (duplicates, missing, other realm)', (m) => m.readVlobs(ORG, REALM, [V2, id(48), V1, V3, V2]));
  step('batch read of nothing', (m) => m.readVlobs(ORG, REALM, []));
  step('changes', (m) => m.listChanges(ORG, REALM, 0));
  step('changes since 2', (m) => m.listChanges(ORG, REALM, 2));
  step('changes since the end', (m) => m.listChanges(ORG, REALM, 4));
  step('changes of realm 2', (m) => m.listChanges(ORG, REALM2, 0));
  step('changes of an unknown realm', (m) => m.listChanges(ORG, id(98), 0));

  step('block meta', (m) => m.insertBlockMeta(ORG, BLOCK, { realmId: REALM, size: 10, digest: buf('digest') }, ADMIN_DEV, 2000));
  step('block meta again', (m) => m.insertBlockMeta(ORG, BLOCK, { realmId: REALM2, size: 11, digest: buf('other') }, ADMIN_DEV, 2001));
  step('get block meta', (m) => m.getBlockMeta(ORG, BLOCK));
  step('unknown block', (m) => m.getBlockMeta(ORG, id(59)));
  // Block garbage collection: list, release (all or nothing), revive, claim, delete.
  step('second block', (m) => m.insertBlockMeta(ORG, id(52), { realmId: REALM, size: 20, digest: buf('d2') }, ADMIN_DEV, 2002));
  step('third block', (m) => m.insertBlockMeta(ORG, id(53), { realmId: REALM, size: 30, digest: buf('d3') }, ADMIN_DEV, 2003));
  step('block of realm 2', (m) => m.insertBlockMeta(ORG, id(54), { realmId: REALM2, size: 40, digest: buf('d4') }, ADMIN_DEV, 2004));
  step('list blocks', (m) => m.listBlocks(ORG, REALM, '', 10));
  step('list blocks, page of 2', (m) => m.listBlocks(ORG, REALM, '', 2));
  step('list blocks after the first', (m) => m.listBlocks(ORG, REALM, BLOCK, 10));
  step('release with a block of realm 2', (m) => m.releaseBlocks(ORG, REALM, [BLOCK, id(54)], ALICE_DEV, 3000));
  step('release with an unknown block', (m) => m.releaseBlocks(ORG, REALM, [id(59), BLOCK], ALICE_DEV, 3000));
  step('nothing released', (m) => m.listBlocks(ORG, REALM, '', 10));
  step('release two (one twice)', (m) => m.releaseBlocks(ORG, REALM, [BLOCK, id(52), BLOCK], ALICE_DEV, 3001));
  step('release again', (m) => m.releaseBlocks(ORG, REALM, [id(52), id(53)], ADMIN_DEV, 3002));
  step('released blocks before 3001', (m) => m.listReleasedBlocks(3001, 10));
  step('released blocks before 3000', (m) => m.listReleasedBlocks(3000, 10));
  step('revive a live block', (m) => m.reviveBlock(ORG, id(54)));
  step('revive a released block', (m) => m.reviveBlock(ORG, id(53)));
  step('revive an unknown block', (m) => m.reviveBlock(ORG, id(59)));
  step('claim a block released too late', (m) => m.markBlockDeleting(ORG, id(53), 3001, 4000));
  step('claim a released block', (m) => m.markBlockDeleting(ORG, BLOCK, 3001, 4000));
  step('claim it again', (m) => m.markBlockDeleting(ORG, BLOCK, 3001, 4001));
  step('revive a block being deleted', (m) => m.reviveBlock(ORG, BLOCK));
  step('release a block being deleted', (m) => m.releaseBlocks(ORG, REALM, [BLOCK], ADMIN_DEV, 4002));
  step('list hides a block being deleted', (m) => m.listBlocks(ORG, REALM, '', 10));
  step('released blocks include the claimed one', (m) => m.listReleasedBlocks(0, 10));
  step('delete a live block record', (m) => m.deleteBlockMeta(ORG, id(54)));
  step('delete the claimed block record', (m) => m.deleteBlockMeta(ORG, BLOCK));
  step('block gone', (m) => m.getBlockMeta(ORG, BLOCK));

  step('invitation 1', (m) => m.createInvitation(ORG, invitation(1)));
  step('invitation 2', (m) => m.createInvitation(ORG, invitation(2)));
  step('same token again', (m) => m.createInvitation(ORG, { ...invitation(3), tokenHash: buf('token-1') }).then(() => 'created', () => 'refused'));
  step('get invitation', (m) => m.getInvitation(ORG, id(61)));
  step('by token', (m) => m.getInvitationByToken(ORG, buf('token-2')));
  step('unknown token', (m) => m.getInvitationByToken(ORG, buf('token-9')));
  step('list', (m) => m.listInvitations(ORG, ADMIN));
  const start = { claimerPublicKey: buf('cpk'), claimerCommitment: buf('commit'), status: 'claiming' as const };
  step('claimer starts', (m) => m.updateInvitation(ORG, id(61), start, { unset: ['claimerPublicKey'], statuses: ['pending'] }));
  step('claimer starts again', (m) => m.updateInvitation(ORG, id(61), start, { unset: ['claimerPublicKey'], statuses: ['pending'] }));
  step('greeter keys', (m) => m.updateInvitation(ORG, id(61), { greeterPublicKey: buf('gpk'), greeterNonce: buf('gn') }, { unset: ['greeterPublicKey'], statuses: ['claiming'] }));
  step('greeter keys in the wrong status', (m) => m.updateInvitation(ORG, id(62), { greeterPublicKey: buf('gpk') }, { unset: ['greeterPublicKey'], statuses: ['claiming'] }));
  step('done', (m) => m.updateInvitation(ORG, id(61), { greeterPayload: buf('payload'), status: 'done' }, { unset: ['greeterPayload'], statuses: ['claiming'] }));
  step('cancel 2', (m) => m.updateInvitation(ORG, id(62), { status: 'cancelled' }, { unset: [], statuses: ['pending', 'claiming'] }));
  step('cancel 2 again', (m) => m.updateInvitation(ORG, id(62), { status: 'cancelled' }, { unset: [], statuses: ['pending', 'claiming'] }));
  step('invitation after the exchange', (m) => m.getInvitation(ORG, id(61)));
  step('list after', (m) => m.listInvitations(ORG, ADMIN));
  return steps;
}

t.test('PostgreSQL answers every MetadataStore call like SQLite', async (t) => {
  const sqlite = new SqliteMetadataStore(join(dir, 'metadata.sqlite'));
  const postgres = await PostgresMetadataStore.open({ url: await pgCluster.createDatabase() });
  t.teardown(async () => {
    await sqlite.close();
    await postgres.close();
  });
  const liteSteps = script();
  const pgSteps = script();
  let differences = 0;
  const answers: unknown[] = [];
  for (let i = 0; i < liteSteps.length; i++) {
    const [name, liteCall] = liteSteps[i]!;
    const pgCall = pgSteps[i]![1];
    const expected = await answer(() => liteCall(sqlite));
    const actual = await answer(() => pgCall(postgres));
    answers.push(expected);
    if (!t.same(actual, expected, `${i + 1}. ${name}`)) differences++;
  }
  t.equal(differences, 0, `${liteSteps.length} steps, no difference`);
  // The script really exercises refusals and conflicts, not only successes.
  t.ok(answers.some((a) => (a as { error?: string }).error === 'conflict'), 'an error answer (certificate time) is among them');
  t.ok(answers.filter((a) => (a as { ok?: unknown }).ok === false).length >= 8, 'and many refusals (false)');
  t.ok(answers.some((a) => JSON.stringify(a).includes('"currentVersion":3')), 'and vlob version conflicts');
});
