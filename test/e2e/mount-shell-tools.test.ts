import { join } from 'node:path';
import t from 'tap';
import { mountWorkspace, setupEnvironment, sh } from '../helpers/mount.js';

/** Ordinary shell tools on a real mount, then everything read back through a fresh local store. */
t.test('shell tools on a mounted workspace', async (t) => {
  const envx = await setupEnvironment(t);
  const src = join(envx.root, 'src');
  // Distinctive names and contents, grepped for in the server's storage at the end.
  const secretName = 'zqxsecretfoldername';
  const secretText = 'zqx-the-plaintext-marker-zqx';
  const prep = await sh(
    `set -e; mkdir -p ${src}/tree ${src}/${secretName}; head -c $((64*1024*1024)) /dev/urandom > ${src}/big.bin; ` +
      `echo '${secretText}' > ${src}/${secretName}/note.txt; ` +
      `for d in $(seq 1 20); do mkdir -p ${src}/tree/d$d; for f in $(seq 1 100); do echo "file $d/$f" > ${src}/tree/d$d/f$f.txt; done; done`,
  );
  t.equal(prep.code, 0, prep.stderr);
  const m = await mountWorkspace(t, envx);
  const mnt = m.mnt;
  const run = async (what: string, cmd: string) => {
    const r = await sh(cmd, { cwd: mnt });
    t.equal(r.code, 0, `${what}: ${r.stderr.slice(0, 500)}`);
    return r.stdout;
  };

  await run('cp big file', `cp ${src}/big.bin ${mnt}/big.bin`);
  t.equal(
    (await run('sha256 in mount', `sha256sum ${mnt}/big.bin | cut -d' ' -f1`)).trim(),
    (await run('sha256 source', `sha256sum ${src}/big.bin | cut -d' ' -f1`)).trim(),
    '64 MiB file identical',
  );
  await run('cp tree of 2000 files', `cp -r ${src}/tree ${mnt}/tree && cp -r ${src}/${secretName} ${mnt}/`);
  await run('diff -r', `diff -r ${src}/tree ${mnt}/tree`);
  t.equal((await run('find', `find ${mnt}/tree -type f | wc -l`)).trim(), '2000');
  t.match(await run('ls -l', `ls -l ${mnt}/big.bin`), /67108864/);
  t.equal((await run('stat size', `stat -c %s ${mnt}/tree/d1/f1.txt`)).trim(), String('file 1/1\n'.length));
  t.ok(Number((await run('du', `du -sk ${mnt}/tree | cut -f1`)).trim()) > 0, 'du reports usage');

  await run('mkdir -p', `mkdir -p ${mnt}/x/y/z && test -d ${mnt}/x/y/z`);
  await run('mv file', `mv ${mnt}/tree/d1/f1.txt ${mnt}/x/moved.txt && test ! -e ${mnt}/tree/d1/f1.txt && grep -q 'file 1/1' ${mnt}/x/moved.txt`);
  await run('mv folder', `mv ${mnt}/tree/d2 ${mnt}/x/y/d2 && test -f ${mnt}/x/y/d2/f5.txt`);
  await run('rm -r', `rm -r ${mnt}/tree/d3 && test ! -e ${mnt}/tree/d3`);
  await run('touch -d', `touch -d '2020-01-02 03:04:05' ${mnt}/x/moved.txt`);
  t.equal((await run('mtime', `date -u -d @$(stat -c %Y ${mnt}/x/moved.txt) +%Y-%m-%d`)).trim(), '2020-01-02');
  await run('chmod recorded', `chmod 755 ${mnt}/x/moved.txt && test "$(stat -c %a ${mnt}/x/moved.txt)" = 755`);

  await run('tar c', `tar -C ${src} -cf ${envx.root}/t.tar tree && mkdir ${mnt}/untar && tar -C ${mnt}/untar -xf ${envx.root}/t.tar`);
  await run('tar round trip', `diff -r ${src}/tree ${mnt}/untar/tree && tar -C ${mnt} -cf ${envx.root}/back.tar untar && mkdir ${envx.root}/back && tar -C ${envx.root}/back -xf ${envx.root}/back.tar && diff -r ${src}/tree ${envx.root}/back/untar/tree`);
  await run('rsync -a in', `rsync -a ${src}/tree/ ${mnt}/rsynced/`);
  await run('rsync -a out', `rsync -a ${mnt}/rsynced/ ${envx.root}/rsync-back/ && diff -r ${src}/tree ${envx.root}/rsync-back`);

  await run(
    'git',
    `mkdir ${mnt}/repo && cd ${mnt}/repo && git init -q && git config user.email a@b.c && git config user.name A && ` +
      `echo one > a.txt && mkdir sub && echo two > sub/b.txt && git add . && git commit -qm first && ` +
      `echo three >> a.txt && git commit -qam second && git checkout -q -b other && git checkout -q -`,
  );
  t.match(await run('git log', `cd ${mnt}/repo && git log --oneline`), /second[\s\S]*first/);
  t.equal((await run('git status', `cd ${mnt}/repo && git status --porcelain`)).trim(), '', 'git status clean');

  await run('sqlite3', `sqlite3 ${mnt}/db.sqlite "create table t(x); insert into t values (1),(2),(3);"`);
  t.equal((await run('sqlite3 query', `sqlite3 ${mnt}/db.sqlite "select sum(x) from t;"`)).trim(), '6');

  // Editor-style save: write a temp file, fsync it, rename it over the original.
  await run('editor save', `echo original > ${mnt}/doc.txt && printf 'edited\\n' > ${mnt}/.doc.txt.tmp && sync ${mnt}/.doc.txt.tmp && mv -f ${mnt}/.doc.txt.tmp ${mnt}/doc.txt`);
  t.equal((await run('read saved', `cat ${mnt}/doc.txt`)).trim(), 'edited');
  t.equal((await run('no temp left', `ls -a ${mnt} | grep -c doc.txt`)).trim(), '1');

  // Snapshot of what the mount shows, then wait until everything is on the server.
  await run('snapshot', `cd ${mnt} && find . -type f -print0 | sort -z | xargs -0 sha256sum > ${envx.root}/expected.sha`);
  const synced = await envx.coffer(['sync', 'Docs', '--wait', '--timeout', '120']);
  t.equal(synced.code, 0, synced.stderr);
  await m.stop();

  // A fresh local store: everything must come from the server.
  const m2 = await mountWorkspace(t, envx, { dataDir: join(envx.root, 'fresh-data') });
  const check = await sh(`cd ${m2.mnt} && sha256sum -c --quiet ${envx.root}/expected.sha`);
  t.equal(check.code, 0, `fresh store reads back identical: ${check.stdout.slice(0, 500)}${check.stderr.slice(0, 500)}`);
  t.equal((await sh(`cd ${m2.mnt}/repo && git status --porcelain && git log --oneline | wc -l`)).stdout.trim(), '2');
  await m2.stop();

  // Zero knowledge: no name or content of ours in the server's database or block folder.
  for (const needle of [secretName, secretText, 'moved.txt', 'db.sqlite', 'file 1/2']) {
    const g = await sh(`grep -rlaF -- '${needle}' ${envx.server.dataDir} | head -3`);
    t.equal(g.stdout.trim(), '', `server storage does not contain "${needle}"`);
  }
});
