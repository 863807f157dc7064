import { IntegrityError } from '../errors.js';
import { peekCertificate, verifyCertificate, type Certificate, type Profile } from '../model/certificates.js';

export interface KnownDevice {
  deviceId: string;
  userId: string;
  verifyKey: Uint8Array;
}

export interface KnownUser {
  userId: string;
  handle: string;
  profile: Profile;
  publicKey: Uint8Array;
  /** When a revocation certificate was accepted (null: active). */
  revokedAt: number | null;
}

/**
 * The organization's certificate chain as this client verified it: the first user and device are
 * signed by the root key, every later certificate by a known admin device; timestamps never go back.
 * The server only stores and orders them; nothing it sends is trusted before this check.
 */
export class CertificateChain {
  readonly devices = new Map<string, KnownDevice>();
  readonly users = new Map<string, KnownUser>();
  private lastIndex = 0;
  private lastTimestamp = 0;

  constructor(private readonly rootVerifyKey: Uint8Array) {}

  get index(): number {
    return this.lastIndex;
  }

  /** Verifies and adds certificates in order; throws IntegrityError on the first that does not verify. */
  add(certs: ReadonlyArray<{ index: number; blob: Uint8Array }>): void {
    for (const c of certs) {
      if (c.index !== this.lastIndex + 1) throw new IntegrityError(`certificate ${c.index} out of order (expected ${this.lastIndex + 1})`);
      const claimed = peekCertificate(c.blob);
      const cert = verifyCertificate(c.blob, (author) => this.authorKey(author, claimed));
      if (cert.timestamp < this.lastTimestamp) throw new IntegrityError(`certificate ${c.index} goes back in time`);
      this.apply(cert, c.index);
      this.lastIndex = c.index;
      this.lastTimestamp = cert.timestamp;
    }
  }

  private authorKey(author: string, cert: Certificate): Uint8Array | undefined {
    if (author === 'root') {
      // The root key signs only the organization's first user and device.
      return this.lastIndex < 2 ? this.rootVerifyKey : undefined;
    }
    const device = this.devices.get(author);
    if (!device) return undefined;
    const user = this.users.get(device.userId);
    if (!user || user.revokedAt !== null) return undefined; // a revoked user's devices certify nothing
    // Admins certify anyone; any user may certify a new device of their own.
    if (user.profile === 'admin' || (cert.type === 'device' && cert.userId === device.userId)) return device.verifyKey;
    return undefined;
  }

  private apply(cert: Certificate, index: number): void {
    if (cert.type === 'user') {
      if (this.users.has(cert.userId)) throw new IntegrityError(`certificate ${index} recreates user ${cert.userId}`);
      this.users.set(cert.userId, { userId: cert.userId, handle: cert.handle, profile: cert.profile, publicKey: cert.publicKey, revokedAt: null });
    } else if (cert.type === 'revoked') {
      const user = this.users.get(cert.userId);
      if (!user) throw new IntegrityError(`certificate ${index} revokes an unknown user`);
      if (user.revokedAt !== null) throw new IntegrityError(`certificate ${index} revokes user ${cert.userId} twice`);
      user.revokedAt = cert.timestamp;
    } else {
      if (!this.users.has(cert.userId)) throw new IntegrityError(`certificate ${index} is a device of an unknown user`);
      if (this.devices.has(cert.deviceId)) throw new IntegrityError(`certificate ${index} recreates device ${cert.deviceId}`);
      this.devices.set(cert.deviceId, { deviceId: cert.deviceId, userId: cert.userId, verifyKey: cert.verifyKey });
    }
  }

  verifyKeyOf(deviceId: string): Uint8Array | undefined {
    return this.devices.get(deviceId)?.verifyKey;
  }

  /** The author device's verify key, only if its user was not revoked before `timestamp`. */
  verifyKeyAt(deviceId: string, timestamp: number): Uint8Array | undefined {
    const device = this.devices.get(deviceId);
    if (!device) return undefined;
    const user = this.users.get(device.userId);
    if (user?.revokedAt != null && timestamp >= user.revokedAt) return undefined;
    return device.verifyKey;
  }
}
