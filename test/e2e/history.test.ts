import t from 'tap';
import { enrollDevice, eventually } from '../helpers/enroll.js';
import { mountWorkspace, setupEnvironment, sh } from '../helpers/mount.js';

t.test('history, a mount of the past, and restore seen by another device', async (t) => {
  const envx = await setupEnvironment(t);
  const env2 = await enrollDevice(envx, 'second');
  const m1 = await mountWorkspace(t, envx);
  const sync = async () => t.equal((await envx.coffer(['sync', '--wait'])).code, 0, 'synced');
  await sh(`mkdir ${m1.mnt}/reports && printf 'first draft' > ${m1.mnt}/reports/q3.txt`);
  await sync();
  await new Promise((r) => setTimeout(r, 1100));
  const between = new Date().toISOString();
  await new Promise((r) => setTimeout(r, 1100));
  await sh(`printf 'second, final' > ${m1.mnt}/reports/q3.txt && printf late > ${m1.mnt}/reports/late.txt`);
  await sync();

  const h = await envx.coffer(['history', 'Docs', '/reports/q3.txt', '--json']);
  t.equal(h.code, 0, h.stderr);
  const versions = JSON.parse(h.stdout) as Array<{ version: number; size: number; author: string }>;
  t.ok(versions.length >= 2, `several versions listed (${versions.length})`);
  // The first content's version: version 1, or the one after it when a round asked for at once (the
  // event stream's connect, a server event) took the file between printf's create and its write.
  const first = versions.find((v) => v.size === 'first draft'.length);
  t.ok(first && first.version <= 2, `the first content is version 1 or 2 (${JSON.stringify(versions)})`);
  t.equal(versions.at(-1)!.size, 'second, final'.length);
  t.equal(versions[0]!.author, 'alice@example.org', 'authors are shown by handle');

  const past = await mountWorkspace(t, envx, { args: ['--at', between] });
  t.equal((await sh(`cat ${past.mnt}/reports/q3.txt`)).stdout, 'first draft', 'the --at mount shows the earlier content');
  t.not((await sh(`ls ${past.mnt}/reports`)).stdout.includes('late.txt'), true, 'and not what came later');
  t.match((await sh(`touch ${past.mnt}/x`)).stderr, /Read-only file system/, 'read-only');
  await past.stop();

  const m2 = await mountWorkspace(t, env2);
  t.ok((await eventually(`cat ${m2.mnt}/reports/q3.txt`, 'second, final', 15_000)).ok, 'device 2 has the final version');
  const r = await envx.coffer(['restore', 'Docs', '/reports/q3.txt', '--version', String(first!.version)]);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, new RegExp(`version ${first!.version} is now version \\d+`));
  t.ok((await eventually(`cat ${m2.mnt}/reports/q3.txt`, 'first draft', 15_000)).ok, 'the restore is visible on another device');
  t.ok((await eventually(`cat ${m1.mnt}/reports/q3.txt`, 'first draft', 15_000)).ok, 'and on the running mount that wrote it');
  const bad = await envx.coffer(['restore', 'Docs', '/reports/q3.txt', '--at', 'not a date']);
  t.not(bad.code, 0);
  t.match(bad.stderr, /not a date/);
});
