/**
 * A real client against a real test server: bootstrap an organization through the client library,
 * create a workspace, open sessions on it (each with its own local data directory when asked).
 */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { ServerConnection } from '../../src/client/connection.js';
import { bootstrapOrganization } from '../../src/client/organization.js';
import { WorkspaceSession } from '../../src/client/session.js';
import { createWorkspace } from '../../src/client/workspaces.js';
import type { DeviceKeys } from '../../src/crypto/index.js';
import type { Test } from 'tap';
import { startTestServer, type TestServer } from './server.js';

// Sessions and mounts started by tests (which inherit this environment) run the crypto pool with its
// ownership checks: recycled memory poisoned, violations thrown (see src/crypto/pool.ts, rule 4).
process.env.COFFER_POOL_CHECKS ??= '1';
// And the local store validates the manifests it saves, which it skips otherwise (model/manifests.ts).
process.env.COFFER_MANIFEST_CHECKS ??= '1';

export interface TestOrg {
  device: DeviceKeys;
  deviceFile: string;
  password: string;
}

export async function bootstrapClientOrg(server: TestServer, orgId: string, dir: string): Promise<TestOrg> {
  const conn = new ServerConnection(server.url, null);
  const { bootstrapToken } = await conn.createOrganization(orgId, server.adminToken);
  conn.close();
  const password = 'correct horse battery';
  const deviceFile = join(dir, `${orgId}.device`);
  const device = await bootstrapOrganization({ serverUrl: server.url, orgId, bootstrapToken, handle: 'alice@example.org', deviceLabel: 'test', password, deviceFile });
  return { device, deviceFile, password };
}

export async function newWorkspace(device: DeviceKeys, name: string): Promise<string> {
  const conn = new ServerConnection(device.serverUrl, device);
  try {
    return await createWorkspace(device, conn, name);
  } finally {
    conn.close();
  }
}

export async function openSession(
  device: DeviceKeys,
  workspace: string,
  dataRoot?: string,
  opts: { readOnly?: boolean; debounceMs?: number; pollMs?: number } = {},
): Promise<WorkspaceSession> {
  return WorkspaceSession.open({
    device,
    workspace,
    dataRoot: dataRoot ?? (await mkdtemp(join(tmpdir(), 'coffer-client-'))),
    cacheBytes: 256 * 1024 * 1024,
    readOnly: opts.readOnly ?? false,
    logger: pino({ level: process.env.COFFER_TEST_LOG ?? 'silent' }),
    debounceMs: opts.debounceMs ?? 50,
    pollMs: opts.pollMs ?? 200,
  });
}

/** A fresh server with organization "acme" and workspace "Docs", and a session on it (closed at teardown). */
export async function sessionOnFreshServer(t: Test): Promise<WorkspaceSession> {
  const server = await startTestServer({ teardown: (fn) => t.teardown(fn) });
  const org = await bootstrapClientOrg(server, 'acme', await mkdtemp(join(tmpdir(), 'coffer-org-')));
  await newWorkspace(org.device, 'Docs');
  const s = await openSession(org.device, 'Docs');
  t.teardown(() => s.close());
  return s;
}
