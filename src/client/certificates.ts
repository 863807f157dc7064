import { IntegrityError } from '../errors.js';
import { peekCertificate, verifyCertificate, type Certificate, type Profile, type RealmRoleCertificate } from '../model/certificates.js';
import { ROLE_RANK, type Role } from '../protocol/schemas.js';

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
  /** realm -> user -> role history (oldest first), from realm_role certificates. */
  private readonly realmRoles = new Map<string, Map<string, Array<{ role: Role | null; from: number }>>>();
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
    // Admins certify anyone; any user may certify a new device of their own; realm roles are checked in apply().
    if (cert.type === 'realm_role') return device.verifyKey;
    if (user.profile === 'admin' || (cert.type === 'device' && cert.userId === device.userId)) return device.verifyKey;
    return undefined;
  }

  private apply(cert: Certificate, index: number): void {
    if (cert.type === 'user') {
      if (this.users.has(cert.userId)) throw new IntegrityError(`certificate ${index} recreates user ${cert.userId}`);
      this.users.set(cert.userId, { userId: cert.userId, handle: cert.handle, profile: cert.profile, publicKey: cert.publicKey, revokedAt: null });
    } else if (cert.type === 'realm_role') {
      this.applyRealmRole(cert, index);
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

  /**
   * Psono's read / write / grant mapped onto roles: an owner grants anything, a manager grants reader or
   * contributor to non-managers; the first certificate of a realm is its creator making itself owner.
   */
  private applyRealmRole(cert: RealmRoleCertificate, index: number): void {
    const author = this.devices.get(cert.author)!;
    const roles = this.realmRoles.get(cert.realmId) ?? new Map<string, Array<{ role: Role | null; from: number }>>();
    const target = this.users.get(cert.userId);
    if (!target) throw new IntegrityError(`certificate ${index} gives a role to an unknown user`);
    if (target.profile === 'outsider' && (cert.role === 'manager' || cert.role === 'owner')) {
      throw new IntegrityError(`certificate ${index} makes an outsider ${cert.role}`);
    }
    if (roles.size === 0) {
      if (cert.userId !== author.userId || cert.role !== 'owner') throw new IntegrityError(`certificate ${index}: a workspace starts with its creator as owner`);
    } else {
      const authorRole = this.roleAt(cert.realmId, author.userId, cert.timestamp);
      const current = this.roleAt(cert.realmId, cert.userId, cert.timestamp);
      const high = (r: Role | null) => r !== null && ROLE_RANK[r] >= ROLE_RANK.manager;
      const allowed = authorRole === 'owner' || (authorRole === 'manager' && !high(cert.role) && !high(current));
      if (!allowed) throw new IntegrityError(`certificate ${index}: its author (role ${authorRole ?? 'none'}) may not grant ${cert.role ?? 'removal'}`);
    }
    const history = roles.get(cert.userId) ?? [];
    history.push({ role: cert.role, from: cert.timestamp });
    roles.set(cert.userId, history);
    this.realmRoles.set(cert.realmId, roles);
  }

  /** A user's certified role on a realm at a time (null: none, or revoked by then). */
  roleAt(realmId: string, userId: string, timestamp: number): Role | null {
    const user = this.users.get(userId);
    if (!user || (user.revokedAt !== null && timestamp >= user.revokedAt)) return null;
    const history = this.realmRoles.get(realmId)?.get(userId) ?? [];
    let role: Role | null = null;
    for (const h of history) if (h.from <= timestamp) role = h.role;
    return role;
  }

  /** Whether a device could write to a realm at a time: its user was at least contributor then. */
  canWrite(realmId: string, deviceId: string, timestamp: number): boolean {
    const device = this.devices.get(deviceId);
    if (!device) return false;
    const role = this.roleAt(realmId, device.userId, timestamp);
    return role !== null && ROLE_RANK[role] >= ROLE_RANK.contributor;
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
