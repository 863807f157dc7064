import { mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { join, resolve } from 'node:path';
import { z } from 'zod';
import { parseWith } from '../model/codec.js';

/**
 * Which process serves which mount: one small record per mount point, so that `coffer unmount`,
 * `coffer status` and `coffer sync --wait` can find the running mount of a workspace.
 */
const RecordSchema = z.strictObject({ pid: z.number().int().positive(), mountPoint: z.string(), realmId: z.string(), name: z.string() });
export type MountRecord = z.infer<typeof RecordSchema>;

function recordsDir(dataRoot: string): string {
  return join(dataRoot, 'mounts');
}

function recordFile(dataRoot: string, mountPoint: string): string {
  return join(recordsDir(dataRoot), `${createHash('sha256').update(resolve(mountPoint)).digest('hex').slice(0, 16)}.json`);
}

export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export async function writeMountRecord(dataRoot: string, rec: MountRecord): Promise<void> {
  await mkdir(recordsDir(dataRoot), { recursive: true, mode: 0o700 });
  await writeFile(recordFile(dataRoot, rec.mountPoint), JSON.stringify(rec), { mode: 0o600 });
}

export async function removeMountRecord(dataRoot: string, mountPoint: string): Promise<void> {
  await rm(recordFile(dataRoot, mountPoint), { force: true });
}

/** Live mount records (stale ones, of dead processes, are removed). */
export async function liveMounts(dataRoot: string): Promise<MountRecord[]> {
  let files: string[];
  try {
    files = await readdir(recordsDir(dataRoot));
  } catch {
    return [];
  }
  const out: MountRecord[] = [];
  for (const f of files) {
    const path = join(recordsDir(dataRoot), f);
    try {
      const rec = parseWith(RecordSchema, JSON.parse(await readFile(path, 'utf8')), `mount record ${path}`);
      if (processAlive(rec.pid)) out.push(rec);
      else await rm(path, { force: true });
    } catch {
      await rm(path, { force: true });
    }
  }
  return out;
}
