/**
 * Worker thread of WalCheckpointer (wal-checkpointer.ts): its own connection to the local store's
 * database, copying committed WAL pages into the database file (PASSIVE: never waits for, nor
 * blocks, the main connection's readers and writers). Often while there is work, rarely when idle.
 */
import Database from 'better-sqlite3';
import { parentPort, workerData } from 'node:worker_threads';
import type { CheckpointerConfig, CheckpointerMessage } from './wal-checkpointer.js';

const config = workerData as CheckpointerConfig;
const port = parentPort!;
const db = new Database(config.file, { fileMustExist: true });
db.pragma('busy_timeout = 1000');
let delay = config.minDelayMs;
let timer: NodeJS.Timeout | null = null;
/** The last round's answer: a WAL fully copied keeps answering the same until the next write resets it. */
let last = { log: 0, checkpointed: 0 };

function round(): void {
  timer = null;
  try {
    // [{ busy, log, checkpointed }]: frames in the WAL, and how many of them are now in the database.
    const [r] = db.pragma('wal_checkpoint(PASSIVE)') as Array<{ busy: number; log: number; checkpointed: number }>;
    const copied = r !== undefined && r.checkpointed > 0 && (r.log !== last.log || r.checkpointed !== last.checkpointed);
    if (r) last = { log: r.log, checkpointed: r.checkpointed };
    delay = copied ? config.minDelayMs : Math.min(config.maxDelayMs, delay * 2);
    if (copied) port.postMessage({ kind: 'checkpointed' } satisfies CheckpointerMessage);
  } catch (err) {
    // SQLITE_BUSY and the like: the next round tries again.
    delay = config.maxDelayMs;
    port.postMessage({ kind: 'error', message: (err as Error).message } satisfies CheckpointerMessage);
  }
  timer = setTimeout(round, delay);
}

port.on('message', (m: unknown) => {
  if (m !== 'close') return;
  if (timer) clearTimeout(timer);
  db.close(); // the last connection to close also checkpoints and removes the WAL
  port.close();
});

timer = setTimeout(round, delay);
