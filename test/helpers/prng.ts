/** mulberry32: a seeded PRNG (32 bits of state), enough spread for reproducible test generation. Returns uint32s. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

/** A seeded random source (random-ops, fault and crash tests): the same seed replays the same run. */
export class Rng {
  private readonly next32: () => number;
  constructor(seed: number) {
    this.next32 = mulberry32(seed);
  }
  float(): number {
    return this.next32() / 4294967296;
  }
  u32(): number {
    return this.next32();
  }
  /** 0 .. n-1 */
  int(n: number): number {
    return Math.floor(this.float() * n);
  }
  /** lo .. hi inclusive */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }
  chance(p: number): boolean {
    return this.float() < p;
  }
  /** `n` seeded bytes (never all-zero runs: zero is what a hole reads as). */
  bytes(n: number): Buffer {
    const out = Buffer.allocUnsafe(n);
    let i = 0;
    for (; i + 4 <= n; i += 4) out.writeUInt32LE((this.next32() | 0x01010101) >>> 0, i);
    for (; i < n; i++) out[i] = (this.next32() & 0xfe) | 1;
    return out;
  }
  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new Error('pick from an empty list');
    return items[this.int(items.length)]!;
  }
  weighted<T extends string>(weights: ReadonlyArray<readonly [T, number]>): T {
    const total = weights.reduce((s, [, w]) => s + Math.max(0, w), 0);
    let r = this.float() * total;
    for (const [k, w] of weights) {
      if (w <= 0) continue;
      r -= w;
      if (r < 0) return k;
    }
    return weights[weights.length - 1]![0];
  }
}
