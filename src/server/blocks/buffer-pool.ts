/**
 * Buffers for the blocks a read answers, used again once the answer is sent. A block read into a
 * fresh buffer is new external memory for V8, and a cold read of 256 MiB kept the server's garbage
 * collector busy: its helper threads spent 0.6–0.95 s per read (docs/performance.md). Spares are
 * kept per size (blocks are mostly of one size), a bounded number of each.
 */
export class BlockBufferPool {
  private readonly spares = new Map<number, Buffer[]>();
  /** What take() lent and nobody gave back yet: only those are reused, each once. */
  private readonly lent = new WeakSet<Buffer>();

  constructor(
    private readonly maxSparesPerSize = 32,
    private readonly maxSizes = 4,
  ) {}

  /** A buffer of exactly `size` bytes, not zeroed; the caller owns it until it gives it back. */
  take(size: number): Buffer {
    const buf = this.spares.get(size)?.pop() ?? Buffer.allocUnsafeSlow(size);
    this.lent.add(buf);
    return buf;
  }

  /** The caller will not use `buf` again. Anything this pool did not lend, or lent and got back, is ignored. */
  giveBack(buf: Buffer): void {
    if (!this.lent.delete(buf)) return;
    let list = this.spares.get(buf.length);
    if (!list) {
      if (this.spares.size >= this.maxSizes) return;
      list = [];
      this.spares.set(buf.length, list);
    }
    if (list.length < this.maxSparesPerSize) list.push(buf);
  }

  /** Spare buffers held, all sizes together (for tests). */
  get spareCount(): number {
    let n = 0;
    for (const list of this.spares.values()) n += list.length;
    return n;
  }
}
