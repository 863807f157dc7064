import { pino, type Logger } from 'pino';
import type { DeviceKeys } from '../crypto/index.js';
import { CofferError } from '../errors.js';
import { MAX_RELEASE_BATCH } from '../protocol/schemas.js';
import { ServerConnection } from './connection.js';
import { openRemoteView, type RemoteView } from './history.js';
import type { RemoteManifest } from './remote.js';

/**
 * The client half of block garbage collection. Blocks are opaque to the server: only a member
 * holding the workspace keys can tell which blocks the manifests still reference. An owner or a
 * manager runs this (the server refuses anyone else):
 *
 *  1. list the realm's blocks on the server (before reading manifests: a block uploaded later is
 *     not a candidate);
 *  2. read, decrypt and verify every manifest version that was current at some moment of the
 *     history window [now - history, now]: per vlob the latest version, every version uploaded in
 *     the window, and the one current when the window opens (what `coffer mount --at` and
 *     `coffer restore` can still show);
 *  3. walk the union of those versions from the workspace root (a folder's children in any of its
 *     window versions count): every entry reachable in any snapshot of the window is reached;
 *  4. referenced = the blocks of every window version of every reachable file;
 *  5. release the listed blocks that are not referenced and older than `minAge` (a block uploaded
 *     just before its manifest is not yet referenced by anything), in device-signed requests.
 *
 * Anything that cannot be read or verified aborts the run before a single release: never release
 * on partial knowledge. The server deletes released blocks only after its own retention period, and
 * a block uploaded again before that is kept (src/server/gc.ts).
 */
export interface WorkspaceGcOptions {
  /** History window kept whole (default 30 days). */
  historyMs?: number;
  /** Unreferenced blocks younger than this stay (default 24 hours). */
  minAgeMs?: number;
  /** Report what would be released; send nothing. */
  dryRun: boolean;
  now?: number;
  logger?: Logger;
}

export interface WorkspaceGcReport {
  realmId: string;
  dryRun: boolean;
  /** Start of the history window. */
  cutoff: number;
  vlobs: number;
  versionsRead: number;
  reachableEntries: number;
  referencedBlocks: number;
  /** Blocks the server holds for the realm. */
  storedBlocks: number;
  alreadyReleased: number;
  /** Unreferenced but younger than minAge: kept this time. */
  tooYoung: number;
  /** Released now (or, in a dry run, would be). */
  release: Array<{ blockId: string; size: number; createdAt: number }>;
  releaseBytes: number;
}

export const DEFAULT_HISTORY_MS = 30 * 24 * 3600 * 1000;
export const DEFAULT_MIN_AGE_MS = 24 * 3600 * 1000;

/** The versions of one entry that were current at some time in [cutoff, now], newest first. */
async function windowVersions(view: RemoteView, latest: RemoteManifest, cutoff: number): Promise<RemoteManifest[]> {
  const out = [latest];
  let current = latest;
  while (current.createdAt >= cutoff && current.version > 1) {
    current = await view.remote.fetchManifest(latest.manifest.id, { version: current.version - 1 });
    out.push(current);
  }
  return out;
}

export async function planAndRelease(view: RemoteView, conn: ServerConnection, opts: WorkspaceGcOptions): Promise<WorkspaceGcReport> {
  const now = opts.now ?? Date.now();
  const cutoff = now - (opts.historyMs ?? DEFAULT_HISTORY_MS);
  const minAge = opts.minAgeMs ?? DEFAULT_MIN_AGE_MS;
  const logger = opts.logger ?? pino({ level: 'silent' });
  const realmId = view.info.realmId;
  if (view.info.role !== 'owner' && view.info.role !== 'manager') {
    throw new CofferError('forbidden', `garbage collection needs the owner or manager role (yours: ${view.info.role})`);
  }

  // 1. The blocks the server holds for this realm.
  const stored: Array<{ blockId: string; size: number; createdAt: number; releasedAt: number | null }> = [];
  for (let after: string | null = null; ; ) {
    const page = await conn.listBlocks(realmId, after);
    stored.push(...page.blocks);
    if (page.next === null) break;
    after = page.next;
  }

  // 2. Every vlob of the realm, and its versions within the window.
  const { changes } = await view.remote.listChanges(0);
  const versions = new Map<string, RemoteManifest[]>();
  let versionsRead = 0;
  const ids = changes.map((c) => c.vlobId);
  for (let i = 0; i < ids.length; i += 500) {
    const latest = await view.remote.fetchManifests(ids.slice(i, i + 500));
    for (const id of ids.slice(i, i + 500)) {
      const l = latest.get(id);
      if (!l) throw new CofferError('integrity', `the server listed vlob ${id} but did not return it: nothing released`);
      const vs = await windowVersions(view, l, cutoff);
      versionsRead += vs.length;
      versions.set(id, vs);
    }
  }
  if (!versions.has(realmId)) {
    throw new CofferError('not_found', 'the workspace has no root manifest on the server yet: nothing to collect');
  }

  // 3. Reachability over the union of the window versions.
  const reachable = new Set<string>([realmId]);
  const queue = [realmId];
  while (queue.length > 0) {
    const id = queue.pop()!;
    for (const v of versions.get(id) ?? []) {
      const m = v.manifest;
      if (m.type !== 'folder' && m.type !== 'workspace') continue;
      for (const child of Object.values(m.children)) {
        if (!reachable.has(child)) {
          reachable.add(child);
          queue.push(child);
        }
      }
    }
  }

  // 4. Referenced blocks.
  const referenced = new Set<string>();
  for (const id of reachable) {
    for (const v of versions.get(id) ?? []) {
      if (v.manifest.type === 'file') for (const b of v.manifest.blocks) referenced.add(b.id);
    }
  }

  // 5. Candidates.
  let alreadyReleased = 0;
  let tooYoung = 0;
  const release: WorkspaceGcReport['release'] = [];
  for (const b of stored) {
    if (referenced.has(b.blockId)) continue;
    if (b.releasedAt !== null) alreadyReleased++;
    else if (now - b.createdAt < minAge) tooYoung++;
    else release.push({ blockId: b.blockId, size: b.size, createdAt: b.createdAt });
  }
  const report: WorkspaceGcReport = {
    realmId,
    dryRun: opts.dryRun,
    cutoff,
    vlobs: ids.length,
    versionsRead,
    reachableEntries: reachable.size,
    referencedBlocks: referenced.size,
    storedBlocks: stored.length,
    alreadyReleased,
    tooYoung,
    release,
    releaseBytes: release.reduce((n, b) => n + b.size, 0),
  };
  if (!opts.dryRun) {
    for (let i = 0; i < release.length; i += MAX_RELEASE_BATCH) {
      await conn.releaseBlocks(realmId, release.slice(i, i + MAX_RELEASE_BATCH).map((b) => b.blockId));
    }
  }
  logger.info({ ...report, release: release.length }, opts.dryRun ? 'gc dry run' : 'gc: blocks released');
  return report;
}

/** Opens the workspace on the server (no local store involved) and runs one collection. */
export async function workspaceGc(device: DeviceKeys, dataRoot: string, workspace: string, opts: WorkspaceGcOptions): Promise<WorkspaceGcReport> {
  const view = await openRemoteView(device, dataRoot, workspace, opts.logger);
  const conn = new ServerConnection(device.serverUrl, device);
  try {
    return await planAndRelease(view, conn, opts);
  } finally {
    conn.close();
    await view.close();
  }
}
