import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import t, { type Test } from 'tap';
import { mountWorkspace, setupEnvironment, sh, type Environment } from '../helpers/mount.js';

async function blockFiles(envx: Environment): Promise<string[]> {
  const out: string[] = [];
  const walk = async (dir: string) => {
    for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
      if (e.isDirectory()) await walk(join(dir, e.name));
      else if (!e.name.startsWith('.')) out.push(join(dir, e.name));
    }
  };
  await walk(join(envx.server.dataDir, 'blocks'));
  return out.sort();
}

function vlobIds(envx: Environment): string[] {
  const db = new Database(join(envx.server.dataDir, 'metadata.sqlite'), { readonly: true });
  try {
    return (db.prepare('SELECT DISTINCT vlob_id FROM vlobs WHERE vlob_id NOT IN (SELECT realm_id FROM realms)').all() as Array<{ vlob_id: string }>).map((r) => r.vlob_id);
  } finally {
    db.close();
  }
}

async function syncWait(t: Test, envx: Environment, mount?: { output: () => string }): Promise<void> {
  const r = await envx.coffer(['sync', '--wait', '--timeout', '120']);
  t.equal(r.code, 0, `sync --wait: ${r.stderr}${r.code !== 0 && mount ? `\nmount log:\n${mount.output().slice(-3000)}` : ''}`);
}

t.test('tampering on the server is detected: EIO for that file, others readable', async (t) => {
  const envx = await setupEnvironment(t);
  const m = await mountWorkspace(t, envx);
  const write = async (name: string, content: string) => {
    t.equal((await sh(`printf '%s' '${content}' > ${m.mnt}/${name}`)).code, 0);
    await syncWait(t, envx);
  };
  await write('good.txt', 'all fine here');
  const beforeBlocks = await blockFiles(envx);
  const beforeVlobs = vlobIds(envx);
  await write('flipped.txt', 'this block will be corrupted');
  const flippedBlock = (await blockFiles(envx)).filter((f) => !beforeBlocks.includes(f));
  t.equal(flippedBlock.length, 1, 'one new block');
  const afterFlip = vlobIds(envx);
  await write('swapped.txt', 'this manifest will be replaced');
  const swappedId = vlobIds(envx).filter((v) => !afterFlip.includes(v));
  const goodId = beforeVlobs;
  t.equal(swappedId.length, 1);
  t.equal(goodId.length, 1);
  await m.stop();

  const data = await readFile(flippedBlock[0]!);
  data[data.length - 5]! ^= 0x01;
  await writeFile(flippedBlock[0]!, data);
  const db = new Database(join(envx.server.dataDir, 'metadata.sqlite'));
  db.prepare('UPDATE vlobs SET blob = (SELECT blob FROM vlobs WHERE vlob_id = ? ORDER BY version DESC LIMIT 1) WHERE vlob_id = ?').run(goodId[0], swappedId[0]);
  db.close();

  const m2 = await mountWorkspace(t, envx, { dataDir: join(envx.root, 'fresh') });
  t.equal((await sh(`cat ${m2.mnt}/good.txt`)).stdout, 'all fine here', 'untouched file reads');
  const flipped = await sh(`cat ${m2.mnt}/flipped.txt`);
  t.not(flipped.code, 0);
  t.match(flipped.stderr, /Input\/output error/, 'flipped block -> EIO');
  t.equal(flipped.stdout, '', 'no wrong bytes shown');
  const swapped = await sh(`cat ${m2.mnt}/swapped.txt`);
  t.not(swapped.code, 0);
  t.match(swapped.stderr, /Input\/output error/, 'vlob of another file -> EIO');
  t.match(m2.output(), /integrity|tampered|refusing/i, 'logged');
});

t.test('kill -9 after close keeps the data, which then syncs', async (t) => {
  const envx = await setupEnvironment(t);
  const dataDir = join(envx.root, 'crashdata');
  const m = await mountWorkspace(t, envx, { dataDir });
  t.equal((await sh(`head -c 3000000 /dev/urandom > ${envx.root}/payload && cp ${envx.root}/payload ${m.mnt}/payload && mkdir ${m.mnt}/dir && echo hi > ${m.mnt}/dir/hi.txt`)).code, 0);
  await m.kill9();
  const m2 = await mountWorkspace(t, envx, { dataDir });
  t.equal((await sh(`cmp ${envx.root}/payload ${m2.mnt}/payload && cat ${m2.mnt}/dir/hi.txt`)).stdout.trim(), 'hi', 'data intact after restart');
  await syncWait(t, envx);
  await m2.stop();
  const m3 = await mountWorkspace(t, envx, { dataDir: join(envx.root, 'fresh') });
  t.equal((await sh(`cmp ${envx.root}/payload ${m3.mnt}/payload`)).code, 0, 'and it reached the server');
});

t.test('server down: writes and cached reads keep working; uploads resume', async (t) => {
  const envx = await setupEnvironment(t);
  const m = await mountWorkspace(t, envx);
  t.equal((await sh(`echo cached > ${m.mnt}/cached.txt && cat ${m.mnt}/cached.txt`)).code, 0);
  await syncWait(t, envx);
  await envx.server.close();
  t.equal((await sh(`cat ${m.mnt}/cached.txt`)).stdout.trim(), 'cached', 'cached read offline');
  t.equal((await sh(`echo offline > ${m.mnt}/offline.txt && mkdir ${m.mnt}/od && cat ${m.mnt}/offline.txt`)).stdout.trim(), 'offline', 'write offline');
  t.equal((await sh(`echo gone > ${m.mnt}/gone.txt`)).code, 0);
  t.equal((await sh(`mv ${m.mnt}/cached.txt ${m.mnt}/od/renamed.txt && rm ${m.mnt}/gone.txt`)).code, 0, 'rename and delete offline');
  await new Promise((r) => setTimeout(r, 1500));
  const status = await envx.coffer(['status', '--json']);
  t.equal(status.code, 0, status.stderr);
  const rows = JSON.parse(status.stdout) as Array<{ pendingEntries: number; connection: string }>;
  t.ok(rows[0]!.pendingEntries > 0, 'status shows pending uploads');
  t.equal(rows[0]!.connection, 'offline');
  const waiting = await envx.coffer(['sync', '--wait', '--timeout', '1']);
  t.not(waiting.code, 0, 'sync --wait gives up after its timeout while the server is down');
  t.match(waiting.stderr, /MiB uploaded, \d+ entries left/, 'progress is reported as plain lines off a terminal');
  t.match(waiting.stderr, /still \d+ entries/);
  await envx.server.restart();
  await syncWait(t, envx, m);
  await m.stop();
  const m2 = await mountWorkspace(t, envx, { dataDir: join(envx.root, 'fresh') });
  t.equal((await sh(`cat ${m2.mnt}/offline.txt`)).stdout.trim(), 'offline', 'offline write reached the server');
  t.equal((await sh(`cat ${m2.mnt}/od/renamed.txt`)).stdout.trim(), 'cached', 'the offline rename too');
  t.equal((await sh(`ls ${m2.mnt}`)).stdout.split('\n').filter(Boolean).sort().join(' '), 'od offline.txt', 'and the deletes');
});

t.test('clear errors and non-zero exits from the CLI', async (t) => {
  const envx = await setupEnvironment(t);
  const wrong = await envx.coffer(['workspace', 'list'], { COFFER_PASSWORD: 'not the password' });
  t.not(wrong.code, 0);
  t.match(wrong.stderr, /wrong password/i);
  const mnt = join(envx.root, 'm');
  await sh(`mkdir -p ${mnt}`);
  const unknown = await envx.coffer(['mount', 'NoSuchWorkspace', mnt]);
  t.not(unknown.code, 0);
  t.match(unknown.stderr, /unknown workspace/i);
  const missing = await envx.coffer(['mount', 'Docs', join(envx.root, 'does-not-exist')]);
  t.not(missing.code, 0);
  t.match(missing.stderr, /does not exist/i);
  const m = await mountWorkspace(t, envx, { mnt });
  const busy = await envx.coffer(['mount', 'Docs', mnt]);
  t.not(busy.code, 0);
  t.match(busy.stderr, /already mounted|busy/i);
  await m.stop();
});
