/** The clock and timer a RoundTimer runs on (tests drive a fake one). */
export interface TimerClock {
  now(): number;
  set(fire: () => void, delayMs: number): unknown;
  clear(handle: unknown): void;
}

const realClock: TimerClock = {
  now: Date.now,
  set: (fire, delayMs) => setTimeout(fire, delayMs),
  clear: (handle) => clearTimeout(handle as NodeJS.Timeout),
};

export interface RoundTimerOptions {
  /** Quiet time after the last local change before its round. */
  debounceMs: number;
  /** Longest a local change waits for its round while changes keep coming. */
  maxDelayMs: number;
  /**
   * A burst: at least this many local changes within a second (an untar, a copy of a tree, a big
   * write). While one lasts, changes wait up to busyMaxDelayMs instead of maxDelayMs.
   */
  burstChangesPerSecond: number;
  /** Longest a local change waits for its round during a burst (Parsec's MAX_SYNC_WAIT is 60 s). */
  busyMaxDelayMs: number;
}

/** A full round uploads what is pending, then pulls; a pull round only pulls remote changes. */
export type RoundKind = 'full' | 'pull';

/** Failed rounds back off from this, doubling up to the most. */
const MIN_BACKOFF_MS = 500;
const MAX_BACKOFF_MS = 10_000;

interface Armed {
  handle: unknown;
  due: number;
}

/**
 * When the next sync round runs, and which kind. Two kinds of requests, each with its own timer:
 * - local changes: their full round waits until they have been quiet for debounceMs, or maxDelayMs
 *   after the first of them (a trailing debounce: a burst such as an untar goes up in few rounds
 *   instead of one every debounceMs, each re-uploading the folders it grows). During a burst of
 *   changes the cap is busyMaxDelayMs: on a machine of few cores the round's work (sealing,
 *   signing, the server's answers) runs on the same JS thread and cores as the requests of the
 *   program making the burst, so it waits for the burst's end (its first quiet debounceMs) instead
 *   of slowing it down; a round running when a burst begins stops starting uploads (shouldYield)
 *   and leaves the rest for after it. Slower edits, a document saved now and then, keep the short cap;
 * - a round due after a delay (start, a server event, a poll, a retry), never postponed by a later
 *   request. It only pulls while local changes wait for their quiet time: uploading then would catch
 *   a file between its create (or O_TRUNC) and its write, and put an empty version in its history.
 * No round sooner than the current backoff.
 */
export class RoundTimer {
  private requested: Armed | null = null;
  private changes: Armed | null = null;
  /** When the first local change not yet taken by a full round was made (0: none). */
  private changedSince = 0;
  /** When the changes' round is due (their timer may be set sooner: it checks again when it fires). */
  private changesDue = 0;
  /** When the first of the changes taken by the last full round was made (its start, if none). */
  private takenSince = 0;
  /** Local changes made since the last full round started. */
  private changesSinceRound = 0;
  private backoff = 0;
  private stopped = false;
  /** The local changes counted in the current one-second window, and whether the window just before it was a burst. */
  private windowStart = 0;
  private windowChanges = 0;
  private previousWindowBurst = false;

  constructor(
    private readonly fire: (kind: RoundKind) => void,
    private readonly opts: RoundTimerOptions,
    private readonly clock: TimerClock = realClock,
  ) {}

  /** A round in `delayMs` (at least the backoff); a round already due sooner stays. */
  runIn(delayMs: number): void {
    if (this.stopped) return;
    const due = this.clock.now() + Math.max(delayMs, this.backoff);
    if (this.requested !== null && this.requested.due <= due) return;
    this.requested = this.arm(this.requested, due, () => {
      this.requested = null;
      this.fire(this.changes === null ? 'full' : 'pull');
    });
  }

  /**
   * A local change was made. Called on every write: the timer is moved only when the round falls due
   * sooner; a later due time is checked when the timer fires (no clear and set per write).
   */
  changed(): void {
    if (this.stopped) return;
    const now = this.clock.now();
    if (this.changedSince === 0) this.changedSince = now;
    this.changesSinceRound++;
    this.countChange(now);
    this.scheduleChanges(now);
  }

  /** The changes' round: after their quiet time, or their cap; the timer moves only when it falls due sooner. */
  private scheduleChanges(now: number): void {
    const cap = this.burstAt(now) ? this.opts.busyMaxDelayMs : this.opts.maxDelayMs;
    this.changesDue = Math.max(Math.min(now + this.opts.debounceMs, this.changedSince + cap), now + this.backoff);
    if (this.changes === null || this.changesDue < this.changes.due) this.changes = this.arm(this.changes, this.changesDue, this.changesFired);
  }

  private readonly changesFired = (): void => {
    this.changes = null;
    if (this.changesDue > this.clock.now()) this.changes = this.arm(null, this.changesDue, this.changesFired);
    else this.fire('full');
  };

  /** Counts a change in its one-second window (a window starts at the first change after the last one's end). */
  private countChange(now: number): void {
    const elapsed = now - this.windowStart;
    if (elapsed >= 1000) {
      // The window just ended counts only if the new one follows it directly.
      this.previousWindowBurst = elapsed < 2000 && this.windowChanges >= this.opts.burstChangesPerSecond;
      this.windowStart = now;
      this.windowChanges = 0;
    }
    this.windowChanges++;
  }

  /** Whether a burst is going on at `now`: the current window, or the one just before it, is one. */
  private burstAt(now: number): boolean {
    const elapsed = now - this.windowStart;
    const full = this.windowChanges >= this.opts.burstChangesPerSecond;
    return elapsed < 1000 ? this.previousWindowBurst || full : elapsed < 2000 && full;
  }

  /** A full round starts: it takes every change made so far; later ones start a new wait. */
  fullRoundStarted(): void {
    this.takenSince = this.changedSince === 0 ? this.clock.now() : this.changedSince;
    this.changesSinceRound = 0;
    this.changedSince = 0;
    if (this.changes !== null) this.clock.clear(this.changes.handle);
    this.changes = null;
  }

  /**
   * Whether the running full round should stop starting uploads: a burst began while it ran (an
   * untar's files deleted right after it, a second copy; the burst it follows does not count) and
   * what it took has waited less than the burst's cap. Past the cap it finishes, or a long burst
   * would hold the changes forever.
   */
  shouldYield(): boolean {
    const now = this.clock.now();
    return this.changesSinceRound >= this.opts.burstChangesPerSecond && this.burstAt(now) && now - this.takenSince < this.opts.busyMaxDelayMs;
  }

  /** The running full round stopped early: what it left waits again, its cap counted from the oldest change. */
  roundYielded(): void {
    if (this.stopped) return;
    this.changedSince = this.changedSince === 0 ? this.takenSince : Math.min(this.changedSince, this.takenSince);
    this.scheduleChanges(this.clock.now());
  }

  /** A round failed: the next one waits longer (500 ms doubling to 10 s). Returns that wait. */
  failed(): number {
    this.backoff = Math.min(MAX_BACKOFF_MS, Math.max(MIN_BACKOFF_MS, this.backoff * 2));
    return this.backoff;
  }

  succeeded(): void {
    this.backoff = 0;
  }

  stop(): void {
    this.stopped = true;
    for (const armed of [this.requested, this.changes]) if (armed !== null) this.clock.clear(armed.handle);
    this.requested = this.changes = null;
  }

  private arm(previous: Armed | null, due: number, fire: () => void): Armed {
    if (previous !== null) this.clock.clear(previous.handle);
    return { due, handle: this.clock.set(fire, Math.max(0, due - this.clock.now())) };
  }
}
