import t from 'tap';
import { CertificateChain } from '../../src/client/certificates.js';
import { generateBoxKeyPair, generateSigningKeyPair, sodiumReady } from '../../src/crypto/index.js';
import { signCertificate, type Certificate } from '../../src/model/certificates.js';
import { newId } from '../../src/model/ids.js';
import { IntegrityError } from '../../src/errors.js';

await sodiumReady();

/** An organization's chain built by hand: root -> admin (user + device) -> others. */
function makeOrg() {
  const root = generateSigningKeyPair();
  const admin = { userId: newId(), deviceId: newId(), keys: generateSigningKeyPair(), box: generateBoxKeyPair() };
  const t0 = 1_700_000_000_000;
  const certs: Array<{ index: number; blob: Uint8Array }> = [];
  const push = (c: Certificate, key: Uint8Array) => certs.push({ index: certs.length + 1, blob: signCertificate(c, key) });
  push({ type: 'user', userId: admin.userId, handle: 'admin@x', publicKey: admin.box.publicKey, profile: 'admin', timestamp: t0, author: 'root' }, root.secretKey);
  push({ type: 'device', deviceId: admin.deviceId, userId: admin.userId, label: 'a', verifyKey: admin.keys.publicKey, timestamp: t0, author: 'root' }, root.secretKey);
  return { root, admin, t0, certs, push };
}

t.test('a correct chain verifies, with users, devices and revocations', async (t) => {
  const org = makeOrg();
  const bob = { userId: newId(), deviceId: newId(), keys: generateSigningKeyPair() };
  org.push({ type: 'user', userId: bob.userId, handle: 'bob@x', publicKey: generateBoxKeyPair().publicKey, profile: 'standard', timestamp: org.t0 + 1, author: org.admin.deviceId }, org.admin.keys.secretKey);
  org.push({ type: 'device', deviceId: bob.deviceId, userId: bob.userId, label: 'b', verifyKey: bob.keys.publicKey, timestamp: org.t0 + 1, author: org.admin.deviceId }, org.admin.keys.secretKey);
  org.push({ type: 'revoked', userId: bob.userId, timestamp: org.t0 + 5, author: org.admin.deviceId }, org.admin.keys.secretKey);
  const chain = new CertificateChain(org.root.publicKey);
  chain.add(org.certs);
  t.equal(chain.index, 5);
  t.equal(chain.users.get(bob.userId)?.revokedAt, org.t0 + 5);
  t.ok(chain.verifyKeyAt(bob.deviceId, org.t0 + 4), 'bob signed validly before his revocation');
  t.equal(chain.verifyKeyAt(bob.deviceId, org.t0 + 6), undefined, 'and not after');
});

t.test('forged or out-of-order certificates are refused', async (t) => {
  const cases: Array<[string, (org: ReturnType<typeof makeOrg>) => void]> = [
    ['signed by the wrong key', (org) => {
      const other = generateSigningKeyPair();
      org.push({ type: 'user', userId: newId(), handle: 'm@x', publicKey: generateBoxKeyPair().publicKey, profile: 'admin', timestamp: org.t0 + 1, author: org.admin.deviceId }, other.secretKey);
    }],
    ['authored by a non-admin', (org) => {
      const bob = { userId: newId(), deviceId: newId(), keys: generateSigningKeyPair() };
      org.push({ type: 'user', userId: bob.userId, handle: 'bob@x', publicKey: generateBoxKeyPair().publicKey, profile: 'standard', timestamp: org.t0 + 1, author: org.admin.deviceId }, org.admin.keys.secretKey);
      org.push({ type: 'device', deviceId: bob.deviceId, userId: bob.userId, label: 'b', verifyKey: bob.keys.publicKey, timestamp: org.t0 + 1, author: org.admin.deviceId }, org.admin.keys.secretKey);
      org.push({ type: 'user', userId: newId(), handle: 'eve@x', publicKey: generateBoxKeyPair().publicKey, profile: 'admin', timestamp: org.t0 + 2, author: bob.deviceId }, bob.keys.secretKey);
    }],
    ['with an older timestamp', (org) => {
      org.push({ type: 'user', userId: newId(), handle: 'old@x', publicKey: generateBoxKeyPair().publicKey, profile: 'standard', timestamp: org.t0 - 1, author: org.admin.deviceId }, org.admin.keys.secretKey);
    }],
    ['signed by the root key after bootstrap', (org) => {
      org.push({ type: 'user', userId: newId(), handle: 'r@x', publicKey: generateBoxKeyPair().publicKey, profile: 'admin', timestamp: org.t0 + 1, author: 'root' }, org.root.secretKey);
    }],
    ['a device of an unknown user', (org) => {
      org.push({ type: 'device', deviceId: newId(), userId: newId(), label: 'x', verifyKey: generateSigningKeyPair().publicKey, timestamp: org.t0 + 1, author: org.admin.deviceId }, org.admin.keys.secretKey);
    }],
    ['making an outsider owner of a workspace', (org) => {
      const realmId = newId();
      const outsider = newId();
      org.push({ type: 'user', userId: outsider, handle: 'o@x', publicKey: generateBoxKeyPair().publicKey, profile: 'outsider', timestamp: org.t0 + 1, author: org.admin.deviceId }, org.admin.keys.secretKey);
      org.push({ type: 'realm_role', realmId, userId: org.admin.userId, role: 'owner', timestamp: org.t0 + 2, author: org.admin.deviceId }, org.admin.keys.secretKey);
      org.push({ type: 'realm_role', realmId, userId: outsider, role: 'owner', timestamp: org.t0 + 3, author: org.admin.deviceId }, org.admin.keys.secretKey);
    }],
    ['a role granted by a non-member', (org) => {
      const realmId = newId();
      const other = { userId: newId(), deviceId: newId(), keys: generateSigningKeyPair() };
      org.push({ type: 'user', userId: other.userId, handle: 'c@x', publicKey: generateBoxKeyPair().publicKey, profile: 'standard', timestamp: org.t0 + 1, author: org.admin.deviceId }, org.admin.keys.secretKey);
      org.push({ type: 'device', deviceId: other.deviceId, userId: other.userId, label: 'c', verifyKey: other.keys.publicKey, timestamp: org.t0 + 1, author: org.admin.deviceId }, org.admin.keys.secretKey);
      org.push({ type: 'realm_role', realmId, userId: org.admin.userId, role: 'owner', timestamp: org.t0 + 2, author: org.admin.deviceId }, org.admin.keys.secretKey);
      org.push({ type: 'realm_role', realmId, userId: other.userId, role: 'contributor', timestamp: org.t0 + 3, author: other.deviceId }, other.keys.secretKey);
    }],
    ['a workspace key certified by a non-owner', (org) => {
      const realmId = newId();
      org.push({ type: 'realm_key', realmId, keyIndex: 1, keyDigest: new Uint8Array(32), timestamp: org.t0 + 1, author: org.admin.deviceId }, org.admin.keys.secretKey);
    }],
    ['by a revoked admin', (org) => {
      const admin2 = { userId: newId(), deviceId: newId(), keys: generateSigningKeyPair() };
      org.push({ type: 'user', userId: admin2.userId, handle: 'a2@x', publicKey: generateBoxKeyPair().publicKey, profile: 'admin', timestamp: org.t0 + 1, author: org.admin.deviceId }, org.admin.keys.secretKey);
      org.push({ type: 'device', deviceId: admin2.deviceId, userId: admin2.userId, label: 'a2', verifyKey: admin2.keys.publicKey, timestamp: org.t0 + 1, author: org.admin.deviceId }, org.admin.keys.secretKey);
      org.push({ type: 'revoked', userId: admin2.userId, timestamp: org.t0 + 2, author: org.admin.deviceId }, org.admin.keys.secretKey);
      org.push({ type: 'user', userId: newId(), handle: 'z@x', publicKey: generateBoxKeyPair().publicKey, profile: 'admin', timestamp: org.t0 + 3, author: admin2.deviceId }, admin2.keys.secretKey);
    }],
  ];
  for (const [name, forge] of cases) {
    const org = makeOrg();
    forge(org);
    const chain = new CertificateChain(org.root.publicKey);
    t.throws(() => chain.add(org.certs), IntegrityError, name);
  }
  const org = makeOrg();
  const chain = new CertificateChain(org.root.publicKey);
  t.throws(() => chain.add([org.certs[1]!, org.certs[0]!]), IntegrityError, 'a dropped or reordered certificate');
  const other = makeOrg();
  t.throws(() => new CertificateChain(org.root.publicKey).add(other.certs), IntegrityError, 'another organization\'s chain');
});
