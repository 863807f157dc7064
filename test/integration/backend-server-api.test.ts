/**
 * The foundation's server API suite (test/integration/server-api.test.ts), unchanged, on the
 * scale-out backends: PostgreSQL + S3 (s3rver) and PostgreSQL + OpenStack Swift (native API).
 * Each run is the suite as a child process whose servers take their stores from
 * COFFER_METADATA_URL / COFFER_BLOCKS_URL (startServer's defaults, like the CLI's); every
 * assertion of the suite must pass.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import t from 'tap';
import { startPostgres, startS3, startSwift } from '../helpers/services.js';

const SUITE = fileURLToPath(new URL('./server-api.test.ts', import.meta.url));
const [pgCluster, s3, swift] = await Promise.all([startPostgres(), startS3(), startSwift()]);
t.teardown(() => Promise.all([pgCluster.stop(), s3.stop(), swift.stop()]).then(() => undefined));

function runSuite(env: NodeJS.ProcessEnv): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', SUITE], {
      env: { ...process.env, ...env, AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (out += c.toString()));
    child.once('exit', (code) => resolve({ code, out }));
  });
}

const backends = [
  { name: 'PostgreSQL + S3', blocks: () => s3.createBucket() },
  { name: 'PostgreSQL + Swift', blocks: () => swift.createContainer() },
];

for (const b of backends) {
  t.test(`server API suite on ${b.name}`, async (t) => {
    const [metadataUrl, blocksUrl] = await Promise.all([pgCluster.createDatabase(), b.blocks()]);
    const started = Date.now();
    const { code, out } = await runSuite({ COFFER_METADATA_URL: metadataUrl, COFFER_BLOCKS_URL: blocksUrl });
    const passed = (out.match(/^\s*ok \d+/gm) ?? []).length;
    const failed = out.match(/^\s*not ok \d+.*$/gm) ?? [];
    t.comment(`${b.name}: ${passed} ok lines, ${failed.length} not ok, ${Date.now() - started} ms`);
    t.same(failed, [], 'no failing assertion');
    t.ok(passed > 100, `the whole suite ran (${passed} ok lines)`);
    if (!t.equal(code, 0, 'the suite exits 0')) t.comment(out.slice(-4000));
    // The suite really ran on these stores: its organizations and blocks are in them.
    const db = new pg.Client({ connectionString: metadataUrl });
    await db.connect();
    try {
      const orgs = Number((await db.query('SELECT count(*) AS n FROM organizations')).rows[0].n);
      const blocks = Number((await db.query('SELECT count(*) AS n FROM blocks')).rows[0].n);
      t.ok(orgs > 0 && blocks > 0, `PostgreSQL holds the suite's data (${orgs} organizations, ${blocks} blocks)`);
    } finally {
      await db.end();
    }
  });
}
