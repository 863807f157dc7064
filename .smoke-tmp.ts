import { randomBytes } from 'node:crypto';
import { startPostgres, startS3 } from './test/helpers/services.js';
import { startTestServer, request } from './test/helpers/server.js';
import { bootstrapOrg, createRealm } from './test/helpers/org.js';
import { newId } from './src/model/ids.js';
import { sodiumReady } from './src/crypto/index.js';
import { ROUTES, routePath } from './src/protocol/schemas.js';
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true';
await sodiumReady();
const [pgc, s3] = await Promise.all([startPostgres(), startS3()]);
const [metadataUrl, blocksUrl] = await Promise.all([pgc.createDatabase(), s3.createBucket()]);
const servers = await Promise.all([0, 1].map(() => startTestServer({ adminToken: 'tok', metadataUrl, blocksUrl })));
const admin = await bootstrapOrg(servers[0]!, "acme");
const realm = await createRealm(servers[0]!, admin);
let bad = 0, multi = 0;
for (let round = 0; round < 30; round++) {
  const blockId = newId();
  const path = routePath(ROUTES.block, { org: 'acme', realm: realm.realmId, block: blockId });
  const cands = Array.from({ length: 6 }, () => randomBytes(200_000));
  const res = await Promise.all(cands.map((raw, i) => request(servers[i % 2]!, 'PUT', path, { device: admin, raw })));
  const winners = res.flatMap((x, i) => (x.status === 201 ? [i] : []));
  if (winners.length !== 1) multi++;
  const got = await request(servers[0]!, 'GET', path, { device: admin });
  if (!got.body.equals(cands[winners[0]!]!)) bad++;
}
console.log({ bad, multi });
for (const s of servers) await s.destroy();
await Promise.all([pgc.stop(), s3.stop()]);
