/** Worker thread for BlockCryptoPool: runs sealBlock/openBlock; big results go into the caller's shared `out`, others are moved back. */
import { parentPort } from 'node:worker_threads';
import { BLOCK_OVERHEAD, openBlock, openBlockInto, sealBlock, sealBlockInto } from './block.js';
import { serializeError, transferListFor, type BlockRequest, type BlockResponse } from './worker-protocol.js';

const port = parentPort;
if (port === null) throw new Error('block-worker must run in a worker thread');

const EMPTY = new Uint8Array(0);

/** The caller's shared `out` when it can take the result (`size` bytes): written there, never moved back. */
function sharedOut(out: Uint8Array | undefined, size: number): Uint8Array | undefined {
  return out !== undefined && out.buffer instanceof SharedArrayBuffer && out.byteLength === size ? out : undefined;
}

port.on('message', (req: BlockRequest) => {
  let res: BlockResponse | undefined;
  let crash = false;
  let transfer: ArrayBuffer[] = [];
  try {
    switch (req.op) {
      case 'encrypt': {
        const out = sharedOut(req.out, req.plaintext.byteLength + BLOCK_OVERHEAD);
        if (out) {
          const r = sealBlockInto(req.plaintext, out);
          res = { id: req.id, ok: true, op: 'encrypt', key: r.key, ciphertext: EMPTY, digest: r.digest, inOut: true };
        } else {
          const r = sealBlock(req.plaintext);
          res = { id: req.id, ok: true, op: 'encrypt', key: r.key, ciphertext: r.ciphertext, digest: r.digest };
          transfer = transferListFor(r.ciphertext);
        }
        break;
      }
      case 'decrypt': {
        const out = sharedOut(req.out, req.ciphertext.byteLength - BLOCK_OVERHEAD);
        if (out) {
          openBlockInto(req.key, req.ciphertext, req.digest, out);
          res = { id: req.id, ok: true, op: 'decrypt', plaintext: EMPTY, inOut: true };
        } else {
          const plaintext = openBlock(req.key, req.ciphertext, req.digest);
          res = { id: req.id, ok: true, op: 'decrypt', plaintext };
          transfer = transferListFor(plaintext);
        }
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
