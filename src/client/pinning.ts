import type { Logger } from 'pino';
import { CofferError } from '../errors.js';
import type { BlockRef } from '../model/manifests.js';
import type { BlockReader } from './block-reader.js';
import type { LocalStore } from './local-store.js';
import type { WorkspaceEngine } from './workspace/engine.js';
import type { EntryTable } from './workspace/entries.js';

/**
 * Offline pinning: every file under a pinned path is kept fully downloaded and its blocks are exempt
 * from cache eviction. Pins live in the local store (so `coffer pin` works next to a running mount);
 * the mount applies them after each sync round, which also pins what was written or changed since.
 */
/** Walks again for blocks evicted before the pins were set, at most this many times. */
const PIN_ATTEMPTS = 3;

export async function applyPins(engine: WorkspaceEngine, entries: EntryTable, reader: BlockReader, store: LocalStore, logger: Logger): Promise<{ files: number; blocks: number }> {
  const pinned = new Set<string>();
  const refs: BlockRef[] = [];
  let files = 0;
  for (const path of store.listPins()) {
    let root;
    try {
      root = await engine.entryAt(path);
    } catch (err) {
      if (err instanceof CofferError && err.code === 'not_found') {
        logger.warn({ path }, 'a pinned path no longer exists');
        continue;
      }
      throw err;
    }
    const stack = [root];
    while (stack.length > 0) {
      const e = stack.pop()!;
      const m = e.manifest;
      if (m.type === 'folder' || m.type === 'workspace') {
        const ids = Object.values(m.children);
        await entries.fetchMissing(ids); // one batched request per folder
        for (const id of ids) stack.push(await entries.get(id));
      } else if (m.type === 'file') {
        files++;
        for (const ref of m.blocks) {
          await reader.warm(ref); // downloads, checks and stores it unless the store has it
          if (!pinned.has(ref.id)) refs.push(ref);
          pinned.add(ref.id);
        }
      }
    }
  }
  // The pins are set once the walk is over, and a cache over its limit may evict a block fetched early
  // in the walk meanwhile: fetch those again and pin again (a pinned block is never evicted). Without
  // this, such a block stayed missing until some manifest changed (found by test/e2e/pinning.test.ts).
  for (let attempt = 1; ; attempt++) {
    if (store.setPinnedBlocks(pinned) === pinned.size) break;
    const missing = refs.filter((ref) => !store.hasBlock(ref.id));
    // The sync round fails and retries with its backoff (and so does this walk).
    if (attempt === PIN_ATTEMPTS) throw new CofferError('no_space', `${missing.length} pinned blocks keep being evicted before they could be pinned`);
    for (const ref of missing) await reader.warm(ref);
  }
  return { files, blocks: pinned.size };
}
