/**
 * The addon's malloc trimmer (native/memory.cc): freed block-sized buffers left as holes in glibc's
 * arenas are given back to the system, by hand and by the background thread once enough is free.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import t from 'tap';
import { loadAddon } from '../../src/mount/libfuse3-transport.js';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const built = existsSync(join(repoRoot, 'native/build/Release/coffer_fuse.node'));

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

function residentMiB(): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

/** Allocates `count` touched buffers of 96 KiB (malloc'd, under the mmap threshold), frees 9 in 10. */
async function leaveHoles(count: number): Promise<Buffer[]> {
  const all: Buffer[] = [];
  for (let i = 0; i < count; i++) all.push(Buffer.allocUnsafeSlow(96 * 1024).fill(i & 0xff));
  const kept = all.filter((_, i) => i % 10 === 0);
  all.length = 0;
  // Backing stores are released by the GC's sweeper: collect until glibc sees them free.
  for (let i = 0; i < 5; i++) {
    gc();
    await new Promise((r) => setTimeout(r, 20));
  }
  return kept;
}

t.test('mallocStats and trimMemory give freed holes back', { skip: built ? false : 'libfuse3 addon not built (make build)' }, async (t) => {
  const addon = loadAddon();
  const stats = addon.mallocStats();
  for (const k of ['arenaBytes', 'mmapBytes', 'inUseBytes', 'freeBytes', 'trims'] as const) {
    t.ok(Number.isFinite(stats[k]) && stats[k] >= 0, `${k} is a byte count`);
  }
  const kept = await leaveHoles(2000);
  const before = residentMiB();
  t.ok(addon.mallocStats().freeBytes > 100 * 1024 * 1024, 'the freed buffers sit in the arenas');
  addon.trimMemory();
  const after = residentMiB();
  t.ok(before - after > 100, `resident memory drops by the freed buffers (${before.toFixed(0)} -> ${after.toFixed(0)} MiB)`);
  t.equal(kept.length, 200);
  t.ok(
    kept.every((b, i) => b[0] === ((i * 10) & 0xff) && b[b.length - 1] === ((i * 10) & 0xff)),
    'live buffers keep their bytes',
  );
});

t.test('the background trimmer trims once enough is freed, and stops', { skip: built ? false : 'libfuse3 addon not built (make build)' }, async (t) => {
  const addon = loadAddon();
  t.throws(() => addon.startMemoryTrimmer(1, 0), /periodMs/, 'a period under 10 ms is refused');
  t.throws(() => addon.startMemoryTrimmer(Number.NaN, 0), /periodMs/, 'NaN is refused');
  t.throws(() => (addon.startMemoryTrimmer as unknown as (a: string) => void)('1'), /startMemoryTrimmer/, 'wrong types are refused');
  const trims = addon.mallocStats().trims;
  addon.startMemoryTrimmer(20, 8 * 1024 * 1024);
  t.teardown(() => addon.stopMemoryTrimmer());
  await new Promise((r) => setTimeout(r, 60)); // it records its low mark
  const kept = await leaveHoles(2000);
  const deadline = Date.now() + 5000;
  while (addon.mallocStats().trims === trims && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  t.ok(addon.mallocStats().trims > trims, 'the trimmer ran after ~170 MiB were freed');
  addon.stopMemoryTrimmer();
  addon.stopMemoryTrimmer(); // idempotent
  const stopped = addon.mallocStats().trims;
  await leaveHoles(2000);
  await new Promise((r) => setTimeout(r, 100));
  t.equal(addon.mallocStats().trims, stopped, 'no trim after stop');
  t.equal(kept.length, 200);
});

t.test('setMemoryPressure reaches V8: critical pressure collects what is unreachable', { skip: built ? false : 'libfuse3 addon not built (make build)' }, async (t) => {
  const addon = loadAddon();
  for (const bad of [3, -1, 0.5, Number.NaN]) t.throws(() => addon.setMemoryPressure(bad as 0), /level must be 0, 1 or 2/, `level ${bad} is refused`);
  let target: object | null = { payload: Buffer.alloc(1024) };
  const ref = new WeakRef(target);
  target = null;
  // A WeakRef's target lives at least until the end of the job that created or read it.
  await new Promise((r) => setImmediate(r));
  t.ok(addon.setMemoryPressure(2) === undefined, 'critical pressure accepted');
  addon.setMemoryPressure(0);
  t.equal(ref.deref(), undefined, 'the unreachable object was collected by the pressure alone');
  addon.setMemoryPressure(1);
  addon.setMemoryPressure(0);
  t.pass('moderate pressure set and withdrawn');
});
