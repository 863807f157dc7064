import { mkdir, open, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { BlockStore } from './types.js';

/**
 * Blocks as files under <root>/<org>/<first 2 hex of id>/<id>. Writes are atomic and durable:
 * temp file + fsync + rename + fsync of the directory.
 */
export class FolderBlockStore implements BlockStore {
  constructor(private readonly root: string) {}

  private dir(orgId: string, blockId: string): string {
    return join(this.root, orgId, blockId.slice(0, 2));
  }

  async put(orgId: string, blockId: string, data: Buffer): Promise<void> {
    const dir = this.dir(orgId, blockId);
    await mkdir(dir, { recursive: true });
    const tmp = join(dir, `.${blockId}.${randomBytes(6).toString('hex')}.tmp`);
    const fh = await open(tmp, 'w', 0o600);
    try {
      await fh.writeFile(data);
      await fh.sync();
    } catch (err) {
      await fh.close();
      await rm(tmp, { force: true });
      throw err;
    }
    await fh.close();
    await rename(tmp, join(dir, blockId));
    const dh = await open(dir, 'r');
    try {
      await dh.sync();
    } finally {
      await dh.close();
    }
  }

  get(orgId: string, blockId: string): Promise<Buffer | null> {
    return this.getInto(orgId, blockId, (size) => Buffer.allocUnsafe(size));
  }

  async getInto(orgId: string, blockId: string, alloc: (size: number) => Buffer): Promise<Buffer | null> {
    let fh;
    try {
      fh = await open(join(this.dir(orgId, blockId), blockId), 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
    try {
      // The file as it is, whatever size was recorded: a damaged block must reach the client damaged.
      const { size } = await fh.stat();
      const buf = alloc(size);
      let at = 0;
      while (at < size) {
        const { bytesRead } = await fh.read(buf, at, size - at, at);
        if (bytesRead === 0) break; // shrank meanwhile: what there is
        at += bytesRead;
      }
      return at === size ? buf : buf.subarray(0, at);
    } finally {
      await fh.close();
    }
  }

  async delete(orgId: string, blockId: string): Promise<void> {
    await rm(join(this.dir(orgId, blockId), blockId), { force: true });
  }

  async close(): Promise<void> {}
}
