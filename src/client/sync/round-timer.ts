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
}

/**
 * When the next sync round runs. Two kinds of requests: a round due after a delay (start, a remote
 * change, a poll, a retry), never postponed by a later request; and local changes, whose round waits
 * until they have been quiet for debounceMs, or maxDelayMs after the first of them (a trailing
 * debounce: a burst such as an untar goes up in few rounds instead of one every debounceMs, each
 * re-uploading the folders it grows). Never sooner than the current backoff.
 */
export class RoundTimer {
  private handle: unknown = null;
  private due = 0;
  private forChanges = false;
  /** When the first local change not yet taken by a round was made (0: none). */
  private changedSince = 0;
  /** Failed rounds back off: no round sooner than this after a request. */
  backoffMs = 0;
  private stopped = false;

  constructor(
    private readonly fire: () => void,
    private readonly opts: RoundTimerOptions,
    private readonly clock: TimerClock = realClock,
  ) {}

  /** A round in `delayMs` (at least the backoff); a round already due sooner stays. */
  runIn(delayMs: number): void {
    if (this.stopped) return;
    const due = this.clock.now() + Math.max(delayMs, this.backoffMs);
    if (this.handle !== null && this.due <= due) return;
    this.arm(due, false);
  }

  /** A local change was made. */
  changed(): void {
    if (this.stopped) return;
    const now = this.clock.now();
    if (this.changedSince === 0) this.changedSince = now;
    const due = Math.max(Math.min(now + this.opts.debounceMs, this.changedSince + this.opts.maxDelayMs), now + this.backoffMs);
    if (this.handle !== null && !this.forChanges && this.due <= due) return;
    this.arm(due, true);
  }

  /** True while local changes wait for their round (a poll then adds nothing: that round pulls too). */
  get waitingForChanges(): boolean {
    return this.handle !== null && this.forChanges;
  }

  /** A round starts: it takes every change made so far; later ones start a new wait. */
  roundStarted(): void {
    this.changedSince = 0;
  }

  stop(): void {
    this.stopped = true;
    if (this.handle !== null) this.clock.clear(this.handle);
    this.handle = null;
  }

  private arm(due: number, forChanges: boolean): void {
    if (this.handle !== null) this.clock.clear(this.handle);
    this.due = due;
    this.forChanges = forChanges;
    this.handle = this.clock.set(() => {
      this.handle = null;
      this.fire();
    }, Math.max(0, due - this.clock.now()));
  }
}
