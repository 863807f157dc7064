import { startPostgres, startS3 } from './test/helpers/services.js';
import { openStores } from './src/server/storage.js';
const t0 = Date.now();
const [pgc, s3] = await Promise.all([startPostgres(), startS3()]);
console.log('pg', pgc.startupMs, 's3', s3.startupMs, 'both', Date.now() - t0);
const t1 = Date.now();
const dbUrl = await pgc.createDatabase();
const bucketUrl = await s3.createBucket();
console.log('db+bucket', Date.now() - t1, dbUrl, bucketUrl);
const t2 = Date.now();
const st = await openStores({ metadata: dbUrl, blocks: bucketUrl, dataDir: '/tmp/smoke' });
console.log('open', Date.now() - t2, st.description);
await st.blocks.put('org', 'aa'.repeat(16), Buffer.from('hello'));
console.log((await st.blocks.get('org', 'aa'.repeat(16)))?.toString(), await st.blocks.get('org', 'bb'.repeat(16)));
console.log(await st.metadata.createOrganization('o', Buffer.from('x'), Date.now()), await st.metadata.getOrganization('o'));
await s3.pause();
try { await st.blocks.get('org', 'aa'.repeat(16)); } catch (e) { console.log('s3 down ->', (e as any).code, (e as Error).message); }
await pgc.pause();
const t3 = Date.now();
try { await st.metadata.getOrganization('o'); } catch (e) { console.log('pg down ->', (e as any).code, (e as Error).message, Date.now() - t3); }
await Promise.all([pgc.resume(), s3.resume()]);
console.log(await st.metadata.getOrganization('o').then(o => o?.orgId), (await st.blocks.get('org', 'aa'.repeat(16)))?.toString());
await st.close();
await Promise.all([pgc.stop(), s3.stop()]);
console.log('total', Date.now() - t0);
