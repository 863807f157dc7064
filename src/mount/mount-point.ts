/** Mount point helpers shared by the driver and the transports (no FUSE library needed). */
import { execFile } from 'node:child_process';
import { readdir, readFile, realpath, stat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import type { Logger } from 'pino';
import { CofferError, describeError } from '../errors.js';

export function run(cmd: string, args: string[]): Promise<void> {
  return new Promise((res, rej) => {
    execFile(cmd, args, { timeout: 10_000 }, (err, _stdout, stderr) => {
      if (err) rej(new Error(`${err.message.trim()} ${String(stderr).trim()}`.trim()));
      else res();
    });
  });
}

/** Absolute path as /proc/self/mountinfo shows it (the mount point itself may be a dead mount). */
export async function canonicalMountPath(mountPoint: string): Promise<string> {
  const abs = resolve(mountPoint);
  try {
    return join(await realpath(dirname(abs)), basename(abs));
  } catch {
    return abs;
  }
}

function decodeMountField(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_m, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

/** The mountinfo line of `mnt` (canonical path), or null; undefined when mountinfo cannot be read. */
export async function mountInfo(mnt: string): Promise<{ major: number; minor: number; fsType: string } | null | undefined> {
  let text: string;
  try {
    text = await readFile('/proc/self/mountinfo', 'utf8');
  } catch {
    return undefined;
  }
  let found: { major: number; minor: number; fsType: string } | null = null;
  for (const line of text.split('\n')) {
    const fields = line.split(' ');
    const field = fields[4];
    if (field === undefined || decodeMountField(field) !== mnt) continue;
    const [major, minor] = (fields[2] ?? '0:0').split(':').map(Number) as [number, number];
    const sep = fields.indexOf('-');
    // The last one wins: mounts stacked on the same path are listed in mount order.
    found = { major, minor, fsType: sep >= 0 ? (fields[sep + 1] ?? '') : '' };
  }
  return found;
}

/** True/false from /proc/self/mountinfo; undefined when it cannot be read. */
export async function isMountPoint(mnt: string): Promise<boolean | undefined> {
  const info = await mountInfo(mnt);
  return info === undefined ? undefined : info !== null;
}

/**
 * Detaches whatever FUSE mount is at `mountPoint` (also a dead one left by a crashed process):
 * `fusermount -uz`, then `fusermount3 -uz`, then `umount -l`. Quiet when nothing is mounted.
 */
export async function forceUnmount(mountPoint: string): Promise<void> {
  const mnt = await canonicalMountPath(mountPoint);
  if ((await isMountPoint(mnt)) === false) return;
  const attempts: Array<[string, string[]]> = [
    ['fusermount', ['-uz', mnt]],
    ['fusermount3', ['-uz', mnt]],
    ['umount', ['-l', mnt]],
  ];
  const failures: string[] = [];
  for (const [cmd, args] of attempts) {
    try {
      await run(cmd, args);
      return;
    } catch (err) {
      failures.push(`${cmd}: ${describeError(err)}`);
      if ((await isMountPoint(mnt)) === false) return;
    }
  }
  throw new CofferError('busy', `cannot unmount ${mnt}: ${failures.join('; ')}`);
}

export async function prepareMountPoint(mnt: string, logger: Logger): Promise<void> {
  try {
    await stat(mnt);
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    if (code === 'ENOTCONN' || code === 'ECONNABORTED') {
      logger.warn('clearing a dead FUSE mount left at the mount point');
      await forceUnmount(mnt);
    } else if (code === 'ENOENT') {
      throw new CofferError('not_found', `mount point does not exist: ${mnt}`);
    } else {
      throw new CofferError('internal', `cannot use mount point ${mnt}: ${describeError(err)}`);
    }
  }
  const st = await stat(mnt);
  if (!st.isDirectory()) throw new CofferError('not_a_directory', `mount point is not a directory: ${mnt}`);
  if ((await isMountPoint(await canonicalMountPath(mnt))) === true) {
    throw new CofferError('busy', `something is already mounted at ${mnt}`);
  }
  // libfuse 2 refuses non-empty mount points ("nonempty" would hide the files underneath); libfuse 3
  // would mount over them: refuse both alike.
  if ((await readdir(mnt)).length > 0) throw new CofferError('not_empty', `mount point is not empty: ${mnt}`);
}
