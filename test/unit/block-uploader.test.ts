import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import t, { type Test } from 'tap';
import { LocalStore } from '../../src/client/local-store.js';
import type { RemoteWorkspace } from '../../src/client/remote.js';
import { BlockUploader } from '../../src/client/sync/block-uploader.js';
import type { BlockRef } from '../../src/model/manifests.js';

const BLOCK = 100 * 1024; // a "full" block for the uploader (over its small-block size)
const id = (n: number) => n.toString(16).padStart(32, '0');
const refOf = (n: number): BlockRef => ({ id: id(n), offset: n * BLOCK, size: BLOCK, key: new Uint8Array(32), digest: new Uint8Array(32) });

/** A server that holds every upload until told to answer, and a clock the test moves. */
async function setup(t: Test, blocks: number) {
  const store = new LocalStore(join(mkdtempSync(join(tmpdir(), 'coffer-uploader-')), 'ws.sqlite'), Buffer.alloc(32, 9), 1 << 30);
  t.teardown(() => store.close());
  const data = new Map<string, Buffer>();
  for (let i = 0; i < blocks; i++) {
    data.set(id(i), Buffer.alloc(BLOCK, i));
    await store.putDirtyBlock(id(i), data.get(id(i))!);
  }
  const uploaded: string[] = [];
  const held: Array<() => void> = [];
  let hold = true;
  const remote = {
    uploadBlock: async (ref: BlockRef, body: Buffer) => {
      if (!body.equals(data.get(ref.id)!)) throw new Error(`block ${ref.id}: wrong bytes uploaded`);
      if (hold) await new Promise<void>((r) => held.push(r));
      uploaded.push(ref.id);
    },
  } as unknown as RemoteWorkspace;
  const clock = { now: 1_000_000 };
  const uploader = new BlockUploader(store, remote, 8, pino({ level: 'silent' }), () => clock.now);
  const release = async () => {
    hold = false;
    for (const r of held.splice(0)) r();
    await new Promise((r) => setTimeout(r, 20));
  };
  return { store, uploader, uploaded, held, clock, release, data };
}

async function until(what: string, check: () => boolean): Promise<void> {
  const end = Date.now() + 20_000;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

t.test('a slow writer: each sealed block starts uploading at once', async (t) => {
  const { uploader, held, clock, release, uploaded, store, data } = await setup(t, 10);
  for (let i = 0; i < 10; i++) {
    uploader.early(refOf(i), data.get(id(i))!);
    clock.now += 100; // 10 blocks a second
  }
  await until('the uploads to start', () => held.length === 8);
  t.equal(held.length, 8, 'the concurrency limit (8) is in flight right away');
  await release();
  await until('every block', () => uploaded.length === 10);
  t.equal(uploaded.length, 10, 'all ten uploaded');
  t.notOk([...Array(10).keys()].some((i) => store.isDirtyBlock(id(i))), 'and marked clean');
});

t.test('a fast writer: early uploads wait while it writes, then all go', async (t) => {
  const { uploader, held, clock, release, uploaded, store, data } = await setup(t, 100);
  // 100 blocks within one second: past 64 a second the writer counts as fast.
  for (let i = 0; i < 100; i++) {
    uploader.early(refOf(i), data.get(id(i))!);
    clock.now += 5;
  }
  await until('the first uploads', () => held.length === 8);
  await release(); // the first 8 answer; the writer is still fast: nothing more starts
  await new Promise((r) => setTimeout(r, 600)); // two of the uploader's re-checks
  t.equal(uploaded.length, 8, 'no new early upload while the writer is fast');
  t.ok(store.isDirtyBlock(id(99)), 'the rest stays dirty for now');
  clock.now += 2_000; // the writer stopped
  await until('every block', () => uploaded.length === 100);
  t.equal(new Set(uploaded).size, 100, 'every block uploaded once, kept in memory or read back from the store');
  t.notOk([...Array(100).keys()].some((i) => store.isDirtyBlock(id(i))), 'all marked clean');
});
