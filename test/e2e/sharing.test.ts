import { once } from 'node:events';
import { createServer, request as httpRequest } from 'node:http';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import t from 'tap';
import { ServerConnection } from '../../src/client/connection.js';
import { setMemberRole } from '../../src/client/sharing.js';
import { findWorkspace, listWorkspaces, verifiedChain } from '../../src/client/workspaces.js';
import { WorkspaceKeys } from '../../src/client/remote.js';
import { generateSigningKeyPair, sealToPublicKey, xchachaDecrypt } from '../../src/crypto/index.js';
import { signCertificate } from '../../src/model/certificates.js';
import { newId } from '../../src/model/ids.js';
import { enroll, eventually } from '../helpers/enroll.js';
import { mountWorkspace, setupEnvironment, sh, type Environment } from '../helpers/mount.js';

t.test('invite a user with SAS, share a workspace, edits flow both ways', async (t) => {
  const envx = await setupEnvironment(t);
  const alice = envx.org.device;
  const { g, c, conn } = await enroll(envx, alice, 'user', 'bob@example.org', 'bob');
  t.equal(g.sas, c.sas, 'both sides show the same code');
  t.match(g.sas, /^[A-Z2-9]{6}$/);
  const bobFile = join(envx.root, 'bob.device');
  const [bob] = await Promise.all([c.finish({ password: 'bob password', deviceFile: bobFile, label: 'bob-laptop' }), g.finish()]);
  t.equal(bob.userHandle, 'bob@example.org');
  const docs = findWorkspace((await listWorkspaces(alice, join(envx.root, 'data'), conn)).workspaces, 'Docs');
  await setMemberRole(alice, conn, docs.realmId, 'bob@example.org', 'contributor');
  conn.close();

  const bobEnv: Environment = { ...envx, env: { ...envx.env, COFFER_DEVICE_FILE: bobFile, COFFER_PASSWORD: 'bob password', COFFER_DATA_DIR: join(envx.root, 'bob-data') } };
  const ma = await mountWorkspace(t, envx);
  const mb = await mountWorkspace(t, bobEnv);
  t.equal((await sh(`echo from-alice > ${ma.mnt}/a.txt`)).code, 0);
  const seen = await eventually(`cat ${mb.mnt}/a.txt 2>/dev/null`, 'from-alice', 15_000);
  t.ok(seen.ms < 2500, `within about 2 s (${seen.ms} ms)`);
  t.ok(seen.ok, `bob sees alice's file (${seen.ms} ms)`);
  t.equal((await sh(`mkdir ${mb.mnt}/bobdir && echo from-bob > ${mb.mnt}/bobdir/b.txt`)).code, 0);
  const back = await eventually(`cat ${ma.mnt}/bobdir/b.txt 2>/dev/null`, 'from-bob', 15_000);
  t.ok(back.ok, `alice sees bob's file (${back.ms} ms)`);
});

t.test('a second device of the same user converges', async (t) => {
  const envx = await setupEnvironment(t);
  const alice = envx.org.device;
  const { g, c, conn } = await enroll(envx, alice, 'device', undefined, 'alice2');
  conn.close();
  t.equal(g.sas, c.sas);
  const file2 = join(envx.root, 'alice2.device');
  const [dev2] = await Promise.all([c.finish({ password: 'second password', deviceFile: file2, label: 'desktop' }), g.finish()]);
  t.equal(dev2.userId, alice.userId, 'same user');
  t.not(dev2.deviceId, alice.deviceId, 'new device');
  const env2: Environment = { ...envx, env: { ...envx.env, COFFER_DEVICE_FILE: file2, COFFER_PASSWORD: 'second password', COFFER_DATA_DIR: join(envx.root, 'data2') } };
  const m1 = await mountWorkspace(t, envx);
  const m2 = await mountWorkspace(t, env2);
  await sh(`echo one > ${m1.mnt}/one.txt`);
  await sh(`echo two > ${m2.mnt}/two.txt`);
  t.ok((await eventually(`ls ${m1.mnt} | tr '\\n' ' '`, 'one.txt two.txt', 15_000)).ok, 'device 1 sees both files');
  t.ok((await eventually(`ls ${m2.mnt} | tr '\\n' ' '`, 'one.txt two.txt', 15_000)).ok, 'device 2 sees both files');
});

t.test('a server that swaps the claimer key is caught by the SAS', async (t) => {
  const envx = await setupEnvironment(t);
  const alice = envx.org.device;
  const target = new URL(envx.server.url);
  // A man in the middle: forwards everything, but replaces the claimer's public key with its own.
  const proxy = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (d: Buffer) => chunks.push(d));
    req.on('end', () => {
      let body = Buffer.concat(chunks);
      if (req.url?.endsWith('/invitation-claim')) {
        const json = JSON.parse(body.toString()) as Record<string, string>;
        if (json.step === 'start') json.publicKey = Buffer.alloc(32, 9).toString('base64');
        body = Buffer.from(JSON.stringify(json));
      }
      const up = httpRequest({ host: target.hostname, port: target.port, path: req.url, method: req.method, headers: { ...req.headers, 'content-length': String(body.length) } }, (r) => {
        res.writeHead(r.statusCode ?? 502, r.headers);
        r.pipe(res);
      });
      up.end(body);
    });
  });
  proxy.listen(0, '127.0.0.1');
  await once(proxy, 'listening');
  t.teardown(() => proxy.close());
  const port = (proxy.address() as { port: number }).port;
  const { g, c, conn } = await enroll(envx, alice, 'user', 'mallory-victim@example.org', 'victim', `http://127.0.0.1:${port}`);
  t.not(g.sas, c.sas, 'the two screens show different codes');
  // Had the greeter confirmed anyway, the claimer's keys would not open with its key.
  const finishing = c.finish({ password: 'victim password', deviceFile: join(envx.root, 'victim.device'), label: 'x' }).catch((e: unknown) => e);
  await t.rejects(g.finish(), { code: 'integrity' }, 'greeter refuses the enrolment');
  await conn.cancelInvitation((await conn.listInvitations())[0]!.invitationId);
  const claimed = await finishing;
  t.ok(claimed instanceof Error, 'claimer does not get a device');
  conn.close();
});

t.test('reader mounts are read-only; CLI errors are clear', async (t) => {
  const envx = await setupEnvironment(t);
  const alice = envx.org.device;
  const { g, c, conn } = await enroll(envx, alice, 'user', 'reader@example.org', 'reader');
  const file = join(envx.root, 'reader.device');
  await Promise.all([c.finish({ password: 'reader password', deviceFile: file, label: 'r' }), g.finish()]);
  const docs = findWorkspace((await listWorkspaces(alice, join(envx.root, 'data'), conn)).workspaces, 'Docs');
  await setMemberRole(alice, conn, docs.realmId, 'reader@example.org', 'reader');
  conn.close();
  const ma = await mountWorkspace(t, envx);
  await sh(`echo hello > ${ma.mnt}/shared.txt`);
  t.equal((await envx.coffer(['sync', '--wait'])).code, 0);
  const readerEnv: Environment = { ...envx, env: { ...envx.env, COFFER_DEVICE_FILE: file, COFFER_PASSWORD: 'reader password', COFFER_DATA_DIR: join(envx.root, 'reader-data') } };
  const mr = await mountWorkspace(t, readerEnv);
  t.equal((await sh(`cat ${mr.mnt}/shared.txt`)).stdout.trim(), 'hello', 'reader reads');
  const w = await sh(`touch ${mr.mnt}/nope.txt`);
  t.not(w.code, 0);
  t.match(w.stderr, /Read-only file system/, 'reader writes get EROFS');
  const promote = await envx.coffer(['workspace', 'share', 'Docs', 'reader@example.org', '--role', 'contributor']);
  t.equal(promote.code, 0, promote.stderr);
  const writable = await eventually(`touch ${mr.mnt}/now-i-can.txt 2>/dev/null && echo ok`, 'ok', 10_000);
  t.ok(writable.ok, `promotion makes the mount writable without a remount (${writable.ms} ms)`);
  t.match(mr.output(), /now writable/, 'the mount says so in its log');

  const bad = await envx.coffer(['claim', `${envx.server.url}/${alice.orgId}/not-a-real-token-at-all`, '--sas', 'AAAAAA']);
  t.not(bad.code, 0);
  t.match(bad.stderr, /unknown invitation/);
  const inv = await envx.coffer(['invite', 'user', 'carol@example.org']);
  t.equal(inv.code, 0, inv.stderr);
  const address = /coffer claim (\S+)/.exec(inv.stdout)![1]!;
  const id = /invitation ([0-9a-f]{32})/.exec(inv.stdout)![1]!;
  t.equal((await envx.coffer(['invite', 'cancel', id])).code, 0);
  const cancelled = await envx.coffer(['claim', address, '--sas', 'AAAAAA']);
  t.not(cancelled.code, 0);
  t.match(cancelled.stderr, /cancelled/);
  const notAdmin = await readerEnv.coffer(['invite', 'user', 'dave@example.org'], readerEnv.env);
  t.not(notAdmin.code, 0);
  t.match(notAdmin.stderr, /only an admin/);
  const unknownUser = await envx.coffer(['workspace', 'share', 'Docs', 'nobody@example.org']);
  t.not(unknownUser.code, 0);
  t.match(unknownUser.stderr, /unknown user/);

  // An invitation older than its lifetime is refused.
  const old = await envx.coffer(['invite', 'user', 'late@example.org']);
  const oldAddress = /coffer claim (\S+)/.exec(old.stdout)![1]!;
  const oldId = /invitation ([0-9a-f]{32})/.exec(old.stdout)![1]!;
  const db = new Database(join(envx.server.dataDir, 'metadata.sqlite'));
  db.prepare('UPDATE invitations SET created_at = created_at - ? WHERE invitation_id = ?').run(8 * 24 * 3600 * 1000, oldId);
  // A certificate forged by the server (signed by a key no admin holds) is refused by the clients.
  const last = db.prepare('SELECT org_id, MAX(idx) AS idx, MAX(timestamp) AS ts FROM certificates').get() as { org_id: string; idx: number; ts: number };
  const forger = generateSigningKeyPair();
  const forged = signCertificate(
    { type: 'user', userId: newId(), handle: 'mallory@example.org', publicKey: Buffer.alloc(32, 7), profile: 'admin', timestamp: last.ts + 1, author: alice.deviceId },
    forger.secretKey,
  );
  db.prepare('INSERT INTO certificates (org_id, idx, blob, timestamp) VALUES (?, ?, ?, ?)').run(last.org_id, last.idx + 1, Buffer.from(forged), last.ts + 1);
  db.close();
  const expired = await envx.coffer(['claim', oldAddress, '--sas', 'AAAAAA']);
  t.not(expired.code, 0);
  t.match(expired.stderr, /expired/);
  const refused = await envx.coffer(['user', 'list']);
  t.not(refused.code, 0, 'the forged certificate is refused');
  t.match(refused.stderr, /signature does not verify|integrity/, 'and reported');
});

t.test('revoking a user: refused at once, keys rotated, new data out of their reach', async (t) => {
  const envx = await setupEnvironment(t);
  const alice = envx.org.device;
  const { g, c, conn } = await enroll(envx, alice, 'user', 'bob@example.org', 'bob');
  const bobFile = join(envx.root, 'bob.device');
  const [bob] = await Promise.all([c.finish({ password: 'bob password', deviceFile: bobFile, label: 'b' }), g.finish()]);
  const docs = findWorkspace((await listWorkspaces(alice, join(envx.root, 'data'), conn)).workspaces, 'Docs');
  await setMemberRole(alice, conn, docs.realmId, 'bob@example.org', 'contributor');
  const bobConn = new ServerConnection(bob.serverUrl, bob);
  t.teardown(() => bobConn.close());
  const bobKeys = WorkspaceKeys.open(docs.realmId, (await bobConn.listRealms())[0]!.keys, bob, await verifiedChain(bobConn, bob));
  const ma = await mountWorkspace(t, envx);
  await sh(`echo before > ${ma.mnt}/before.txt`);
  t.equal((await envx.coffer(['sync', '--wait'])).code, 0);

  const revoke = await envx.coffer(['user', 'revoke', 'bob@example.org']);
  t.equal(revoke.code, 0, revoke.stderr);
  t.match(revoke.stdout, /bob@example.org revoked/); // the key rotation itself may be done by this CLI or by alice's mount, whichever is first
  await t.rejects(bobConn.listRealms(), { code: 'forbidden' }, "bob's device is refused at once");
  const realms = await conn.listRealms();
  t.same(realms[0]!.keys.map((k) => k.keyIndex), [1, 2], 'a second key exists');
  conn.close();

  // Alice's running mount picks the new key up and uses it for new data.
  await new Promise((r) => setTimeout(r, 500));
  await sh(`echo after > ${ma.mnt}/after.txt`);
  t.equal((await envx.coffer(['sync', '--wait'])).code, 0);
  const db = new Database(join(envx.server.dataDir, 'metadata.sqlite'), { readonly: true });
  const rows = db.prepare('SELECT vlob_id, version, key_index, blob FROM vlobs WHERE key_index = 2').all() as Array<{ vlob_id: string; version: number; key_index: number; blob: Buffer }>;
  db.close();
  t.ok(rows.length >= 2, 'the new file and the root were sealed with key 2');
  for (const r of rows) {
    t.throws(() => xchachaDecrypt(bobKeys.key(1), r.blob, Buffer.from(`coffer-vlob/1|${docs.realmId}|${r.vlob_id}|${r.version}|2`)), 'bob\'s old key cannot open it');
  }
  t.throws(() => bobKeys.key(2), 'bob never received key 2');
  t.equal((await sh(`cat ${ma.mnt}/before.txt ${ma.mnt}/after.txt`)).stdout, 'before\nafter\n', 'alice reads old and new data');
});

t.test('groups: shared access, direct role wins, removal takes inherited access away', async (t) => {
  const envx = await setupEnvironment(t);
  const alice = envx.org.device;
  const { g, c, conn } = await enroll(envx, alice, 'user', 'bob@example.org', 'bob');
  conn.close();
  const bobFile = join(envx.root, 'bob.device');
  await Promise.all([c.finish({ password: 'bob password', deviceFile: bobFile, label: 'b' }), g.finish()]);
  const bobEnv: Environment = { ...envx, env: { ...envx.env, COFFER_DEVICE_FILE: bobFile, COFFER_PASSWORD: 'bob password', COFFER_DATA_DIR: join(envx.root, 'bob-data') } };
  const ok = async (args: string[], env = envx) => {
    const r = await env.coffer(args, env.env);
    t.equal(r.code, 0, `coffer ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  await ok(['group', 'create', 'team']);
  await ok(['group', 'add', 'team', 'bob@example.org']);
  t.match(await ok(['group', 'list']), /team: bob@example\.org/);
  t.match(await ok(['workspace', 'list'], bobEnv), /no workspaces yet/, 'bob has no access before the group share');
  await ok(['workspace', 'share', 'Docs', 'team', '--group', '--role', 'contributor']);
  t.match(await ok(['workspace', 'list'], bobEnv), /contributor\s+Docs/, 'the group share gives bob access');
  t.match(await ok(['workspace', 'members', 'Docs']), /contributor\s+bob@example\.org/);

  const ma = await mountWorkspace(t, envx);
  const mb = await mountWorkspace(t, bobEnv);
  t.equal((await sh(`echo via-group > ${mb.mnt}/g.txt`)).code, 0, 'bob writes through the group role');
  t.ok((await eventually(`cat ${ma.mnt}/g.txt 2>/dev/null`, 'via-group', 15_000)).ok, 'alice sees it');

  await ok(['workspace', 'share', 'Docs', 'bob@example.org', '--role', 'reader']);
  const ro = await eventually(`touch ${mb.mnt}/x 2>&1 | grep -c 'Read-only'`, '1', 10_000);
  t.ok(ro.ok, 'a direct reader role wins over the contributor group role');
  await ok(['workspace', 'unshare', 'Docs', 'bob@example.org']);
  t.ok((await eventually(`touch ${mb.mnt}/y 2>/dev/null && echo ok`, 'ok', 10_000)).ok, 'without the direct role the group role applies again');

  await ok(['group', 'remove', 'team', 'bob@example.org']);
  t.notMatch(await ok(['workspace', 'list'], bobEnv), /Docs/, 'removal from the group removes the inherited access');
  const realms = await ok(['workspace', 'members', 'Docs']);
  t.notMatch(realms, /bob/, 'bob is no longer a member');
  t.ok((await eventually(`touch ${mb.mnt}/z 2>&1 | grep -c 'Read-only'`, '1', 10_000)).ok, "bob's mount stops accepting writes");
});

t.test('a workspace key slipped in by the server is refused', async (t) => {
  const envx = await setupEnvironment(t);
  const alice = envx.org.device;
  const { g, c, conn } = await enroll(envx, alice, 'user', 'bob@example.org', 'bob');
  const bobFile = join(envx.root, 'bob.device');
  const [bob] = await Promise.all([c.finish({ password: 'bob password', deviceFile: bobFile, label: 'b' }), g.finish()]);
  const docs = findWorkspace((await listWorkspaces(alice, join(envx.root, 'data'), conn)).workspaces, 'Docs');
  await setMemberRole(alice, conn, docs.realmId, 'bob@example.org', 'contributor');
  conn.close();
  const bobEnv: Environment = { ...envx, env: { ...envx.env, COFFER_DEVICE_FILE: bobFile, COFFER_PASSWORD: 'bob password', COFFER_DATA_DIR: join(envx.root, 'bob-data') } };
  t.equal((await bobEnv.coffer(['workspace', 'list'], bobEnv.env)).code, 0, 'bob lists the workspace');
  // The server replaces bob's copy with a key of its own, sealed to bob's (public) key.
  const db = new Database(join(envx.server.dataDir, 'metadata.sqlite'));
  db.prepare('UPDATE realm_keys SET sealed_key = ? WHERE user_id = ?').run(sealToPublicKey(Buffer.alloc(32, 5), bob.userPublicKey), bob.userId);
  db.close();
  const r = await bobEnv.coffer(['workspace', 'list'], bobEnv.env);
  t.not(r.code, 0, 'refused');
  t.match(r.stderr, /not the one its owners certified/);
});
