/** Worker thread for BlockCryptoPool: runs sealBlock/openBlock; big results go into the caller's shared `out`, others are moved back. */
import { parentPort } from 'node:worker_threads';
import { openBlock, sealBlock } from './block.js';
import { serializeError, transferListFor, type BlockRequest, type BlockResponse } from './worker-protocol.js';

const port = parentPort;
if (port === null) throw new Error('block-worker must run in a worker thread');

const EMPTY = new Uint8Array(0);

/** Copies a (checked) result into the caller's shared `out` when it fits exactly. */
function intoOut(result: Uint8Array, out: Uint8Array | undefined): boolean {
  if (out === undefined || !(out.buffer instanceof SharedArrayBuffer) || out.byteLength !== result.byteLength) return false;
  out.set(result);
  return true;
}

port.on('message', (req: BlockRequest) => {
  let res: BlockResponse | undefined;
  let crash = false;
  let transfer: ArrayBuffer[] = [];
  try {
    switch (req.op) {
      case 'encrypt': {
        const r = sealBlock(req.plaintext);
        const inOut = intoOut(r.ciphertext, req.out);
        const ciphertext = inOut ? EMPTY : r.ciphertext;
        res = { id: req.id, ok: true, op: 'encrypt', key: r.key, ciphertext, digest: r.digest, ...(inOut && { inOut }) };
        transfer = transferListFor(ciphertext);
        break;
      }
      case 'decrypt': {
        const opened = openBlock(req.key, req.ciphertext, req.digest);
        const inOut = intoOut(opened, req.out);
        const plaintext = inOut ? EMPTY : opened;
        res = { id: req.id, ok: true, op: 'decrypt', plaintext, ...(inOut && { inOut }) };
        transfer = transferListFor(plaintext);
        break;
      }
      case 'crash':
        crash = true; // thrown below, outside the try: dies like a real bug would
        break;
    }
  } catch (err) {
    res = { id: req.id, ok: false, error: serializeError(err) };
  }
  if (crash) throw new Error('block-worker crash requested');
  if (res !== undefined) port.postMessage(res, transfer);
});
