import { join } from 'node:path';
import t from 'tap';
import { mountWorkspace, setupEnvironment, sh } from '../helpers/mount.js';

t.test('editor and OS litter stays local; renaming it to a real name syncs it', async (t) => {
  const envx = await setupEnvironment(t);
  const m = await mountWorkspace(t, envx);
  const r = await sh(`cd ${m.mnt} && mkdir d && echo keep > d/normal.txt && echo swap > d/.normal.txt.swp && echo tmp > d/draft.tmp && echo mac > .DS_Store && echo lock > '.~lock.report.odt#' && mkdir -p .Trash-0/files && echo trashed > .Trash-0/files/old.txt`);
  t.equal(r.code, 0, r.stderr);
  const synced = await envx.coffer(['sync', '--wait', '--timeout', '60']);
  t.equal(synced.code, 0, `sync --wait finishes although local-only files wait: ${synced.stderr}`);
  const status = JSON.parse((await envx.coffer(['status', '--json'])).stdout) as Array<{ pendingEntries: number }>;
  t.equal(status[0]!.pendingEntries, 0, 'status shows nothing waiting to upload');
  t.equal((await sh(`ls -a ${m.mnt}/d | tr '\\n' ' '`)).stdout.trim(), '. .. .normal.txt.swp draft.tmp normal.txt', 'still visible locally');

  const fresh = await mountWorkspace(t, envx, { dataDir: join(envx.root, 'fresh') });
  t.equal((await sh(`ls -a ${fresh.mnt}/d | tr '\\n' ' '`)).stdout.trim(), '. .. normal.txt', 'another device sees only the real file');
  t.equal((await sh(`ls -a ${fresh.mnt} | tr '\\n' ' '`)).stdout.trim(), '. .. d', 'no OS litter or lock files either');
  await fresh.stop();

  t.equal((await sh(`mv ${m.mnt}/d/draft.tmp ${m.mnt}/d/final.txt`)).code, 0);
  t.equal((await envx.coffer(['sync', '--wait', '--timeout', '60'])).code, 0);
  const again = await mountWorkspace(t, envx, { dataDir: join(envx.root, 'fresh2') });
  t.equal((await sh(`cat ${again.mnt}/d/final.txt`)).stdout, 'tmp\n', 'a temporary file renamed to a real name is synced');
});
