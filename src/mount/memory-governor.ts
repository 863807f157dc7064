/**
 * Keeps the mount process near a memory budget by telling V8 when it is over it.
 *
 * V8 sizes its heap for throughput: while a 5,000-file untar syncs, the main isolate's heap grows to
 * 2-3 times what is live (≈140 MiB for ≈45 live) and dead ArrayBuffers (≈80 MiB) wait for the next
 * collection, so the process peaked at ≈450 MiB over a bench run. Under memory pressure V8 collects
 * sooner and grows its heap by smaller steps; without it, it uses its usual heuristics. So pressure
 * is signalled only while the resident size is over the budget, at most once per interval (each
 * signal starts a full incremental collection), and withdrawn once the process is back under the
 * budget by a margin: below the budget this costs nothing.
 */

/** The addon's V8 hook (native/memory.cc): 0 none, 1 moderate, 2 critical. */
export interface MemoryPressureSink {
  setMemoryPressure(level: 0 | 1 | 2): void;
}

export interface MemoryGovernorOptions {
  budgetBytes: number;
  /** Time between two pressure signals while still over the budget. */
  minIntervalMs: number;
  /** Pressure is withdrawn below budgetBytes - hysteresisBytes. */
  hysteresisBytes: number;
  /** How often the resident size is looked at. */
  periodMs: number;
}

export const DEFAULT_MEMORY_GOVERNOR: Omit<MemoryGovernorOptions, 'budgetBytes'> = {
  minIntervalMs: 1000,
  hysteresisBytes: 32 * 1024 * 1024,
  periodMs: 250,
};

export class MemoryGovernor {
  private pressured = false;
  private lastSignal = -Infinity;
  private timer: NodeJS.Timeout | null = null;
  /** Pressure signals sent so far. */
  signals = 0;

  constructor(
    private readonly sink: MemoryPressureSink,
    private readonly opts: MemoryGovernorOptions,
    private readonly residentBytes: () => number = () => process.memoryUsage.rss(),
  ) {
    if (!(opts.budgetBytes > opts.hysteresisBytes && opts.hysteresisBytes >= 0 && opts.minIntervalMs >= 0 && opts.periodMs > 0)) {
      throw new RangeError('memory governor: the budget must exceed the hysteresis, and the periods be positive');
    }
  }

  /** One look at the resident size (what the timer does; tests call it with their own clock). */
  check(now: number): void {
    const rss = this.residentBytes();
    if (rss > this.opts.budgetBytes) {
      if (now - this.lastSignal < this.opts.minIntervalMs) return;
      this.lastSignal = now;
      this.pressured = true;
      this.signals++;
      this.sink.setMemoryPressure(1);
    } else if (this.pressured && rss < this.opts.budgetBytes - this.opts.hysteresisBytes) {
      this.pressured = false;
      this.sink.setMemoryPressure(0);
    }
  }

  get underPressure(): boolean {
    return this.pressured;
  }

  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => this.check(performance.now()), this.opts.periodMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    if (this.pressured) this.sink.setMemoryPressure(0);
    this.pressured = false;
  }
}
