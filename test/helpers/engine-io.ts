/** Whole-file reads and writes through the workspace engine's handle API (no mount). */
import { constants as fsc } from 'node:fs';
import type { WorkspaceEngine } from '../../src/client/workspace/engine.js';

/** Creates `path` (or truncates it if it exists) and writes `data` in `chunk`-sized writes. */
export async function writeEngineFile(e: WorkspaceEngine, path: string, data: Buffer, chunk = 128 * 1024): Promise<void> {
  const exists = await e.stat(path).then(
    () => true,
    () => false,
  );
  const fh = exists ? await e.open(path, { flags: fsc.O_RDWR }) : await e.create(path, 0o644, { flags: fsc.O_RDWR });
  if (exists) await e.ftruncate(fh, 0);
  for (let off = 0; off < data.length; off += chunk) {
    const piece = data.subarray(off, off + chunk);
    await e.write(fh, Buffer.from(piece), piece.length, off);
  }
  await e.flush(fh);
  await e.release(fh);
}

export async function readEngineFile(e: WorkspaceEngine, path: string): Promise<Buffer> {
  const st = await e.stat(path);
  const fh = await e.open(path, { flags: fsc.O_RDONLY });
  const out = Buffer.alloc(st.size);
  let off = 0;
  while (off < st.size) {
    const n = await e.read(fh, out.subarray(off), Math.min(128 * 1024, st.size - off), off);
    if (n === 0) break;
    off += n;
  }
  await e.release(fh);
  return out.subarray(0, off);
}
