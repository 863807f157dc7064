/** The pooled CSPRNG of the hot path (src/crypto/random.ts). */
import t from 'tap';
import { fillRandom, randomBuffer } from '../../src/crypto/random.js';
import { newId } from '../../src/model/ids.js';

t.test('values never repeat and cover every byte value', async (t) => {
  const seen = new Set<string>();
  const counts = new Array<number>(256).fill(0);
  for (let i = 0; i < 50_000; i++) {
    const b = randomBuffer(16);
    seen.add(b.toString('hex'));
    for (const x of b) counts[x]!++;
  }
  t.equal(seen.size, 50_000, 'no 16-byte value drawn twice');
  // 800,000 bytes: 3,125 expected per value; a CSPRNG stays within ±10 % (≈ 17 sigma).
  t.ok(counts.every((c) => c > 2800 && c < 3450), `byte frequencies are flat (min ${Math.min(...counts)}, max ${Math.max(...counts)})`);
  const ids = new Set(Array.from({ length: 10_000 }, () => newId()));
  t.equal(ids.size, 10_000, 'ids are unique');
  t.ok([...ids].every((id) => /^[0-9a-f]{32}$/.test(id)), 'ids are 32 hex characters');
});

t.test('fillRandom writes exactly its range, small and large', async (t) => {
  for (const [start, length] of [[0, 12], [5, 24], [100, 1025], [3, 5000]] as const) {
    const target = Buffer.alloc(start + length + 7);
    fillRandom(target, start, length);
    t.ok(target.subarray(0, start).every((x) => x === 0), `bytes before ${start} untouched`);
    t.ok(target.subarray(start + length).every((x) => x === 0), `bytes after ${start + length} untouched`);
    t.ok(target.subarray(start, start + length).some((x) => x !== 0), `${length} bytes filled`);
  }
  const a = randomBuffer(32);
  const b = randomBuffer(32);
  t.not(a.toString('hex'), b.toString('hex'), 'two keys differ');
  t.equal(a.buffer.byteLength, 32, 'a key owns its memory (never a slice of a shared pool)');
});
