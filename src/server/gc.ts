import type { Logger } from 'pino';
import { BadInputError, describeError } from '../errors.js';
import type { BlockStore } from './blocks/types.js';
import type { MetadataStore, ReleasedBlockRow } from './metadata/types.js';

/**
 * The server half of block garbage collection. Clients (an owner's or manager's device, see
 * src/client/gc.ts) release the blocks of a realm that no manifest within their history window
 * references; this job deletes the blocks that have stayed released for the retention period.
 *
 * Each block goes: released → claimed ("deleting", so a re-upload of it waits) → bytes deleted from
 * the block store → record removed. Every step is idempotent: a run that dies half-way (or two
 * instances running at once) leaves blocks that the next run finishes.
 */
export interface GcOptions {
  metadata: MetadataStore;
  blocks: BlockStore;
  logger: Logger;
  now: number;
  /** Released blocks younger than this stay (default 7 days). */
  retentionMs: number;
  /** List what would be deleted; change nothing. */
  dryRun: boolean;
  /** Blocks handled per metadata query (default 500). */
  batch?: number;
  /** Stop after this many blocks (default: all). */
  limit?: number;
}

/** A released block as the GC reports it. */
export type GcBlock = Omit<ReleasedBlockRow, 'deleting'>;

export interface GcReport {
  dryRun: boolean;
  /** Releases at or before this time were old enough. */
  cutoff: number;
  /** Deleted (or, in a dry run, would be deleted). */
  blocks: GcBlock[];
  bytes: number;
  /** Blocks whose deletion failed (left for the next run). */
  failed: Array<{ orgId: string; blockId: string; error: string }>;
  /** Blocks uploaded again between listing and claiming: kept. */
  revived: number;
}

export const DEFAULT_GC_RETENTION_MS = 7 * 24 * 3600 * 1000;

/** "30d", "12h", "90m", "45s", "500ms" or plain milliseconds. */
export function parseDuration(text: string, what = 'duration'): number {
  const m = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?$/.exec(text.trim());
  if (!m) throw new BadInputError(`${what} "${text}": use a number with a unit, e.g. 7d, 12h, 30m, 45s`);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 }[(m[2] ?? 'ms') as 'ms'];
  const value = Math.round(Number(m[1]) * unit);
  if (!Number.isSafeInteger(value)) throw new BadInputError(`${what} "${text}" is too large`);
  return value;
}

export async function runGc(o: GcOptions): Promise<GcReport> {
  const cutoff = o.now - o.retentionMs;
  const batch = o.batch ?? 500;
  const limit = o.limit ?? Number.POSITIVE_INFINITY;
  const report: GcReport = { dryRun: o.dryRun, cutoff, blocks: [], bytes: 0, failed: [], revived: 0 };
  const seen = new Set<string>();
  for (;;) {
    const rows = await o.metadata.listReleasedBlocks(cutoff, o.dryRun ? Math.min(limit, 100_000) : batch);
    // A dry run changes nothing, so the same rows come back: one page is all it can see without an
    // offset; deletions shrink the list between pages. Rows that failed are skipped by `seen`.
    const fresh = rows.filter((r) => !seen.has(`${r.orgId}/${r.blockId}`));
    if (fresh.length === 0) break;
    for (const r of fresh) {
      if (report.blocks.length >= limit) return report;
      seen.add(`${r.orgId}/${r.blockId}`);
      const item: GcBlock = { orgId: r.orgId, realmId: r.realmId, blockId: r.blockId, size: r.size, releasedAt: r.releasedAt, releasedBy: r.releasedBy };
      if (o.dryRun) {
        report.blocks.push(item);
        report.bytes += r.size;
        continue;
      }
      try {
        if (!(await o.metadata.markBlockDeleting(r.orgId, r.blockId, cutoff, o.now))) {
          report.revived++;
          continue;
        }
        await o.blocks.delete(r.orgId, r.blockId);
        await o.metadata.deleteBlockMeta(r.orgId, r.blockId);
        report.blocks.push(item);
        report.bytes += r.size;
      } catch (err) {
        report.failed.push({ orgId: r.orgId, blockId: r.blockId, error: describeError(err) });
        o.logger.warn({ orgId: r.orgId, blockId: r.blockId, err: describeError(err) }, 'gc: block deletion failed, left for the next run');
      }
    }
    if (o.dryRun || rows.length < batch) break;
  }
  o.logger.info({ dryRun: o.dryRun, blocks: report.blocks.length, bytes: report.bytes, failed: report.failed.length, revived: report.revived, cutoff }, 'gc run done');
  return report;
}

/** Runs the GC every `intervalMs` (first run after one interval); stop() waits for a running pass. */
export function startGcTimer(o: Omit<GcOptions, 'now' | 'dryRun'> & { intervalMs: number; now: () => number }): { stop(): Promise<void> } {
  let running: Promise<unknown> | null = null;
  const timer = setInterval(() => {
    if (running) return;
    running = runGc({ ...o, now: o.now(), dryRun: false })
      .catch((err: unknown) => o.logger.warn({ err: describeError(err) }, 'gc run failed; next run at the next interval'))
      .finally(() => {
        running = null;
      });
  }, o.intervalMs);
  timer.unref();
  return {
    async stop() {
      clearInterval(timer);
      await running;
    },
  };
}
