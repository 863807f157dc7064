/**
 * One-shot worker for Argon2id: libsodium's wasm heap grows to memLimit and never shrinks, so
 * deriving in a short-lived thread gives those 64-256 MiB back to the OS when the thread ends.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { deriveKeyFromPassword, type KdfParams } from './password.js';
import { sodiumReady } from './sodium.js';
import { serializeError } from './worker-protocol.js';

interface KdfJob {
  password: string;
  params: KdfParams;
}

const port = parentPort;
if (port === null) throw new Error('kdf-worker must run in a worker thread');
const job = workerData as KdfJob;
try {
  await sodiumReady();
  const key = deriveKeyFromPassword(job.password, job.params);
  port.postMessage({ ok: true, key });
} catch (err) {
  port.postMessage({ ok: false, error: serializeError(err) });
}
