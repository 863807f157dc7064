import Database from 'better-sqlite3';
import { join } from 'node:path';
import t from 'tap';
import { localStoreFiles, mountWorkspace, setupEnvironment, sh } from '../helpers/mount.js';

t.test('a pinned folder stays readable offline after the cache overflowed', async (t) => {
  const envx = await setupEnvironment(t);
  const dataDir = join(envx.root, 'pindata');
  const src = join(envx.root, 'src');
  await sh(`mkdir -p ${src} && head -c 6000000 /dev/urandom > ${src}/a.bin && head -c 40000000 /dev/urandom > ${src}/big.bin`);
  const m = await mountWorkspace(t, envx, { dataDir, args: ['--cache-size', '16'] });
  t.equal((await sh(`mkdir ${m.mnt}/keep ${m.mnt}/other && cp ${src}/a.bin ${m.mnt}/keep/a.bin`)).code, 0);
  const pin = await envx.coffer(['pin', 'Docs', '/keep'], { COFFER_DATA_DIR: dataDir });
  t.equal(pin.code, 0, pin.stderr);
  t.match(pin.stdout, /pinned \/keep in Docs/);
  // Fill the 16 MiB cache well past its limit with data that gets uploaded (then clean, then evictable).
  t.equal((await sh(`cp ${src}/big.bin ${m.mnt}/other/big.bin`)).code, 0);
  t.equal((await envx.coffer(['sync', '--wait'], { COFFER_DATA_DIR: dataDir })).code, 0);
  // A sync round applies the pin after the uploads (downloading what the overflow evicted): wait for
  // the store to hold a.bin's 12 blocks pinned, instead of guessing how long a round takes.
  const pinnedBlocks = async (): Promise<number> => {
    let n = 0;
    for (const f of await localStoreFiles(dataDir)) {
      const db = new Database(f, { readonly: true, fileMustExist: true });
      try {
        if (db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'blocks'").get()) n += (db.prepare('SELECT COUNT(*) AS n FROM blocks WHERE pinned = 1').get() as { n: number }).n;
      } finally {
        db.close();
      }
    }
    return n;
  };
  for (let i = 0; i < 600 && (await pinnedBlocks()) < 12; i++) await new Promise((r) => setTimeout(r, 100));
  t.equal(await pinnedBlocks(), 12, "a.bin's 12 blocks are pinned in the local store");
  await m.stop();
  const du = Number((await sh(`du -sk ${dataDir} | cut -f1`)).stdout.trim());
  t.ok(du < 32 * 1024, `the cache limit is honoured under the import (${du} KiB on disk)`);

  await envx.server.close();
  const offline = await mountWorkspace(t, envx, { dataDir });
  const pinned = await sh(`cmp ${src}/a.bin ${offline.mnt}/keep/a.bin`);
  t.equal(pinned.code, 0, `pinned file reads back offline: ${pinned.stderr}`);
  const evicted = await sh(`cat ${offline.mnt}/other/big.bin > /dev/null`);
  t.not(evicted.code, 0, 'unpinned data that was evicted is not readable offline');
  t.match(evicted.stderr, /No route to host/, 'with a clear errno (EHOSTUNREACH)');
});
