/**
 * Organization fixtures over real HTTP: create + bootstrap an organization, add users, create
 * workspaces (realms) and grant roles. Every helper throws on an unexpected status.
 */
import { randomBytes } from 'node:crypto';
import { generateBoxKeyPair, generateSigningKeyPair, sealToPublicKey, sodiumReady, workspaceKeyDigest, type BoxKeyPair } from '../../src/crypto/index.js';
import { signCertificate, type Profile } from '../../src/model/certificates.js';
import { newId } from '../../src/model/ids.js';
import { ROUTES, routePath, type Role } from '../../src/protocol/schemas.js';
import { request, type DeviceCredentials, type TestResponse, type TestServer } from './server.js';

export interface TestDevice extends DeviceCredentials {
  userId: string;
  verifyKey: Buffer;
  profile: Profile;
  /** The user's X25519 key pair: workspace keys are sealed to its public key. */
  userBox: BoxKeyPair;
}

export interface TestRealm {
  realmId: string;
  keyIndex: number;
  workspaceKey: Buffer;
  sealedKey: Buffer;
}

type ServerLike = Pick<TestServer, 'url' | 'adminToken'>;

const b64 = (u8: Uint8Array) => Buffer.from(u8).toString('base64');

function expectStatus(res: TestResponse, expected: number, what: string): void {
  if (res.status !== expected) {
    throw new Error(`${what}: expected HTTP ${expected}, got ${res.status} ${res.body.toString('utf8').slice(0, 500)}`);
  }
}

/** A fresh user + device identity and the two certificates describing it, signed by `author`. */
export async function newIdentity(
  orgId: string,
  profile: Profile,
  author: 'root' | string,
  authorSigningKey: Uint8Array,
  timestamp: number = Date.now(),
): Promise<{ device: TestDevice; userCertificate: Uint8Array; deviceCertificate: Uint8Array }> {
  await sodiumReady();
  const userId = newId();
  const deviceId = newId();
  const signing = generateSigningKeyPair();
  const userBox = generateBoxKeyPair();
  const userCertificate = signCertificate(
    { type: 'user', userId, handle: `${profile}-${userId.slice(0, 8)}@${orgId}`, publicKey: userBox.publicKey, profile, timestamp, author },
    authorSigningKey,
  );
  const deviceCertificate = signCertificate(
    { type: 'device', deviceId, userId, label: 'test device', verifyKey: signing.publicKey, timestamp, author },
    authorSigningKey,
  );
  return {
    device: { orgId, userId, deviceId, signingKey: signing.secretKey, verifyKey: signing.publicKey, profile, userBox },
    userCertificate,
    deviceCertificate,
  };
}

/** POST /v1/orgs with the administration token; returns the one-time bootstrap token. */
export async function createOrg(server: ServerLike, orgId: string): Promise<string> {
  const res = await request(server, 'POST', ROUTES.orgs, { json: { orgId }, headers: { 'x-coffer-admin-token': server.adminToken } });
  expectStatus(res, 201, `create organization ${orgId}`);
  return res.json.bootstrapToken as string;
}

/** The body of a bootstrap request for a fresh root key and admin identity (tests may tamper with it). */
export async function bootstrapRequest(orgId: string, token: string, opts: { profile?: Profile } = {}) {
  const root = generateSigningKeyPair();
  const id = await newIdentity(orgId, opts.profile ?? 'admin', 'root', root.secretKey);
  return {
    root,
    device: id.device,
    body: {
      token,
      rootVerifyKey: b64(root.publicKey),
      userCertificate: b64(id.userCertificate),
      deviceCertificate: b64(id.deviceCertificate),
    },
  };
}

/** Creates and bootstraps an organization; returns its first (admin) device. */
export async function bootstrapOrg(server: ServerLike, orgId: string): Promise<TestDevice> {
  const token = await createOrg(server, orgId);
  const { device, body } = await bootstrapRequest(orgId, token);
  const res = await request(server, 'POST', routePath(ROUTES.bootstrap, { org: orgId }), { json: body });
  expectStatus(res, 201, `bootstrap organization ${orgId}`);
  return device;
}

/** An admin device adds a user (with a first device) of the given profile. */
export async function addUser(server: ServerLike, admin: TestDevice, profile: Profile): Promise<TestDevice> {
  const id = await newIdentity(admin.orgId, profile, admin.deviceId, admin.signingKey);
  const res = await request(server, 'POST', routePath(ROUTES.users, { org: admin.orgId }), {
    device: admin,
    json: { userCertificate: b64(id.userCertificate), deviceCertificate: b64(id.deviceCertificate) },
  });
  expectStatus(res, 201, `add ${profile} user`);
  return id.device;
}

/** The owner's certificate of a workspace key (index 1). */
export function realmKeyCertificate(device: TestDevice, realmId: string, key: Uint8Array): Uint8Array {
  return signCertificate(
    { type: 'realm_key', realmId, keyIndex: 1, keyDigest: workspaceKeyDigest(key), timestamp: Date.now(), author: device.deviceId },
    device.signingKey,
  );
}

/** Creates a workspace owned by the device's user: key index 1, a random key sealed to the user. */
export async function createRealm(server: ServerLike, device: TestDevice): Promise<TestRealm> {
  await sodiumReady();
  const realmId = newId();
  const workspaceKey = randomBytes(32);
  const sealedKey = sealToPublicKey(workspaceKey, device.userBox.publicKey);
  const roleCertificate = signCertificate(
    { type: 'realm_role', realmId, userId: device.userId, role: 'owner', timestamp: Date.now(), author: device.deviceId },
    device.signingKey,
  );
  const res = await request(server, 'POST', routePath(ROUTES.realms, { org: device.orgId }), {
    device,
    json: { realmId, keyIndex: 1, sealedKey: b64(sealedKey), roleCertificate: b64(roleCertificate), keyCertificate: b64(realmKeyCertificate(device, realmId, workspaceKey)) },
  });
  expectStatus(res, 201, 'create realm');
  return { realmId, keyIndex: 1, workspaceKey, sealedKey };
}

/**
 * PUT the member's role (null removes it), with the workspace key (random when not given)
 * sealed to the member. Returns the raw response: tests assert refusals themselves.
 */
export async function grant(
  server: ServerLike,
  owner: DeviceCredentials,
  realmId: string,
  userId: string,
  role: Role | null,
  recipientBoxPublicKey: Uint8Array,
  workspaceKey: Uint8Array = randomBytes(32),
): Promise<TestResponse> {
  await sodiumReady();
  const keys = role === null ? [] : [{ keyIndex: 1, sealedKey: b64(sealToPublicKey(workspaceKey, recipientBoxPublicKey)) }];
  const certificate = signCertificate({ type: 'realm_role', realmId, userId, role, timestamp: Date.now(), author: owner.deviceId }, owner.signingKey);
  return request(server, 'PUT', routePath(ROUTES.role, { org: owner.orgId, realm: realmId, user: userId }), {
    device: owner,
    json: { role, keys, certificate: b64(certificate) },
  });
}

/** grant(), throwing unless the server accepted it. */
export async function mustGrant(...args: Parameters<typeof grant>): Promise<void> {
  const res = await grant(...args);
  expectStatus(res, 200, `grant ${args[4]} on ${args[2]}`);
}
