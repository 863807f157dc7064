import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateOp, Mismatch, Rng, Verifier, summarize, formatLog, type Op } from './random-ops.js';
const seeds = Number(process.argv[2] ?? 5), count = Number(process.argv[3] ?? 3000);
for (let s = 1; s <= seeds; s++) {
  const dir = await mkdtemp(join(tmpdir(), 'rops-'));
  const v = new Verifier(dir, {}, false);
  const rng = new Rng(s);
  const log: Op[] = [];
  try {
    for (let i = 0; i < count; i++) {
      const op: Op = (i + 1) % 500 === 0 ? { op: 'check' } : generateOp(rng, v.model, v.slotViews());
      log.push(op);
      await v.apply(op, i);
    }
    await v.closeAll();
    await v.compareTree(-1, null);
    console.log(`seed ${s}: OK ${summarize(v.stats)} hidden ${v.model.hiddenEvents}`);
  } catch (e) {
    if (e instanceof Mismatch) { console.log(`seed ${s}: ${e.message}\n${formatLog(log.slice(-15))}`); }
    else throw e;
  } finally { await v.closeAll().catch(() => {}); await rm(dir, { recursive: true, force: true }); }
}
