import { CofferError } from '../errors.js';

/** Per item of a batch, in order: its result, or the error its single request would have answered. */
export type BatchOutcome<R> = { ok: R } | { error: CofferError };

interface Pending<T, R> {
  item: T;
  resolve: (result: R) => void;
  reject: (err: unknown) => void;
}

/**
 * Gathers the requests made in the same turn of the event loop into one request per key (a realm),
 * up to `maxItems` items and about `maxBytes`: a sync round uploads a block and a manifest per small
 * file, and each request costs far more on both sides (signature, HTTP, the server's commit) than
 * the write itself. Every caller still gets its own answer: its result, its own error (a version
 * conflict, say), or the request's error when the whole request failed (offline, forbidden).
 */
export class RequestBatcher<T, R> {
  private readonly queues = new Map<string, Array<Pending<T, R>>>();
  private scheduled = false;

  constructor(
    private readonly sendBatch: (key: string, items: T[]) => Promise<Array<BatchOutcome<R>>>,
    private readonly limits: { maxItems: number; maxBytes: number; sizeOf: (item: T) => number },
  ) {}

  submit(key: string, item: T): Promise<R> {
    return new Promise<R>((resolve, reject) => {
      let queue = this.queues.get(key);
      if (!queue) this.queues.set(key, (queue = []));
      queue.push({ item, resolve, reject });
      if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(() => this.flush());
      }
    });
  }

  private flush(): void {
    this.scheduled = false;
    const queues = [...this.queues];
    this.queues.clear();
    for (const [key, queue] of queues) {
      let batch: Array<Pending<T, R>> = [];
      let bytes = 0;
      for (const p of queue) {
        const size = this.limits.sizeOf(p.item);
        if (batch.length > 0 && (batch.length >= this.limits.maxItems || bytes + size > this.limits.maxBytes)) {
          void this.send(key, batch);
          batch = [];
          bytes = 0;
        }
        batch.push(p);
        bytes += size;
      }
      void this.send(key, batch);
    }
  }

  private async send(key: string, batch: Array<Pending<T, R>>): Promise<void> {
    let outcomes: Array<BatchOutcome<R>>;
    try {
      outcomes = await this.sendBatch(
        key,
        batch.map((p) => p.item),
      );
      if (outcomes.length !== batch.length) throw new CofferError('integrity', `the server answered ${outcomes.length} results for a batch of ${batch.length}`);
    } catch (err) {
      for (const p of batch) p.reject(err);
      return;
    }
    batch.forEach((p, i) => {
      const o = outcomes[i]!;
      if ('error' in o) p.reject(o.error);
      else p.resolve(o.ok);
    });
  }
}
