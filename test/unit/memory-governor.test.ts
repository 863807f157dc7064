/**
 * The mount's memory governor (src/mount/memory-governor.ts): V8 is told memory is tight only while
 * the process is over its budget, at most once per interval, and told it is not once back under
 * the budget by the hysteresis; `--memory-budget` is checked.
 */
import t from 'tap';
import { parseMemoryBudget } from '../../src/cli/mount.js';
import { MemoryGovernor } from '../../src/mount/memory-governor.js';

const MiB = 1024 * 1024;

function governed(rss: { value: number }) {
  const levels: number[] = [];
  const gov = new MemoryGovernor({ setMemoryPressure: (l) => void levels.push(l) }, { budgetBytes: 256 * MiB, minIntervalMs: 1000, hysteresisBytes: 32 * MiB, periodMs: 250 }, () => rss.value);
  return { gov, levels };
}

t.test('pressure only over the budget, at most once per interval, withdrawn below budget - hysteresis', async (t) => {
  const rss = { value: 200 * MiB };
  const { gov, levels } = governed(rss);
  gov.check(0);
  t.same(levels, [], 'under the budget: nothing');
  rss.value = 300 * MiB;
  gov.check(100);
  t.same(levels, [1], 'over the budget: moderate pressure');
  t.ok(gov.underPressure);
  gov.check(600);
  t.same(levels, [1], 'still over, within the interval: no second signal');
  gov.check(1100);
  t.same(levels, [1, 1], 'still over after the interval: signalled again');
  rss.value = 240 * MiB;
  gov.check(5000);
  t.same(levels, [1, 1], 'under the budget but within the hysteresis: pressure kept');
  t.ok(gov.underPressure);
  rss.value = 220 * MiB;
  gov.check(5250);
  t.same(levels, [1, 1, 0], 'below budget - hysteresis: pressure withdrawn');
  gov.check(5500);
  t.same(levels, [1, 1, 0], 'withdrawn once');
  t.equal(gov.signals, 2);
  rss.value = 260 * MiB;
  gov.check(5750);
  t.same(levels, [1, 1, 0, 1], 'over again: signalled at once (the last signal is long past)');
  gov.stop();
  t.same(levels, [1, 1, 0, 1, 0], 'stopping withdraws the pressure');
  t.notOk(gov.underPressure);
});

t.test('the timer samples on its own and stops', async (t) => {
  const rss = { value: 300 * MiB };
  const { gov, levels } = governed(rss);
  gov.start();
  gov.start(); // idempotent
  await new Promise((r) => setTimeout(r, 400));
  t.same(levels, [1], 'one signal from the timer within the first interval');
  gov.stop();
  t.same(levels, [1, 0]);
});

t.test('bad settings are refused', async (t) => {
  const sink = { setMemoryPressure: () => {} };
  t.throws(() => new MemoryGovernor(sink, { budgetBytes: 16 * MiB, minIntervalMs: 1000, hysteresisBytes: 32 * MiB, periodMs: 250 }), RangeError, 'budget under the hysteresis');
  t.throws(() => new MemoryGovernor(sink, { budgetBytes: 256 * MiB, minIntervalMs: 1000, hysteresisBytes: 32 * MiB, periodMs: 0 }), RangeError, 'zero period');
});

t.test('--memory-budget', async (t) => {
  t.equal(parseMemoryBudget('256'), 256);
  t.equal(parseMemoryBudget('0'), 0, '0 turns the governor off');
  for (const bad of ['63', '-1', '1.5', 'lots', '']) t.throws(() => parseMemoryBudget(bad), { code: 'bad_request', message: /--memory-budget/ }, `"${bad}" is refused`);
});
