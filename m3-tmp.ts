import { randomBytes } from 'node:crypto';
import { BlockCryptoPool, sealBlock } from '/work/main/src/crypto/index.js';
import { resourceUsage } from 'node:process';
const B = 512 * 1024; const pt = randomBytes(B); const N = 1500;
for (const mode of ['single', '2', 'single', '2']) {
  let pool: BlockCryptoPool | undefined;
  if (mode !== 'single') { pool = new BlockCryptoPool({ size: 2 }); await Promise.all(Array.from({ length: 8 }, () => pool!.encrypt(randomBytes(B)))); }
  const r0 = resourceUsage(); const s = performance.now();
  if (!pool) { for (let i = 0; i < N; i++) sealBlock(pt); }
  else {
    let i = 0;
    await Promise.all(Array.from({ length: 8 }, async () => { while (i++ < N) { const b = Buffer.allocUnsafe(B); b.set(pt); await pool!.encrypt(b); } }));
  }
  const r1 = resourceUsage(); const el = performance.now() - s;
  const cpu = (r1.userCPUTime - r0.userCPUTime + r1.systemCPUTime - r0.systemCPUTime) / 1e3;
  console.log(mode.padEnd(6), Math.round(N * B / 1e3 / el), 'MB/s wall;', 'cpu per block', (cpu / N * 1000).toFixed(0), 'us;', 'cores used', (cpu / el).toFixed(2));
  await pool?.close();
}
