/**
 * `coffer fsck`: checks everything of a workspace this device can reach, trusting nothing it reads.
 *
 * - the certificate chain (verified from the first certificate, and against what this device
 *   verified before: a dropped or rewritten certificate stops the check at once);
 * - every manifest reachable from the workspace root, in every version 1..n: decryption (AAD binds
 *   realm, id, version, key index), the author's signature, the author's right to write at the signed
 *   time, the signed id and version; a version the server cannot serve is a gap in the chain; a
 *   version signed more than the clock window before the one it replaces was backdated;
 * - the latest version against the highest this device has seen (rollback) and the same bytes for a
 *   version seen before (fork), through the device's trust state;
 * - every block referenced by any of those versions: present, digest, decryption, size;
 * - every folder entry points at a manifest the server has;
 * - the local store (when this device has one for the workspace): a base version above what the
 *   server serves is a rollback; entries waiting to upload are counted.
 *
 * Read-only: it writes nothing to the server, nor to the local store (opened read-only).
 */
import Database from 'better-sqlite3';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { CofferError, describeError } from '../errors.js';
import { CLOCK_WINDOW_MS } from '../protocol/auth.js';
import type { BlockRef, Manifest } from '../model/manifests.js';
import type { RemoteView } from './history.js';
import type { RemoteManifest } from './remote.js';

export type FsckProblemKind =
  | 'manifest' // decryption, signature, author, schema: the manifest cannot be trusted
  | 'rollback' // older than seen, a version seen with other bytes, a local base above the server's latest
  | 'version_gap' // a version of the chain 1..n the server cannot serve
  | 'dangling' // a folder entry whose manifest the server does not have
  | 'block_missing'
  | 'block_corrupt' // digest or decryption failed
  | 'block_size'
  | 'unreachable'; // the server could not be asked (offline, refused)

export interface FsckProblem {
  kind: FsckProblemKind;
  /** Path inside the workspace ("/" is the root). */
  path: string;
  vlobId: string;
  version?: number;
  blockId?: string;
  message: string;
}

export interface FsckReport {
  realmId: string;
  name: string;
  certificates: number;
  entries: number;
  folders: number;
  files: number;
  versions: number;
  blocks: number;
  blockBytes: number;
  local: { checked: boolean; manifests: number; pending: number; note?: string };
  problems: FsckProblem[];
}

export interface FsckOptions {
  /** Check only the latest version of each manifest (default: every version). */
  latestOnly?: boolean;
  /** Skip downloading blocks (default: download, check digest and decrypt each). */
  skipBlocks?: boolean;
  /** The workspace's local store file of this device, if any (opened read-only). */
  localStoreFile?: string;
  logger?: Logger;
}

function reason(err: unknown): string {
  return err instanceof CofferError ? err.message : describeError(err);
}

function isNotFound(err: unknown): boolean {
  return err instanceof CofferError && err.code === 'not_found';
}

function isIntegrity(err: unknown): boolean {
  return err instanceof CofferError && err.code === 'integrity';
}

function childPath(parent: string, name: string): string {
  return parent === '/' ? `/${name}` : `${parent}/${name}`;
}

export async function fsckWorkspace(view: RemoteView, opts: FsckOptions = {}): Promise<FsckReport> {
  const { remote, info } = view;
  const report: FsckReport = {
    realmId: info.realmId,
    name: info.name,
    certificates: view.chain.index,
    entries: 0,
    folders: 0,
    files: 0,
    versions: 0,
    blocks: 0,
    blockBytes: 0,
    local: { checked: false, manifests: 0, pending: 0 },
    problems: [],
  };
  const problem = (p: FsckProblem) => {
    report.problems.push(p);
    opts.logger?.warn({ kind: p.kind, path: p.path, vlobId: p.vlobId, version: p.version, blockId: p.blockId }, p.message);
  };
  const latestVersions = new Map<string, number>();
  const checkedBlocks = new Set<string>();

  const checkBlock = async (path: string, vlobId: string, version: number, ref: BlockRef) => {
    const key = `${ref.id}:${Buffer.from(ref.digest).toString('hex')}`;
    if (checkedBlocks.has(key)) return;
    checkedBlocks.add(key);
    report.blocks++;
    report.blockBytes += ref.size;
    if (opts.skipBlocks) return;
    let ciphertext: Buffer;
    try {
      ciphertext = await remote.fetchBlockCiphertext(ref);
    } catch (err) {
      // not_found: the server does not know it; unavailable: it knows it but its block store lost it (or is down).
      if (isNotFound(err) || (err instanceof CofferError && err.code === 'unavailable')) {
        problem({ kind: 'block_missing', path, vlobId, version, blockId: ref.id, message: `block ${ref.id} (offset ${ref.offset}) is missing on the server (${reason(err)})` });
      }
      else problem({ kind: 'unreachable', path, vlobId, version, blockId: ref.id, message: `block ${ref.id} could not be downloaded: ${reason(err)}` });
      return;
    }
    try {
      const plain = await remote.decryptBlock(ref, ciphertext);
      if (plain.length !== ref.size) problem({ kind: 'block_size', path, vlobId, version, blockId: ref.id, message: `block ${ref.id} holds ${plain.length} bytes, its manifest says ${ref.size}` });
    } catch (err) {
      problem({ kind: 'block_corrupt', path, vlobId, version, blockId: ref.id, message: `block ${ref.id} (offset ${ref.offset}) failed its digest or decryption check: ${reason(err)}` });
    }
  };

  const checkFileBlocks = async (path: string, m: RemoteManifest) => {
    if (m.manifest.type !== 'file') return;
    for (const ref of m.manifest.blocks) await checkBlock(path, m.manifest.id, m.version, ref);
  };

  // Breadth-first over the latest tree; each entry once (a folder listed twice is a problem of its own).
  const queue: Array<{ id: string; path: string }> = [{ id: info.realmId, path: '/' }];
  const visited = new Set<string>();
  while (queue.length > 0) {
    const { id, path } = queue.shift()!;
    if (visited.has(id)) {
      problem({ kind: 'manifest', path, vlobId: id, message: `entry ${id} is referenced from two places` });
      continue;
    }
    visited.add(id);
    let latest: RemoteManifest;
    try {
      latest = await remote.fetchManifest(id);
    } catch (err) {
      if (isNotFound(err)) problem({ kind: 'dangling', path, vlobId: id, message: `its folder lists entry ${id}, which the server does not have` });
      else if (isIntegrity(err)) problem({ kind: /rollback|fork/.test(reason(err)) ? 'rollback' : 'manifest', path, vlobId: id, message: reason(err) });
      else problem({ kind: 'unreachable', path, vlobId: id, message: reason(err) });
      continue;
    }
    report.entries++;
    report.versions++;
    latestVersions.set(id, latest.version);
    const m: Manifest = latest.manifest;
    if (m.type === 'file') report.files++;
    else report.folders++;
    await checkFileBlocks(path, latest);

    if (!opts.latestOnly) {
      // Signed timestamps along the chain may differ by clock skew, not more: a version signed well
      // before the one it replaces was backdated (e.g. by a revoked member, to pass the role check).
      const stamps: Array<{ version: number; timestamp: number }> = [];
      for (let v = 1; v < latest.version; v++) {
        try {
          const old = await remote.fetchManifest(id, { version: v });
          report.versions++;
          stamps.push({ version: v, timestamp: old.timestamp });
          if (old.manifest.type !== m.type && !(m.type === 'workspace' || old.manifest.type === 'workspace')) {
            problem({ kind: 'manifest', path, vlobId: id, version: v, message: `version ${v} is a ${old.manifest.type}, the latest a ${m.type}` });
          }
          await checkFileBlocks(path, old);
        } catch (err) {
          if (isNotFound(err)) problem({ kind: 'version_gap', path, vlobId: id, version: v, message: `version ${v} of ${latest.version} is missing on the server (a gap in the version chain)` });
          else if (isIntegrity(err)) problem({ kind: /fork/.test(reason(err)) ? 'rollback' : 'manifest', path, vlobId: id, version: v, message: reason(err) });
          else problem({ kind: 'unreachable', path, vlobId: id, version: v, message: reason(err) });
        }
      }
      stamps.push({ version: latest.version, timestamp: latest.timestamp });
      for (let i = 1; i < stamps.length; i++) {
        const [a, b] = [stamps[i - 1]!, stamps[i]!];
        if (b.timestamp < a.timestamp - CLOCK_WINDOW_MS) {
          problem({
            kind: 'manifest',
            path,
            vlobId: id,
            version: b.version,
            message: `version ${b.version} is signed ${Math.round((a.timestamp - b.timestamp) / 1000)} s before version ${a.version}, more than the clock window: backdated`,
          });
        }
      }
    }

    if (m.type === 'folder' || m.type === 'workspace') {
      for (const [name, child] of Object.entries(m.children).sort(([a], [b]) => (a < b ? -1 : 1))) queue.push({ id: child, path: childPath(path, name) });
    }
  }

  if (opts.localStoreFile && existsSync(opts.localStoreFile)) checkLocalStore(opts.localStoreFile, latestVersions, report, problem);
  return report;
}

/** Base versions of the local store against what the server serves now (read-only; never blocks a running mount). */
function checkLocalStore(file: string, latest: ReadonlyMap<string, number>, report: FsckReport, problem: (p: FsckProblem) => void): void {
  let db: Database.Database | null = null;
  try {
    db = new Database(file, { readonly: true, fileMustExist: true });
    db.pragma('busy_timeout = 5000');
    const rows = db.prepare('SELECT id, base_version, need_sync FROM manifests').all() as Array<{ id: string; base_version: number; need_sync: number }>;
    report.local.checked = true;
    report.local.manifests = rows.length;
    for (const r of rows) {
      if (r.need_sync === 1) report.local.pending++;
      const served = latest.get(r.id);
      if (served !== undefined && r.base_version > served) {
        problem({
          kind: 'rollback',
          path: '(local store)',
          vlobId: r.id,
          version: served,
          message: `entry ${r.id}: this device's local store derives from version ${r.base_version}, the server now serves version ${served} (rollback)`,
        });
      }
    }
  } catch (err) {
    report.local.note = `local store not checked: ${reason(err)}`;
  } finally {
    db?.close();
  }
}

/** The report as text lines (paths, never contents). */
export function formatFsckReport(r: FsckReport): string {
  const mib = (n: number) => `${(n / (1024 * 1024)).toFixed(1)} MiB`;
  const lines = [
    `fsck ${r.name} (${r.realmId}): ${r.certificates} certificates verified`,
    `  ${r.entries} entries (${r.folders} folders, ${r.files} files), ${r.versions} manifest versions, ${r.blocks} blocks (${mib(r.blockBytes)}) checked`,
    r.local.checked ? `  local store: ${r.local.manifests} manifests, ${r.local.pending} waiting to upload` : `  local store: ${r.local.note ?? 'none on this device'}`,
  ];
  for (const p of r.problems) lines.push(`PROBLEM [${p.kind}] ${p.path}${p.version !== undefined ? ` (v${p.version})` : ''}: ${p.message}`);
  lines.push(r.problems.length === 0 ? 'no problem found' : `${r.problems.length} problem${r.problems.length === 1 ? '' : 's'} found`);
  return `${lines.join('\n')}\n`;
}

export function localStoreFileOf(deviceDir: string, realmId: string): string {
  return join(deviceDir, `${realmId}.sqlite`);
}
