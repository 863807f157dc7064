// Waits until a Coffer local store has nothing left to upload and prints that moment (seconds since
// the epoch, like `date +%s.%N`). Started before the write it times: it arms itself when the file
// named by its second argument appears (touched right after close()), then polls every 10 ms.
//   node bench/wait-synced.mjs <store.sqlite> <arm-file>
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
const require = createRequire(new URL('../package.json', import.meta.url));
const Database = require('better-sqlite3');
const [file, arm] = process.argv.slice(2);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
while (!existsSync(arm)) await sleep(5);
const db = new Database(file, { readonly: true, fileMustExist: true });
const pending = db.prepare('SELECT (SELECT COUNT(*) FROM manifests WHERE need_sync = 1) + (SELECT COUNT(*) FROM blocks WHERE dirty = 1) AS n');
const deadline = Date.now() + 1800_000;
for (;;) {
  let n;
  try {
    n = pending.get().n;
  } catch {
    n = 1; // busy: try again
  }
  if (n === 0) break;
  if (Date.now() > deadline) process.exit(1);
  await sleep(10);
}
process.stdout.write(`${(Date.now() / 1000).toFixed(3)}\n`);
