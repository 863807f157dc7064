/**
 * The yardstick for close() -> synced: uploads a file's bytes as 512 KiB blocks to the same server,
 * with the same HTTP client (ServerConnection: got over keep-alive, signed requests) and the same
 * number of requests in flight as the sync engine, no crypto and no local store. Prints seconds.
 *
 *   COFFER_PASSWORD=… node --import tsx bench/raw-upload.ts <device-file> <file> [concurrency]
 */
import { open } from 'node:fs/promises';
import { ServerConnection } from '../src/client/connection.js';
import { loadDeviceFile } from '../src/crypto/index.js';
import { newId } from '../src/model/ids.js';

const [deviceFile, file, conc] = process.argv.slice(2);
if (!deviceFile || !file) throw new Error('usage: raw-upload.ts <device-file> <file> [concurrency]');
const BLOCK = 512 * 1024;
const concurrency = Number(conc ?? 8);
const device = await loadDeviceFile(deviceFile, process.env.COFFER_PASSWORD ?? '');
const conn = new ServerConnection(device.serverUrl, device);
const realm = (await conn.listRealms())[0];
if (!realm) throw new Error('no workspace to upload into');
const fh = await open(file, 'r');
const size = (await fh.stat()).size;
let next = 0;
const t0 = performance.now();
const lane = async (): Promise<void> => {
  for (;;) {
    const off = next;
    if (off >= size) return;
    next += BLOCK;
    const buf = Buffer.allocUnsafe(Math.min(BLOCK, size - off));
    await fh.read(buf, 0, buf.length, off);
    await conn.putBlock(realm.realmId, newId(), buf);
  }
};
await Promise.all(Array.from({ length: concurrency }, lane));
const s = (performance.now() - t0) / 1000;
await fh.close();
conn.close();
process.stdout.write(`${s.toFixed(3)}\n`);
