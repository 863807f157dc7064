/** Worker thread for BlockCryptoPool: runs sealBlock/openBlock and moves big results back. */
import { parentPort } from 'node:worker_threads';
import { openBlock, sealBlock } from './block.js';
import { serializeError, transferListFor, type BlockRequest, type BlockResponse } from './worker-protocol.js';

const port = parentPort;
if (port === null) throw new Error('block-worker must run in a worker thread');

port.on('message', (req: BlockRequest) => {
  let res: BlockResponse | undefined;
  let crash = false;
  let transfer: ArrayBuffer[] = [];
  try {
    switch (req.op) {
      case 'encrypt': {
        const r = sealBlock(req.plaintext);
        const spare = transferListFor(req.plaintext).length === 1 ? req.plaintext : undefined;
        res = { id: req.id, ok: true, op: 'encrypt', key: r.key, ciphertext: r.ciphertext, digest: r.digest, ...(spare && { spare }) };
        transfer = spare ? transferListFor(r.ciphertext, spare) : transferListFor(r.ciphertext);
        break;
      }
      case 'decrypt': {
        const plaintext = openBlock(req.key, req.ciphertext, req.digest);
        const spare = transferListFor(req.ciphertext).length === 1 ? req.ciphertext : undefined;
        res = { id: req.id, ok: true, op: 'decrypt', plaintext, ...(spare && { spare }) };
        transfer = spare ? transferListFor(plaintext, spare) : transferListFor(plaintext);
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
