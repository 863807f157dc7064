import t from 'tap';
import { forEachLimit } from '../../src/concurrency.js';

t.test('forEachLimit runs every item, never more than the limit at once, and stops starting when asked', async (t) => {
  let running = 0;
  let most = 0;
  const done: number[] = [];
  await forEachLimit([1, 2, 3, 4, 5, 6, 7], 3, async (n) => {
    running++;
    most = Math.max(most, running);
    await new Promise((r) => setTimeout(r, 8 - n));
    running--;
    done.push(n);
  });
  t.same([...done].sort(), [1, 2, 3, 4, 5, 6, 7]);
  t.equal(most, 3);

  const started: number[] = [];
  await forEachLimit([1, 2, 3, 4], 1, async (n) => void started.push(n), () => started.length >= 2);
  t.same(started, [1, 2], 'nothing started once stop() holds');
  await t.rejects(forEachLimit([1], 2, async () => Promise.reject(new Error('boom'))), /boom/);
});
