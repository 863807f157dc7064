import { randomBytes } from 'node:crypto';
import { generateBoxKeyPair, generateSigningKeyPair, saveDeviceFile, sodiumReady, type DeviceKeys } from '../crypto/index.js';
import { signCertificate } from '../model/certificates.js';
import { newId } from '../model/ids.js';
import { ServerConnection } from './connection.js';

export interface BootstrapOptions {
  serverUrl: string;
  orgId: string;
  bootstrapToken: string;
  handle: string;
  deviceLabel: string;
  password: string;
  deviceFile: string;
}

const b64 = (b: Uint8Array) => Buffer.from(b).toString('base64');

/**
 * Bootstraps an organization: a fresh root key signs the first (admin) user and its device; the
 * root signing key is then thrown away (only its public half stays, in every device file, as the
 * anchor of the certificate chain). Writes the device file protected by `password`.
 */
export async function bootstrapOrganization(opts: BootstrapOptions): Promise<DeviceKeys> {
  await sodiumReady();
  const root = generateSigningKeyPair();
  const userBox = generateBoxKeyPair();
  const device = generateSigningKeyPair();
  const userId = newId();
  const deviceId = newId();
  const timestamp = Date.now();
  const userCertificate = signCertificate(
    { type: 'user', userId, handle: opts.handle, publicKey: userBox.publicKey, profile: 'admin', timestamp, author: 'root' },
    root.secretKey,
  );
  const deviceCertificate = signCertificate(
    { type: 'device', deviceId, userId, label: opts.deviceLabel, verifyKey: device.publicKey, timestamp, author: 'root' },
    root.secretKey,
  );
  const conn = new ServerConnection(opts.serverUrl, null);
  try {
    await conn.bootstrap(opts.orgId, {
      token: opts.bootstrapToken,
      rootVerifyKey: b64(root.publicKey),
      userCertificate: b64(userCertificate),
      deviceCertificate: b64(deviceCertificate),
    });
  } finally {
    conn.close();
  }
  root.secretKey.fill(0);
  const keys: DeviceKeys = {
    orgId: opts.orgId,
    deviceId,
    userId,
    userHandle: opts.handle,
    deviceLabel: opts.deviceLabel,
    serverUrl: opts.serverUrl,
    profile: 'admin',
    signingKey: device.secretKey,
    verifyKey: device.publicKey,
    userSecretKey: userBox.secretKey,
    userPublicKey: userBox.publicKey,
    localKey: randomBytes(32),
    rootVerifyKey: root.publicKey,
  };
  await saveDeviceFile(opts.deviceFile, keys, opts.password);
  return keys;
}
