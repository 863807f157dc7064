/**
 * Runs `fn` on each item, at most `limit` at a time, in order of start; stops starting new ones once
 * `stop()` is true. Rejects with the first failure (items already started still run to their end).
 */
export async function forEachLimit<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>, stop: () => boolean = () => false): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length && !stop()) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}
