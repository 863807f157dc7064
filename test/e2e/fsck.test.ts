/**
 * `coffer fsck <workspace>` against a real server whose storage the test tampers with directly:
 * a clean workspace exits 0; a flipped byte in a stored block, a tampered vlob row in the metadata
 * database, a deleted block file and a deleted vlob version each exit non-zero with a line naming
 * the path and the problem; so do a rollback against what this device saw (trust state, local
 * store) and a backdated version.
 */
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import t, { type Test } from 'tap';
import { ServerConnection } from '../../src/client/connection.js';
import { WorkspaceKeys } from '../../src/client/remote.js';
import { findWorkspace, listWorkspaces, verifiedChain } from '../../src/client/workspaces.js';
import { newId } from '../../src/model/ids.js';
import { newFileManifest, type WorkspaceManifest } from '../../src/model/manifests.js';
import { openVlob, sealVlob } from '../../src/model/vlob.js';
import { mountWorkspace, setupEnvironment, sh, type Environment } from '../helpers/mount.js';

function blockFile(envx: Environment, blockId: string): string {
  return join(envx.server.dataDir, 'blocks', envx.org.device.orgId, blockId.slice(0, 2), blockId);
}

function db(envx: Environment): Database.Database {
  return new Database(join(envx.server.dataDir, 'metadata.sqlite'));
}

/** Vlob ids and block ids the server stored since a snapshot (by creation order). */
function snapshot(envx: Environment): { vlobs: Set<string>; blocks: Set<string> } {
  const d = db(envx);
  try {
    const vlobs = new Set((d.prepare('SELECT DISTINCT vlob_id FROM vlobs').all() as Array<{ vlob_id: string }>).map((r) => r.vlob_id));
    const blocks = new Set((d.prepare('SELECT block_id FROM blocks').all() as Array<{ block_id: string }>).map((r) => r.block_id));
    return { vlobs, blocks };
  } finally {
    d.close();
  }
}

async function writeFileSynced(t: Test, envx: Environment, cmd: string): Promise<{ vlobs: string[]; blocks: string[] }> {
  const before = snapshot(envx);
  t.equal((await sh(cmd)).code, 0, cmd.slice(0, 80));
  const r = await envx.coffer(['sync', '--wait', '--timeout', '120']);
  t.equal(r.code, 0, `sync: ${r.stderr}`);
  const after = snapshot(envx);
  return { vlobs: [...after.vlobs].filter((v) => !before.vlobs.has(v)), blocks: [...after.blocks].filter((b) => !before.blocks.has(b)) };
}

t.test('fsck: a clean workspace passes; tampered block, tampered vlob row, missing block, missing version are each reported', async (t) => {
  const envx = await setupEnvironment(t);
  const m = await mountWorkspace(t, envx);
  await writeFileSynced(t, envx, `mkdir -p ${m.mnt}/docs/deep && echo hello > ${m.mnt}/docs/deep/hello.txt && head -c 1500000 /dev/urandom > ${m.mnt}/docs/big.bin`);
  const flip = await writeFileSynced(t, envx, `printf 'a block to flip' > ${m.mnt}/docs/flip.txt`);
  const vlobTamper = await writeFileSynced(t, envx, `printf 'first version' > ${m.mnt}/edited.txt`);
  await writeFileSynced(t, envx, `printf 'second version' > ${m.mnt}/edited.txt`);
  const missing = await writeFileSynced(t, envx, `printf 'a block that will vanish' > ${m.mnt}/missing.txt`);
  const gap = await writeFileSynced(t, envx, `printf 'one' > ${m.mnt}/gap.txt`);
  await writeFileSynced(t, envx, `printf 'two' > ${m.mnt}/gap.txt`);
  await writeFileSynced(t, envx, `printf 'three' > ${m.mnt}/gap.txt`);
  await m.stop();
  t.equal(flip.blocks.length, 1);
  t.equal(vlobTamper.vlobs.length, 1);
  t.equal(missing.blocks.length, 1);
  t.equal(gap.vlobs.length, 1);

  const clean = await envx.coffer(['fsck', 'Docs']);
  t.equal(clean.code, 0, `clean workspace: exit 0\n${clean.stdout}${clean.stderr}`);
  t.match(clean.stdout, /9 entries \(3 folders, 6 files\)/, 'counts: the root, docs, docs/deep and six files');
  t.match(clean.stdout, /no problem found/);
  t.match(clean.stdout, /blocks \(1\.\d MiB\) checked/);
  const json = await envx.coffer(['fsck', 'Docs', '--json']);
  t.equal(json.code, 0);
  const report = JSON.parse(json.stdout) as { problems: unknown[]; files: number; versions: number; blocks: number };
  t.equal(report.problems.length, 0);
  t.equal(report.files, 6);
  t.ok(report.versions > report.files, `every version checked (${report.versions})`);
  t.ok(report.blocks >= 8, `${report.blocks} blocks checked`);

  // 1. a flipped byte in a stored block
  const f = blockFile(envx, flip.blocks[0]!);
  const bytes = await readFile(f);
  bytes[bytes.length - 3]! ^= 0x40;
  await writeFile(f, bytes);
  // 2. a vlob row tampered in the database: version 1 of edited.txt gets a flipped byte
  const d = db(envx);
  const row = d.prepare('SELECT blob FROM vlobs WHERE vlob_id = ? AND version = 1').get(vlobTamper.vlobs[0]) as { blob: Buffer };
  const blob = Buffer.from(row.blob);
  blob[blob.length - 30]! ^= 0x01;
  d.prepare('UPDATE vlobs SET blob = ? WHERE vlob_id = ? AND version = 1').run(blob, vlobTamper.vlobs[0]);
  // 4. a version removed from the middle of a chain (three writes; more versions when a background
  // round took the file between a printf's O_TRUNC and its write)
  const { latest } = d.prepare('SELECT MAX(version) AS latest FROM vlobs WHERE vlob_id = ?').get(gap.vlobs[0]) as { latest: number };
  t.ok(latest >= 3, `gap.txt has ${latest} versions`);
  const removed = d.prepare('DELETE FROM vlobs WHERE vlob_id = ? AND version = 2').run(gap.vlobs[0]);
  d.close();
  t.equal(removed.changes, 1, 'version 2 of gap.txt deleted');
  // 3. a block file deleted from the block store
  await rm(blockFile(envx, missing.blocks[0]!));

  const bad = await envx.coffer(['fsck', 'Docs']);
  t.equal(bad.code, 1, `tampered workspace: exit 1\n${bad.stdout}`);
  const lines = bad.stdout.split('\n').filter((l) => l.startsWith('PROBLEM'));
  t.equal(lines.length, 4, `one line per problem:\n${lines.join('\n')}`);
  t.match(bad.stdout, new RegExp(`PROBLEM \\[block_corrupt\\] /docs/flip\\.txt \\(v\\d+\\): block ${flip.blocks[0]} .*failed its digest or decryption check`), 'the flipped block, with its path');
  t.match(bad.stdout, /PROBLEM \[manifest\] \/edited\.txt \(v1\): .*decryption failed/, 'the tampered vlob row, with path and version');
  t.match(bad.stdout, new RegExp(`PROBLEM \\[block_missing\\] /missing\\.txt \\(v\\d+\\): block ${missing.blocks[0]} .*missing on the server`), 'the missing block, with its path');
  t.match(bad.stdout, new RegExp(`PROBLEM \\[version_gap\\] /gap\\.txt \\(v2\\): version 2 of ${latest} is missing`), 'the gap in the version chain');
  t.match(bad.stdout, /4 problems found/);
  t.notMatch(bad.stdout + bad.stderr, /hello|first version|a block to flip/, 'no content in the report or the logs');

  // The latest-only, manifest-only mode skips what it does not check.
  const quick = await envx.coffer(['fsck', 'Docs', '--latest-only', '--skip-blocks']);
  t.equal(quick.code, 0, `latest manifests are all fine: ${quick.stdout}`);
});

t.test('fsck: a rollback against what this device has seen is reported', async (t) => {
  const envx = await setupEnvironment(t);
  const m = await mountWorkspace(t, envx);
  const first = await writeFileSynced(t, envx, `printf 'one' > ${m.mnt}/r.txt`);
  await writeFileSynced(t, envx, `printf 'two' > ${m.mnt}/r.txt`);
  await m.stop();
  t.equal((await envx.coffer(['fsck', 'Docs'])).code, 0, 'clean');
  // The database goes back: the newest version of r.txt disappears (restored from an old backup, or a hostile DB).
  const d = db(envx);
  const top = d.prepare('SELECT MAX(version) AS v FROM vlobs WHERE vlob_id = ?').get(first.vlobs[0]) as { v: number };
  d.prepare('DELETE FROM vlobs WHERE vlob_id = ? AND version = ?').run(first.vlobs[0], top.v);
  d.close();
  const r = await envx.coffer(['fsck', 'Docs']);
  t.equal(r.code, 1, r.stdout);
  t.match(r.stdout, new RegExp(`PROBLEM \\[rollback\\] /r\\.txt: rollback: the server served version ${top.v - 1} of ${first.vlobs[0]} after this device had seen version ${top.v}`));
  // Without the device's trust state (an older client's data), the local store still knows better.
  t.equal((await sh(`rm -f ${join(envx.env.COFFER_DATA_DIR!, envx.org.device.orgId, envx.org.device.deviceId)}/trust.sqlite*`)).code, 0);
  const local = await envx.coffer(['fsck', 'Docs']);
  t.equal(local.code, 1, local.stdout);
  t.match(local.stdout, new RegExp(`PROBLEM \\[rollback\\] \\(local store\\) \\(v${top.v - 1}\\): entry ${first.vlobs[0]}: this device's local store derives from version ${top.v}`));
});

t.test('fsck: a version signed long before the one it replaces (backdated) is reported', async (t) => {
  const envx = await setupEnvironment(t);
  const device = envx.org.device;
  const conn = new ServerConnection(device.serverUrl, device);
  t.teardown(() => conn.close());
  const docs = findWorkspace((await listWorkspaces(device, join(envx.root, 'scratch'), conn)).workspaces, 'Docs');
  const key = WorkspaceKeys.open(docs.realmId, docs.sealedKeys, device, await verifiedChain(conn, device)).key(1);
  const id = newId();
  const now = Date.now();
  // Version 1 claims a time 20 minutes ahead, version 2 claims now: 20 minutes back in time.
  const write = async (version: number, timestamp: number) => {
    const m = { ...newFileManifest(id, docs.realmId, timestamp), size: 0 };
    const blob = sealVlob(m, { realmId: docs.realmId, vlobId: id, version, keyIndex: 1 }, { deviceId: device.deviceId, timestamp }, device.signingKey, key);
    await conn.writeVlob(docs.realmId, id, version, 1, timestamp, blob);
  };
  await write(1, now + 20 * 60 * 1000);
  await write(2, now);
  const root = await conn.readVlob(docs.realmId, docs.realmId);
  const opened = openVlob(root.blob, { realmId: docs.realmId, vlobId: docs.realmId, version: root.version, keyIndex: root.keyIndex }, key, () => device.verifyKey);
  const rootManifest = opened.manifest as WorkspaceManifest;
  rootManifest.children['backdated.txt'] = id;
  const rootBlob = sealVlob(rootManifest, { realmId: docs.realmId, vlobId: docs.realmId, version: root.version + 1, keyIndex: 1 }, { deviceId: device.deviceId, timestamp: now }, device.signingKey, key);
  await conn.writeVlob(docs.realmId, docs.realmId, root.version + 1, 1, now, rootBlob);

  const r = await envx.coffer(['fsck', 'Docs']);
  t.equal(r.code, 1, r.stdout);
  t.match(r.stdout, /PROBLEM \[manifest\] \/backdated\.txt \(v2\): version 2 is signed 1\d{3} s before version 1, more than the clock window: backdated/);
});
