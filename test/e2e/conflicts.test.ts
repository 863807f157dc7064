import t from 'tap';
import { enrollDevice, eventually } from '../helpers/enroll.js';
import { mountWorkspace, setupEnvironment, sh } from '../helpers/mount.js';

/** Two devices of one user edit the same file and folder while the server is down, then sync. */
t.test('concurrent offline edits: both versions kept, no entry lost', async (t) => {
  const envx = await setupEnvironment(t);
  const env2 = await enrollDevice(envx, 'second');
  const m1 = await mountWorkspace(t, envx);
  const m2 = await mountWorkspace(t, env2);
  t.equal((await sh(`mkdir ${m1.mnt}/shared && printf base > ${m1.mnt}/shared/doc.txt && printf keep > ${m1.mnt}/shared/deleted-there.txt`)).code, 0);
  t.ok((await eventually(`cat ${m2.mnt}/shared/doc.txt ${m2.mnt}/shared/deleted-there.txt 2>/dev/null`, 'basekeep', 15_000)).ok, 'device 2 has the base version');

  await envx.server.close();
  t.equal((await sh(`printf 'written on one' > ${m1.mnt}/shared/doc.txt && printf one > ${m1.mnt}/shared/new-on-one.txt && printf 'edited on one' > ${m1.mnt}/shared/deleted-there.txt`)).code, 0);
  t.equal((await sh(`printf 'written on two, longer' > ${m2.mnt}/shared/doc.txt && printf two > ${m2.mnt}/shared/new-on-two.txt && rm ${m2.mnt}/shared/deleted-there.txt`)).code, 0);
  await new Promise((r) => setTimeout(r, 1000));
  await envx.server.restart();

  const listing = (m: { mnt: string }) => `cd ${m.mnt}/shared && ls | sort | tr '\\n' '|'`;
  // Converged when both show the same listing with 5 entries (doc, its conflict copy, the two new files, the edited one).
  let same = false;
  const deadline = Date.now() + 60_000;
  let l1 = '';
  let l2 = '';
  while (Date.now() < deadline && !same) {
    l1 = (await sh(listing(m1))).stdout;
    l2 = (await sh(listing(m2))).stdout;
    same = l1 === l2 && l1.split('|').filter(Boolean).length === 5;
    if (!same) await new Promise((r) => setTimeout(r, 250));
  }
  t.ok(same, `both devices converge: ${l1} / ${l2}`);
  const names = l1.split('|').filter(Boolean);
  const copy = names.find((n) => /^doc \(conflict [0-9a-f]{8} \d{4}-\d\d-\d\d \d\d-\d\d\)\.txt$/.test(n));
  t.ok(copy, `a conflicting copy is named clearly (${names.join(', ')})`);
  t.ok(names.includes('new-on-one.txt') && names.includes('new-on-two.txt'), 'both sides\' new entries kept');
  t.ok(names.includes('deleted-there.txt'), 'an edit wins over a delete');
  const contents = new Set([(await sh(`cat "${m1.mnt}/shared/doc.txt"`)).stdout, (await sh(`cat "${m1.mnt}/shared/${copy}"`)).stdout]);
  t.same([...contents].sort(), ['written on one', 'written on two, longer'], 'both versions exist, byte for byte');
  t.equal((await sh(`cat ${m2.mnt}/shared/deleted-there.txt`)).stdout, 'edited on one');
});
