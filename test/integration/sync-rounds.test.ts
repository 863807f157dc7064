import { randomBytes } from 'node:crypto';
import { constants as fsc } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import type { DeviceKeys } from '../../src/crypto/index.js';
import { entryHistory, openRemoteView, resolveRemotePath } from '../../src/client/history.js';
import { bootstrapClientOrg, newWorkspace, openSession } from '../helpers/client.js';
import { readEngineFile, writeEngineFile } from '../helpers/engine-io.js';
import { startTestServer } from '../helpers/server.js';

/** Polls `check` every 20 ms until it holds (a timeout is a failure, never a pass). */
async function until(what: string, check: () => Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A fresh server, organization and workspace "Docs": the device of its first user. */
async function deviceWithWorkspace(t: Test): Promise<DeviceKeys> {
  const server = await startTestServer({ teardown: (fn) => t.teardown(fn) });
  const org = await bootstrapClientOrg(server, 'acme', await mkdtemp(join(tmpdir(), 'coffer-org-')));
  await newWorkspace(org.device, 'Docs');
  return org.device;
}

// A round asked for at once (a server event, a poll, the event stream's connect) used to upload
// everything pending: a file caught between its create and its write went up empty, an extra version
// in its history (seen as flaky fsck and history tests). Such rounds now only pull while local
// changes wait for their quiet time.
t.test('remote changes are pulled while a new file waits for its write; its history starts with its content', async (t) => {
  const device = await deviceWithWorkspace(t);
  const other = await openSession(device, 'Docs');
  t.teardown(() => other.close());
  await writeEngineFile(other.engine, '/shared.txt', Buffer.from('v1'));
  await other.sync.drain(30_000);

  // Polls every 50 ms; local changes wait a minute of quiet, so only pull rounds run meanwhile.
  const here = await openSession(device, 'Docs', undefined, { debounceMs: 60_000, pollMs: 50 });
  t.teardown(() => here.close());
  here.start();
  const sharedIs = (text: string) => async () => (await readEngineFile(here.engine, '/shared.txt').catch(() => Buffer.alloc(0))).toString() === text;
  await until('the first version arrives', sharedIs('v1'));

  const fh = await here.engine.create('/draft.txt', 0o644, { flags: fsc.O_RDWR });
  await writeEngineFile(other.engine, '/shared.txt', Buffer.from('v2'));
  await other.sync.drain(30_000);
  await until('the other device\'s change arrives while the new file is still empty', sharedIs('v2'));
  const view = await openRemoteView(device, await mkdtemp(join(tmpdir(), 'coffer-view-')), 'Docs');
  t.teardown(() => view.close());
  await t.rejects(resolveRemotePath(view, '/draft.txt'), { code: 'not_found' }, 'the new file is still waiting, not uploaded by the pull');

  const content = Buffer.from('first content\n');
  await here.engine.write(fh, content, content.length, 0);
  await here.engine.release(fh);
  await here.sync.drain(30_000);

  const versions = await entryHistory(view, '/draft.txt');
  t.equal(versions.length, 1, 'one version: no empty one before it');
  const first = versions[0]!.manifest;
  t.equal(first.type === 'file' ? first.size : -1, content.length, 'the version holds the content');
  t.equal((await readEngineFile(other.engine, '/shared.txt')).toString(), 'v2');
});

// A full round takes the list of pending entries when it starts, and signs each folder when its turn
// comes: a file created in between was named by its folder on the server before it existed there
// (another device listed a name it could not open until the next round).
t.test('a folder is not uploaded naming a child created after its round started', async (t) => {
  const device = await deviceWithWorkspace(t);
  const here = await openSession(device, 'Docs');
  t.teardown(() => here.close());
  await writeEngineFile(here.engine, '/a.bin', randomBytes(4 * 512 * 1024)); // its blocks keep the round busy

  const round = here.sync.syncOnce(); // not started by the session: this test decides when rounds run
  await writeEngineFile(here.engine, '/b.txt', Buffer.from('late'));
  await round;

  const view = await openRemoteView(device, await mkdtemp(join(tmpdir(), 'coffer-view-')), 'Docs');
  t.teardown(() => view.close());
  const namesOnServer = async () => {
    const root = (await resolveRemotePath(view, '/')).manifest;
    return root.type === 'workspace' ? Object.keys(root.children).sort() : [];
  };
  for (const name of await namesOnServer()) await t.resolves(resolveRemotePath(view, `/${name}`), `${name}, named by the folder on the server, is there`);
  await here.sync.drain(30_000);
  t.same(await namesOnServer(), ['a.bin', 'b.txt'], 'both are up after the next round');
});

// A round running when the user starts a burst of changes (an untar's tree deleted right after it,
// another copy) stops starting uploads and leaves the rest for after the burst: on few cores its
// work slowed the burst, and files deleted meanwhile need no upload. drain() (unmount, `coffer sync
// --wait`) does not stop.
t.test('a round stops for a burst that starts while it runs and finishes after it; drain() uploads through one', async (t) => {
  const device = await deviceWithWorkspace(t);
  // Started (edits reach the round timer), but a minute of quiet time and between polls: the test runs the full rounds.
  const here = await openSession(device, 'Docs', undefined, { debounceMs: 60_000, pollMs: 60_000 });
  t.teardown(() => here.close());
  here.start();
  await writeEngineFile(here.engine, '/c.txt', Buffer.from('c'));
  await here.sync.drain(30_000);
  const view = await openRemoteView(device, await mkdtemp(join(tmpdir(), 'coffer-view-')), 'Docs');
  t.teardown(() => view.close());
  const namesOnServer = async () => {
    const root = (await resolveRemotePath(view, '/')).manifest;
    return root.type === 'workspace' ? Object.keys(root.children).sort() : [];
  };
  // 2,000 one-byte writes: a burst (200 edits a second) on any machine.
  const burst = (path: string) => writeEngineFile(here.engine, path, randomBytes(2000), 1);

  await writeEngineFile(here.engine, '/a.txt', Buffer.from('a'));
  await writeEngineFile(here.engine, '/b.txt', Buffer.from('b'));
  const lastRound = here.store.getMeta('last_sync');
  const round = here.sync.syncOnce(); // its file uploads start at once; the root waits for them
  await burst('/c.txt'); // rewritten: the root's children do not change
  await round;
  t.same(await namesOnServer(), ['c.txt'], 'the root, whose turn came after the burst began, was not uploaded');
  t.equal(here.store.getMeta('last_sync'), lastRound, 'the round is not recorded as completed');

  await new Promise((r) => setTimeout(r, 2100)); // the burst's one-second windows are over
  t.equal(here.store.pendingStats().manifests, 2, 'the root and the burst\'s file wait (a.txt and b.txt went up)');
  await here.sync.syncOnce();
  t.same(await namesOnServer(), ['a.txt', 'b.txt', 'c.txt'], 'the next round, after the burst, uploads everything');
  t.not(here.store.getMeta('last_sync'), lastRound, 'and is recorded as completed');

  await burst('/burst2.bin');
  await here.sync.drain(30_000);
  t.same(await namesOnServer(), ['a.txt', 'b.txt', 'burst2.bin', 'c.txt'], 'drain() uploads during a burst');
  const other = await openSession(device, 'Docs');
  t.teardown(() => other.close());
  await other.sync.drain(30_000);
  for (const name of ['/c.txt', '/burst2.bin']) t.same(await readEngineFile(other.engine, name), await readEngineFile(here.engine, name), `${name} with its content`);
});
