/**
 * One greeter finishing several enrolments at the same moment: the server takes an organization's
 * certificates in timestamp order only, and the later-signed of two certificates sent at once could
 * arrive first (the other was refused: seen in test/e2e/scaleout.test.ts). Every enrolment must succeed.
 */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { ServerConnection } from '../../src/client/connection.js';
import { claim, greet } from '../../src/client/invitations.js';
import { generateSigningKeyPair } from '../../src/crypto/index.js';
import { peekCertificate, signCertificate } from '../../src/model/certificates.js';
import { newId } from '../../src/model/ids.js';
import { bootstrapClientOrg } from '../helpers/client.js';
import { startTestServer } from '../helpers/server.js';

t.test('enrolments greeted by one device and finished at once all succeed, their certificates in order', async (t) => {
  const server = await startTestServer({ teardown: (fn) => t.teardown(fn) });
  const root = await mkdtemp(join(tmpdir(), 'coffer-enrol-'));
  const org = await bootstrapClientOrg(server, 'acme', root);
  const greeter = org.device;
  const conn = new ServerConnection(greeter.serverUrl, greeter);
  t.teardown(() => conn.close());

  const invitations: Array<{ type: 'user' | 'device'; handle: string | undefined }> = [
    { type: 'user', handle: 'bob@example.org' },
    { type: 'user', handle: 'carol@example.org' },
    { type: 'device', handle: undefined },
    { type: 'device', handle: undefined },
  ];
  for (let round = 0; round < 3; round++) {
    // Both sides up to the codes, for every invitation; then every greeter and claimer finishes at once.
    const started = await Promise.all(
      invitations.map(async ({ type, handle }, i) => {
        const inv = await conn.createInvitation(type, handle && `${round}.${handle}`);
        const [g, c] = await Promise.all([greet(greeter, conn, inv.invitationId, 30_000), claim(server.url, greeter.orgId, inv.token, 30_000)]);
        t.equal(g.sas, c.sas, `round ${round}, invitation ${i}: both sides show the same code`);
        return { g, c, deviceFile: join(root, `r${round}-${i}.device`) };
      }),
    );
    const finished = await Promise.allSettled(started.flatMap(({ g, c, deviceFile }) => [g.finish(), c.finish({ password: 'pw', deviceFile, label: 'new device' })]));
    t.same(
      finished.filter((r) => r.status === 'rejected').map((r) => String((r as PromiseRejectedResult).reason)),
      [],
      `round ${round}: every greeter and claimer finished`,
    );
  }

  const certificates = (await conn.listCertificates(0)).map((c) => peekCertificate(c.blob));
  t.equal(certificates.filter((c) => c.type === 'device').length, 1 + 3 * 4, 'the bootstrap device and every enrolled one are certified');
});

// The same refusal when the certificate that came in between is another device's, its clock a
// little ahead: the greeter signs again with a later time instead of failing the enrolment.
t.test('an enrolment whose certificate is refused as older than the last one is signed again and succeeds', async (t) => {
  const server = await startTestServer({ teardown: (fn) => t.teardown(fn) });
  const root = await mkdtemp(join(tmpdir(), 'coffer-enrol-'));
  const greeter = (await bootstrapClientOrg(server, 'acme', root)).device;
  const conn = new ServerConnection(greeter.serverUrl, greeter);
  t.teardown(() => conn.close());

  const inv = await conn.createInvitation('device', undefined);
  const [g, c] = await Promise.all([greet(greeter, conn, inv.invitationId, 30_000), claim(server.url, greeter.orgId, inv.token, 30_000)]);
  const claimed = c.finish({ password: 'pw', deviceFile: join(root, 'new.device'), label: 'new device' });
  while (!(await conn.getInvitation(inv.invitationId)).claimerPayload) await new Promise((r) => setTimeout(r, 20)); // the greeter will find it at once
  // A certificate stamped 200 ms ahead lands just before the greeter signs: its first signature is refused.
  const ahead = signCertificate(
    { type: 'device', deviceId: newId(), userId: greeter.userId, label: 'clock ahead', verifyKey: generateSigningKeyPair().publicKey, timestamp: Date.now() + 200, author: greeter.deviceId },
    greeter.signingKey,
  );
  await conn.createDevice(ahead);
  const greeted = await g.finish();
  const device = await claimed;
  t.equal(greeted.deviceId, device.deviceId, 'the new device is enrolled');
  const certified = (await conn.listCertificates(0)).map((x) => peekCertificate(x.blob));
  t.ok(certified.some((x) => x.type === 'device' && x.deviceId === device.deviceId), 'and certified, after the one ahead of it');
});
