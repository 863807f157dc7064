import t from 'tap';
import { RoundTimer, type TimerClock } from '../../src/client/sync/round-timer.js';

/** A clock the test moves by hand: timers fire only inside advance(). */
function fakeClock() {
  let now = 1_000_000;
  let next = 1;
  const timers = new Map<number, { at: number; fire: () => void }>();
  const clock: TimerClock = {
    now: () => now,
    set: (fire, delayMs) => {
      const h = next++;
      timers.set(h, { at: now + delayMs, fire });
      return h;
    },
    clear: (h) => void timers.delete(h as number),
  };
  const advance = (ms: number) => {
    const end = now + ms;
    for (;;) {
      const due = [...timers.entries()].filter(([, x]) => x.at <= end).sort((a, b) => a[1].at - b[1].at)[0];
      if (!due) break;
      timers.delete(due[0]);
      now = due[1].at;
      due[1].fire();
    }
    now = end;
  };
  return { clock, advance, pending: () => timers.size, elapsed: () => now - 1_000_000 };
}

function setup(debounceMs = 500, maxDelayMs = 2500) {
  const c = fakeClock();
  const rounds: number[] = [];
  const timer = new RoundTimer(() => {
    rounds.push(c.elapsed());
    timer.roundStarted();
  }, { debounceMs, maxDelayMs }, c.clock);
  return { ...c, timer, rounds };
}

t.test('a single change runs its round after the quiet time', async (t) => {
  const s = setup();
  s.timer.changed();
  t.ok(s.timer.waitingForChanges);
  s.advance(499);
  t.same(s.rounds, []);
  s.advance(1);
  t.same(s.rounds, [500]);
  t.notOk(s.timer.waitingForChanges);
});

t.test('changes that keep coming wait at most maxDelayMs, then start a new wait', async (t) => {
  const s = setup();
  for (let i = 0; i < 60; i++) {
    s.timer.changed(); // one change every 100 ms for 6 s
    s.advance(100);
  }
  s.advance(1000);
  t.same(s.rounds, [2500, 5000, 6400], 'two rounds at the cap, then one after the last change + 500 ms');
});

t.test('a round asked for with a delay is never postponed by changes', async (t) => {
  const s = setup();
  s.timer.runIn(0);
  s.timer.changed();
  t.notOk(s.timer.waitingForChanges, 'the due round takes the change');
  s.advance(0);
  t.same(s.rounds, [0]);
  s.timer.changed();
  s.timer.runIn(100); // sooner than the changes' round: taken
  s.advance(100);
  t.same(s.rounds, [0, 100]);
  s.timer.runIn(300);
  s.timer.runIn(1000); // later than one already due: ignored
  s.advance(300);
  t.same(s.rounds, [0, 100, 400]);
  t.equal(s.pending(), 0);
});

t.test('the backoff holds both kinds of rounds back; stop cancels', async (t) => {
  const s = setup();
  s.timer.backoffMs = 4000;
  s.timer.changed();
  s.advance(3999);
  t.same(s.rounds, []);
  s.advance(1);
  t.same(s.rounds, [4000]);
  s.timer.runIn(0);
  s.advance(3999);
  t.same(s.rounds, [4000]);
  s.timer.stop();
  s.advance(10_000);
  t.same(s.rounds, [4000], 'no round after stop');
  s.timer.changed();
  s.timer.runIn(0);
  t.equal(s.pending(), 0, 'and none can be asked for');
});
