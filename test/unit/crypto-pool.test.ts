import t from 'tap';
import { randomBytes } from 'node:crypto';
import { BadInputError, CofferError, IntegrityError } from '../../src/errors.js';
import { BlockCryptoPool, openBlock, sealBlock, sha256, type EncryptedBlock } from '../../src/crypto/index.js';

const BLOCK = 512 * 1024;

t.test('results interoperate with single-thread sealBlock/openBlock', async (t) => {
  const pool = new BlockCryptoPool({ size: 2 });
  t.teardown(() => pool.close());
  t.equal(pool.size, 2);
  const pt = randomBytes(BLOCK);
  const expected = Buffer.from(pt);
  const enc = await pool.encrypt(pt);
  t.ok(Buffer.isBuffer(enc.key) && Buffer.isBuffer(enc.ciphertext) && Buffer.isBuffer(enc.digest), 'Buffers come back');
  t.equal(enc.key.length, 32);
  t.equal(enc.ciphertext.length, BLOCK + 28);
  t.ok(enc.digest.equals(sha256(enc.ciphertext)), 'digest = sha256(ciphertext)');
  t.ok(openBlock(enc.key, enc.ciphertext, enc.digest).equals(expected), 'pool encrypt -> single-thread openBlock');
  const single = sealBlock(expected);
  const dec = await pool.decrypt(single.key, Buffer.from(single.ciphertext), single.digest);
  t.ok(Buffer.isBuffer(dec) && dec.equals(expected), 'single-thread sealBlock -> pool decrypt');
  const slabKey = Buffer.from(single.key.toString('hex'), 'hex'); // small Buffer: a view into Node's shared pool
  const slabDigest = Buffer.from(single.digest.toString('hex'), 'hex');
  t.ok((await pool.decrypt(slabKey, Buffer.from(single.ciphertext), slabDigest)).equals(expected), 'key/digest given as pool-slab views');
  t.equal(slabKey.toString('hex'), single.key.toString('hex'), 'caller key untouched');
  const empty = await pool.encrypt(new Uint8Array(0));
  t.equal((await pool.decrypt(empty.key, empty.ciphertext, empty.digest)).length, 0, 'empty block');
});

t.test('many concurrent jobs (64 blocks of 512 KiB) are all correct', async (t) => {
  const pool = new BlockCryptoPool(); // default size
  t.teardown(() => pool.close());
  const plains = Array.from({ length: 64 }, () => randomBytes(BLOCK));
  const copies = plains.map((p) => Buffer.from(p));
  const encs: EncryptedBlock[] = await Promise.all(plains.map((p) => pool.encrypt(p)));
  t.equal(new Set(encs.map((e) => e.key.toString('hex'))).size, 64, '64 distinct keys');
  let singleOk = 0;
  for (let i = 0; i < 64; i++) if (openBlock(encs[i]!.key, encs[i]!.ciphertext, encs[i]!.digest).equals(copies[i]!)) singleOk++;
  t.equal(singleOk, 64, 'every block opens single-threaded to its own plaintext');
  const decs = await Promise.all(encs.map((e) => pool.decrypt(e.key, Buffer.from(e.ciphertext), e.digest)));
  t.equal(decs.filter((d, i) => d.equals(copies[i]!)).length, 64, 'every block decrypts in the pool');
  // mixed, interleaved encrypt and decrypt
  const mixed = await Promise.all(
    copies.slice(0, 32).map(async (p, i) => (i % 2 === 0 ? (await pool.encrypt(Buffer.from(p))).ciphertext.length : (await pool.decrypt(encs[i]!.key, encs[i]!.ciphertext, encs[i]!.digest)).length)),
  );
  t.same(mixed, copies.slice(0, 32).map((_, i) => (i % 2 === 0 ? BLOCK + 28 : BLOCK)));
});

t.test('errors keep their type across the thread boundary', async (t) => {
  const pool = new BlockCryptoPool({ size: 1 });
  t.teardown(() => pool.close());
  const b = sealBlock(randomBytes(4096));
  await t.rejects(pool.decrypt(b.key, Buffer.from(b.ciphertext), randomBytes(32)), { constructor: IntegrityError, code: 'integrity', message: /digest/ }, 'digest mismatch');
  const bad = Buffer.from(b.ciphertext);
  bad[100] = (bad[100] ?? 0) ^ 1;
  await t.rejects(pool.decrypt(b.key, bad, sha256(bad)), { constructor: IntegrityError, code: 'integrity' }, 'tampered with recomputed digest');
  await t.rejects(pool.decrypt(randomBytes(32), Buffer.from(b.ciphertext), b.digest), IntegrityError, 'wrong key');
  const err = await pool.decrypt(b.key, b.ciphertext.subarray(0, 10), sha256(b.ciphertext.subarray(0, 10))).catch((e: unknown) => e);
  t.ok(err instanceof IntegrityError, 'too-short ciphertext is an IntegrityError instance');
  t.ok((await pool.decrypt(b.key, b.ciphertext, b.digest)).length === 4096, 'pool still works after errors');
});

t.test('transfer semantics: whole buffers are moved, slab views are copied and left intact', async (t) => {
  const pool = new BlockCryptoPool({ size: 1 });
  t.teardown(() => pool.close());
  const big = randomBytes(BLOCK);
  const copy = Buffer.from(big);
  const enc = pool.encrypt(big);
  t.equal(big.byteLength, 0, 'a whole-buffer plaintext is detached (moved, not copied)');
  t.ok(openBlock((await enc).key, (await enc).ciphertext, (await enc).digest).equals(copy));

  const neighbour = Buffer.from('neighbour-in-the-same-slab'); // small Buffers share Node's 8 KiB pool
  const small = Buffer.from('small plaintext');
  t.not(small.byteLength, small.buffer.byteLength, 'precondition: a view into a shared slab');
  const e2 = await pool.encrypt(small);
  t.equal(small.toString(), 'small plaintext', 'a slab view is copied, not detached');
  t.equal(neighbour.toString(), 'neighbour-in-the-same-slab', 'neighbours untouched');
  t.equal(openBlock(e2.key, e2.ciphertext, e2.digest).toString(), 'small plaintext');

  const backing = randomBytes(BLOCK + 100);
  const view = backing.subarray(50, 50 + BLOCK);
  const viewCopy = Buffer.from(view);
  const e3 = await pool.encrypt(view);
  t.equal(backing.byteLength, BLOCK + 100, 'partial view: backing buffer not detached');
  t.ok(openBlock(e3.key, e3.ciphertext, e3.digest).equals(viewCopy));

  const ctCopy = Buffer.from(e3.ciphertext);
  const dec = await pool.decrypt(e3.key, e3.ciphertext, e3.digest);
  t.equal(e3.ciphertext.byteLength, 0, 'ciphertext moved on decrypt');
  t.ok(dec.equals(viewCopy));
  t.ok(openBlock(e3.key, ctCopy, e3.digest).equals(viewCopy), 'the key and digest were not consumed');
});

t.test('a crashed worker rejects its jobs with CofferError(internal) and is replaced', async (t) => {
  const pool = new BlockCryptoPool({ size: 2 });
  t.teardown(() => pool.close());
  await Promise.all([pool.encrypt(randomBytes(16)), pool.encrypt(randomBytes(16))]); // workers up
  const before = pool.workerThreadIdsForTest();
  // Queue work on worker 0 behind the crash request: its in-flight jobs must fail, not hang.
  pool.crashWorkerForTest(0);
  const jobs = Array.from({ length: 16 }, () => pool.encrypt(randomBytes(BLOCK)).then(() => 'ok', (e: unknown) => e));
  const results = await Promise.all(jobs);
  const failures = results.filter((r) => r !== 'ok');
  t.ok(failures.length >= 1, `jobs in flight on the crashed worker failed (${failures.length})`);
  t.ok(failures.every((e) => e instanceof CofferError && e.code === 'internal' && /crashed/.test(e.message)), 'failures are CofferError(internal)');
  t.ok(results.length - failures.length >= 1, 'other jobs completed');
  // The pool heals: all later jobs succeed.
  const later = await Promise.all(Array.from({ length: 8 }, () => pool.encrypt(randomBytes(1024))));
  t.equal(later.length, 8, 'later jobs succeed');
  const after = pool.workerThreadIdsForTest();
  t.equal(after.length, 2, 'still two workers');
  t.not(after[0], before[0], 'crashed worker replaced by a new thread');
  t.equal(after[1], before[1], 'the healthy worker kept');
});

t.test('close() drains then ends the workers; later calls are refused', async (t) => {
  const pool = new BlockCryptoPool({ size: 2 });
  const ids = pool.workerThreadIdsForTest();
  t.equal(ids.length, 2);
  const inflight = Array.from({ length: 6 }, () => pool.encrypt(randomBytes(BLOCK)));
  const closing = pool.close();
  t.equal((await Promise.all(inflight)).length, 6, 'jobs submitted before close() complete');
  await closing;
  t.same(pool.workerThreadIdsForTest(), [-1, -1], 'worker threads have exited (threadId -1)');
  await t.rejects(pool.encrypt(randomBytes(10)), { code: 'internal', message: /closed/ }, 'encrypt after close');
  await t.rejects(pool.decrypt(randomBytes(32), randomBytes(64), randomBytes(32)), { code: 'internal' }, 'decrypt after close');
  await pool.close(); // idempotent
  t.pass('second close() resolves');
});

t.test('size validation', async (t) => {
  t.throws(() => new BlockCryptoPool({ size: 0 }), BadInputError);
  t.throws(() => new BlockCryptoPool({ size: 1.5 }), BadInputError);
  const p = new BlockCryptoPool({ size: 3 });
  t.equal(p.size, 3);
  t.equal(p.workerThreadIdsForTest().length, 3);
  await p.close();
});

t.test('shared-memory buffers: one owner at a time, and every broken rule is loud', async (t) => {
  const pool = new BlockCryptoPool({ size: 1, checks: true });
  t.teardown(() => pool.close());
  const b = pool.buffer(BLOCK, true);
  t.ok(b.buffer instanceof SharedArrayBuffer && pool.owns(b), 'a block buffer is shared memory, owned by its holder');
  b.fill(7);
  const enc = await pool.encrypt(b);
  t.equal(b.length, BLOCK, 'a lent plaintext is neither moved nor copied');
  t.ok(enc.ciphertext.buffer instanceof SharedArrayBuffer && pool.owns(enc.ciphertext), 'the ciphertext comes back in pool memory');
  t.ok(openBlock(enc.key, enc.ciphertext, enc.digest).equals(Buffer.alloc(BLOCK, 7)));

  pool.giveBack(b);
  t.notOk(pool.owns(b), 'given back: the former holder may not use it');
  t.throws(() => pool.giveBack(b), /given back twice/, 'a second give-back throws');
  const c = pool.buffer(BLOCK, false);
  t.equal(c.buffer, b.buffer, 'the memory is reused for the next block');
  t.ok(c.every((x) => x === 0xdb), 'recycled memory is poisoned: a late reader sees the poison');
  t.throws(() => pool.giveBack(b), /former owner/, 'the former owner cannot give back the new owner\'s buffer');
  t.ok(pool.owns(c), 'and the new owner keeps it');
  pool.giveBack(c);
  c[12345] = 1; // a late write
  t.throws(() => pool.buffer(BLOCK, false), /written after it was given back/, 'a write after give-back is caught when the memory is handed out again');

  const dec = await pool.decrypt(enc.key, enc.ciphertext, enc.digest);
  t.ok(dec.equals(Buffer.alloc(BLOCK, 7)) && pool.owns(dec), 'decrypt answers in pool memory');
  t.notOk(pool.owns(enc.ciphertext), 'decrypt took the ciphertext back');

  const lent = pool.buffer(BLOCK, true);
  const job = pool.encrypt(lent);
  lent[0] = 1; // written while the worker reads it
  await t.rejects(job, /changed before it answered/, 'a lent plaintext written during encrypt() is caught');
  t.equal(pool.violations, 4);
});

t.test('without checks a double give-back is still refused: never two owners', async (t) => {
  const pool = new BlockCryptoPool({ size: 1, checks: false });
  t.teardown(() => pool.close());
  const warnings: string[] = [];
  const onWarning = (w: Error) => warnings.push(w.message);
  process.on('warning', onWarning);
  t.teardown(() => process.off('warning', onWarning));
  const b = pool.buffer(BLOCK, false);
  pool.giveBack(b);
  pool.giveBack(b);
  const x = pool.buffer(BLOCK, false);
  const y = pool.buffer(BLOCK, false);
  t.not(x.buffer, y.buffer, 'two hand-outs, two different memories');
  t.equal(pool.violations, 1);
  await new Promise((resolve) => setImmediate(resolve));
  t.match(warnings, [/given back twice/], 'reported as a process warning');
});
