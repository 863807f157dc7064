/** Enrolment of users and devices through the real invitation flow (both sides run here), and a polling wait. */
import { join } from 'node:path';
import { ServerConnection } from '../../src/client/connection.js';
import { claim, greet } from '../../src/client/invitations.js';
import type { DeviceKeys } from '../../src/crypto/index.js';
import { sh, type Environment } from './mount.js';

/** A user or device invitation, greeted and claimed; the caller compares the codes and finishes both sides. */
export async function enroll(envx: Environment, greeter: DeviceKeys, type: 'user' | 'device', handle: string | undefined, name: string, serverUrl = envx.server.url) {
  const conn = new ServerConnection(greeter.serverUrl, greeter);
  try {
    const inv = await conn.createInvitation(type, handle);
    const [g, c] = await Promise.all([greet(greeter, conn, inv.invitationId, 30_000), claim(serverUrl, greeter.orgId, inv.token, 30_000)]);
    return { g, c, conn, deviceFile: join(envx.root, `${name}.device`) };
  } catch (err) {
    conn.close();
    throw err;
  }
}

/** Waits until `cmd` prints `expected` (remote changes arrive asynchronously). */
export async function eventually(cmd: string, expected: string, timeoutMs: number): Promise<{ ok: boolean; ms: number; last: string }> {
  const start = Date.now();
  let last = '';
  while (Date.now() - start < timeoutMs) {
    last = (await sh(cmd)).stdout.trim();
    if (last === expected) return { ok: true, ms: Date.now() - start, last };
    await new Promise((r) => setTimeout(r, 100));
  }
  return { ok: false, ms: Date.now() - start, last };
}

/**
 * Another device of the greeter's user (bootstrap device by default), enrolled through the real
 * invitation flow, with its own device file, password and COFFER_DATA_DIR; its `coffer()` runs the
 * CLI as that device.
 */
export async function enrollDevice(envx: Environment, name: string, password = `${name} password`, greeter = envx.org.device): Promise<Environment & { deviceId: string }> {
  const { g, c, conn } = await enroll(envx, greeter, 'device', undefined, name);
  const deviceFile = join(envx.root, `${name}.device`);
  try {
    if (g.sas !== c.sas) throw new Error(`enrolment of ${name}: the two codes differ (${g.sas} / ${c.sas})`);
    const [keys] = await Promise.all([c.finish({ password, deviceFile, label: name }), g.finish()]);
    const env: NodeJS.ProcessEnv = { ...envx.env, COFFER_DEVICE_FILE: deviceFile, COFFER_PASSWORD: password, COFFER_DATA_DIR: join(envx.root, `data-${name}`) };
    return { ...envx, env, coffer: (args, extraEnv = {}) => envx.coffer(args, { ...env, ...extraEnv }), deviceId: keys.deviceId };
  } finally {
    conn.close();
  }
}
