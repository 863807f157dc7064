import type { Logger } from 'pino';
import { CofferError } from '../errors.js';
import type { BlockReader } from './block-reader.js';
import type { LocalStore } from './local-store.js';
import type { WorkspaceEngine } from './workspace/engine.js';
import type { EntryTable } from './workspace/entries.js';

/**
 * Offline pinning: every file under a pinned path is kept fully downloaded and its blocks are exempt
 * from cache eviction. Pins live in the local store (so `coffer pin` works next to a running mount);
 * the mount applies them after each sync round, which also pins what was written or changed since.
 */
export async function applyPins(engine: WorkspaceEngine, entries: EntryTable, reader: BlockReader, store: LocalStore, logger: Logger): Promise<{ files: number; blocks: number }> {
  const pinned = new Set<string>();
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
          if (!store.hasBlock(ref.id)) await reader.warm(ref); // downloads, checks and caches it
          pinned.add(ref.id);
        }
      }
    }
  }
  store.setPinnedBlocks(pinned);
  return { files, blocks: pinned.size };
}
