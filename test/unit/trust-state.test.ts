/**
 * What a device remembers against a hostile server (src/client/trust-state.ts) and how the
 * certificate chain uses it (CertificateChain.refresh): the floors only go up, across processes;
 * a certificate list that shrinks, is rewritten in its known prefix, or replays a certificate is refused.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { CertificateChain } from '../../src/client/certificates.js';
import { TrustState } from '../../src/client/trust-state.js';
import { generateBoxKeyPair, generateSigningKeyPair, sodiumReady } from '../../src/crypto/index.js';
import { IntegrityError } from '../../src/errors.js';
import { signCertificate, type Certificate } from '../../src/model/certificates.js';
import { newId } from '../../src/model/ids.js';

await sodiumReady();

function makeOrg(users: number) {
  const root = generateSigningKeyPair();
  const admin = { userId: newId(), deviceId: newId(), keys: generateSigningKeyPair() };
  const t0 = 1_700_000_000_000;
  const certs: Array<{ index: number; blob: Buffer }> = [];
  const push = (c: Certificate, key: Uint8Array) => certs.push({ index: certs.length + 1, blob: Buffer.from(signCertificate(c, key)) });
  push({ type: 'user', userId: admin.userId, handle: 'admin@x', publicKey: generateBoxKeyPair().publicKey, profile: 'admin', timestamp: t0, author: 'root' }, root.secretKey);
  push({ type: 'device', deviceId: admin.deviceId, userId: admin.userId, label: 'a', verifyKey: admin.keys.publicKey, timestamp: t0, author: 'root' }, root.secretKey);
  for (let i = 0; i < users; i++) {
    push({ type: 'user', userId: newId(), handle: `u${i}@x`, publicKey: generateBoxKeyPair().publicKey, profile: 'standard', timestamp: t0 + 10 + i, author: admin.deviceId }, admin.keys.secretKey);
  }
  return { root, admin, t0, certs };
}

const dir = await mkdtemp(join(tmpdir(), 'coffer-trust-'));
t.teardown(() => rm(dir, { recursive: true, force: true }));

t.test('vlob floors and checkpoints only go up, and are shared by every process of the device', async (t) => {
  const file = join(dir, 'a.sqlite');
  const a = TrustState.open(file);
  const b = TrustState.open(file); // another process of the same device
  const d5 = Buffer.alloc(32, 5);
  // Floors are written at the end of the turn (batched): another process sees them from then on.
  const endOfTurn = () => new Promise<void>((resolve) => setImmediate(resolve));
  a.rememberVlobs('r', [{ vlobId: 'v', version: 5, digest: d5 }]);
  t.same(a.vlob('r', 'v'), { version: 5, digest: d5 }, 'the process that learnt a floor reads it at once');
  await endOfTurn();
  b.rememberVlobs('r', [{ vlobId: 'v', version: 3, digest: Buffer.alloc(32, 3) }]);
  await endOfTurn();
  t.same(a.vlob('r', 'v'), { version: 5, digest: d5 }, 'a lower version never lowers the floor nor replaces the digest');
  b.rememberVlobs('r', [{ vlobId: 'v', version: 5, digest: null }]);
  t.same(b.vlob('r', 'v')?.digest, d5, 'the same version without a digest keeps the one known');
  b.rememberVlobs('r', [{ vlobId: 'v', version: 6, digest: Buffer.alloc(32, 6) }]);
  await endOfTurn();
  t.equal(a.vlob('r', 'v')?.version, 6, 'seen by the other process');
  t.equal(a.vlob('other realm', 'v'), null, 'per realm');
  a.rememberCheckpoint('r', 10);
  b.rememberCheckpoint('r', 4);
  t.equal(a.checkpoint('r'), 10);
  a.close();
  b.close();
  const again = TrustState.open(file);
  t.equal(again.vlob('r', 'v')?.version, 6, 'durable');
  again.close();
});

t.test('certificate memory: a shorter, rewritten or replaying list is refused; a longer one is remembered', async (t) => {
  const org = makeOrg(4);
  const memory = TrustState.open(join(dir, 'b.sqlite'));
  t.teardown(() => memory.close());
  const serve = (certs: Array<{ index: number; blob: Buffer }>) => async (since: number) => certs.filter((c) => c.index > since);
  const first = new CertificateChain(org.root.publicKey);
  t.equal((await first.refresh(serve(org.certs.slice(0, 5)), memory)).length, 5);
  t.equal(memory.knownCertificates()?.count, 5);

  await t.rejects(new CertificateChain(org.root.publicKey).refresh(serve(org.certs.slice(0, 4)), memory), { name: 'IntegrityError', message: /lists 4 certificates but this device already verified 5/ }, 'the last one dropped');
  // The known prefix reordered (two certificates of equal standing swapped, timestamps still in order).
  const swapped = org.certs.slice(0, 6).map((c) => ({ ...c }));
  [swapped[3]!.blob, swapped[4]!.blob] = [swapped[4]!.blob, swapped[3]!.blob];
  const reordered = new CertificateChain(org.root.publicKey);
  await t.rejects(reordered.refresh(serve(swapped), memory), IntegrityError, 'reordered inside the known prefix');
  const replayed = [...org.certs.slice(0, 5), { index: 6, blob: org.certs[2]!.blob }];
  await t.rejects(new CertificateChain(org.root.publicKey).refresh(serve(replayed), memory), { message: /certificate 6 is a replay of certificate 3/ });

  const full = new CertificateChain(org.root.publicKey);
  await full.refresh(serve(org.certs), memory);
  t.equal(memory.knownCertificates()?.count, 6, 'a longer honest list is remembered');
  // A chain cached locally (the workspace store) that only fetches what is new is checked the same way.
  const cached = new CertificateChain(org.root.publicKey);
  cached.add(org.certs.slice(0, 2));
  await t.rejects(cached.refresh(serve(org.certs.slice(0, 5)), memory), { message: /lists 5 certificates but this device already verified 6/ });
  t.throws(() => full.checkExtends({ count: 6, hash: Buffer.alloc(32) }), { message: /differ from the ones this device verified/ }, 'a rewritten prefix');
});
