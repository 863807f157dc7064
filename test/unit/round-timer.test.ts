import t from 'tap';
import { RoundTimer, type RoundKind, type TimerClock } from '../../src/client/sync/round-timer.js';

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

function setup(debounceMs = 500, maxDelayMs = 2500, burstChangesPerSecond = 50, busyMaxDelayMs = 60_000) {
  const c = fakeClock();
  const rounds: Array<[number, RoundKind]> = [];
  /** For each full round, whether it would stop for a burst as it starts. */
  const yieldsAtStart: boolean[] = [];
  const timer = new RoundTimer((kind) => {
    rounds.push([c.elapsed(), kind]);
    if (kind === 'full') {
      timer.fullRoundStarted();
      yieldsAtStart.push(timer.shouldYield());
    }
  }, { debounceMs, maxDelayMs, burstChangesPerSecond, busyMaxDelayMs }, c.clock);
  return { ...c, timer, rounds, yieldsAtStart };
}

t.test('a single change runs its full round after the quiet time', async (t) => {
  const s = setup();
  s.timer.changed();
  s.advance(499);
  t.same(s.rounds, []);
  s.advance(1);
  t.same(s.rounds, [[500, 'full']]);
  t.equal(s.pending(), 0);
});

t.test('changes that keep coming wait at most maxDelayMs, then start a new wait', async (t) => {
  const s = setup();
  for (let i = 0; i < 60; i++) {
    s.timer.changed(); // one change every 100 ms for 6 s
    s.advance(100);
  }
  s.advance(1000);
  t.same(s.rounds.map(([at]) => at), [2500, 5000, 6400], 'two rounds at the cap, then one after the last change + 500 ms');
});

/** `count` changes, one every `everyMs`. */
function changes(s: ReturnType<typeof setup>, count: number, everyMs: number): void {
  for (let i = 0; i < count; i++) {
    s.timer.changed();
    s.advance(everyMs);
  }
}

t.test('a burst of changes waits for its end, not for the short cap', async (t) => {
  const s = setup();
  changes(s, 2000, 10); // 100 changes a second for 20 s, like an untar
  t.same(s.rounds, [], 'no round while the burst lasts');
  s.advance(489);
  t.same(s.rounds, []);
  s.advance(1);
  t.same(s.rounds, [[20_490, 'full']], 'one round, 500 ms after the last change (at 19,990 ms)');
});

t.test('a burst that never ends still goes up every busyMaxDelayMs', async (t) => {
  const s = setup();
  changes(s, 13_000, 10); // 130 s
  s.advance(1000);
  t.same(s.rounds.map(([at]) => at), [60_000, 120_000, 130_490], 'at the long cap, counted from the first change each round did not take');
});

t.test('a burst turns the long cap on within its first second, and off a second after it ends', async (t) => {
  const s = setup();
  changes(s, 3, 400); // slow changes at 0, 400 and 800 ms: their round is due at 2,500 ms at the latest
  changes(s, 300, 10); // then a burst from 1,200 to 4,190 ms: its 50th change, at 1,690 ms, makes it one
  t.same(s.rounds, [], 'the burst pushed the round due at 2,500 ms back');
  changes(s, 20, 200); // then 5 changes a second from 4,200 to 8,000 ms
  s.advance(2000);
  t.same(
    s.rounds.map(([at]) => at),
    [5200, 7900, 8500],
    'the first change of a quiet window (after the burst window 3,200–4,200 and the one after it) finds the changes past the short cap; then the short cap again',
  );
});

t.test('a round that a burst interrupts leaves the rest for after it, counted from its first change', async (t) => {
  const s = setup(500, 2500, 50, 5000);
  changes(s, 3, 100); // at 0, 100 and 200 ms
  s.advance(400);
  t.same(s.rounds, [[700, 'full']]);
  t.same(s.yieldsAtStart, [false], 'no burst: the round runs through');
  changes(s, 100, 5); // a burst from 700 to 1,195 ms (its 50th change at 945 ms) while the round runs
  t.ok(s.timer.shouldYield(), 'the round stops starting uploads');
  s.timer.roundYielded();
  changes(s, 800, 5); // the burst goes on to 5,195 ms
  t.same(s.rounds, [[700, 'full'], [5000, 'full']], 'what the round left waits at most the burst cap from its first change (0 ms), not from the burst');
  t.same(s.yieldsAtStart, [false, false], 'and that round, past the cap, does not stop for the burst still going');
  s.advance(1000);
  t.same(s.rounds.map(([at]) => at), [700, 5000, 5695], 'the burst\'s own changes go up after it');
});

t.test('a round after a burst does not stop for it; a yielded one with nothing else coming goes up after the quiet time', async (t) => {
  const s = setup();
  changes(s, 300, 3); // a burst from 0 to 897 ms
  s.advance(497);
  t.same(s.rounds, [[1397, 'full']]);
  t.same(s.yieldsAtStart, [false], 'the burst it follows (its window still the last one) does not stop it');
  changes(s, 60, 1); // another burst starts while it runs
  t.ok(s.timer.shouldYield(), 'that one does');
  s.timer.roundYielded();
  s.advance(499); // the quiet time counts from the pause (1,457 ms), its last change just before it
  t.same(s.rounds.length, 1);
  s.advance(1);
  t.same(s.rounds, [[1397, 'full'], [1957, 'full']]);
  s.advance(2000);
  t.notOk(s.timer.shouldYield(), 'two seconds after the last change there is no burst');
});

t.test('a round asked for while changes wait only pulls, and is never postponed by them', async (t) => {
  const s = setup();
  s.timer.runIn(0);
  s.timer.changed(); // a file created just as the event stream connects
  s.advance(0);
  t.same(s.rounds, [[0, 'pull']], 'the due round runs at once, but leaves the change to its quiet time');
  s.timer.changed();
  s.timer.runIn(100); // sooner than the changes' round
  s.advance(100);
  t.same(s.rounds, [[0, 'pull'], [100, 'pull']]);
  s.advance(400);
  t.same(s.rounds, [[0, 'pull'], [100, 'pull'], [500, 'full']], 'the changes go up after 500 ms of quiet');
  s.timer.runIn(300);
  s.timer.runIn(1000); // later than one already due: ignored
  s.advance(300);
  t.same(s.rounds.slice(3), [[800, 'full']], 'with no change waiting, a due round uploads too');
  t.equal(s.pending(), 0);
});

t.test('pull rounds do not take the changes: the cap still counts from the first of them', async (t) => {
  const s = setup();
  for (let i = 0; i < 24; i++) {
    s.timer.changed(); // one change every 100 ms until 2.3 s, with a poll every second
    if (i % 10 === 5) s.timer.runIn(0);
    s.advance(100);
  }
  s.advance(1000);
  t.same(s.rounds, [[500, 'pull'], [1500, 'pull'], [2500, 'full']]);
});

t.test('a full round started by other means takes the changes waiting', async (t) => {
  const s = setup();
  s.timer.changed();
  s.timer.fullRoundStarted(); // drain() runs one directly
  s.advance(10_000);
  t.same(s.rounds, [], 'no second round for the same changes');
});

t.test('failures back off, doubling from 500 ms to 10 s; both kinds wait; a success resets', async (t) => {
  const s = setup();
  t.same([1, 2, 3, 4, 5, 6].map(() => s.timer.failed()), [500, 1000, 2000, 4000, 8000, 10_000]);
  s.timer.succeeded();
  t.equal(s.timer.failed(), 500);
  s.timer.failed();
  s.timer.failed(); // 2000
  s.timer.changed();
  s.advance(1999);
  t.same(s.rounds, []);
  s.advance(1);
  t.same(s.rounds, [[2000, 'full']]);
  s.timer.runIn(0);
  s.advance(1999);
  t.same(s.rounds, [[2000, 'full']]);
  s.advance(1);
  t.same(s.rounds, [[2000, 'full'], [4000, 'full']]);
});

t.test('stop cancels both timers and takes no more requests', async (t) => {
  const s = setup();
  s.timer.changed();
  s.timer.runIn(100);
  s.timer.stop();
  s.advance(10_000);
  t.same(s.rounds, [], 'no round after stop');
  s.timer.changed();
  s.timer.runIn(0);
  t.equal(s.pending(), 0, 'and none can be asked for');
});
