import { sha256, timingSafeEqualBytes, workspaceKeyDigest } from '../crypto/index.js';
import { IntegrityError } from '../errors.js';
import {
  peekCertificate,
  verifyCertificate,
  type Certificate,
  type Profile,
  type RealmGroupRoleCertificate,
  type RealmRoleCertificate,
} from '../model/certificates.js';
import { ROLE_RANK, type Role } from '../protocol/schemas.js';
import type { CertificateMemory } from './trust-state.js';

/** A value over time: entries oldest first, each valid from its timestamp on. */
type History<T> = Array<{ value: T; from: number }>;

function valueAt<T>(history: History<T> | undefined, timestamp: number, fallback: T): T {
  let v = fallback;
  for (const h of history ?? []) if (h.from <= timestamp) v = h.value;
  return v;
}

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
  /** realm -> user -> direct role history (oldest first), from realm_role certificates. */
  private readonly directRoles = new Map<string, Map<string, History<Role | null>>>();
  /** realm -> group -> role history, from realm_group_role certificates. */
  private readonly groupRoles = new Map<string, Map<string, History<Role | null>>>();
  readonly groups = new Map<string, { groupId: string; name: string; members: Map<string, History<boolean>> }>();
  /** realm -> certified key digests, by index - 1. */
  private readonly realmKeys = new Map<string, Uint8Array[]>();
  private lastIndex = 0;
  private lastTimestamp = 0;
  /** hashes[i]: the hash chain over the first i certificates (hashes[0]: 32 zero bytes). */
  private readonly hashes: Buffer[] = [Buffer.alloc(32)];
  /** SHA-256 of each certificate blob -> its index: a certificate served twice is a replay. */
  private readonly seenBlobs = new Map<string, number>();

  constructor(private readonly rootVerifyKey: Uint8Array) {}

  get index(): number {
    return this.lastIndex;
  }

  /** The hash chain over the first `count` certificates (count <= index). */
  hashAt(count: number): Uint8Array {
    const h = this.hashes[count];
    if (!h) throw new RangeError(`the chain holds ${this.lastIndex} certificates, not ${count}`);
    return h;
  }

  /** Verifies and adds certificates in order; throws IntegrityError on the first that does not verify. */
  add(certs: ReadonlyArray<{ index: number; blob: Uint8Array }>): void {
    for (const c of certs) {
      if (c.index !== this.lastIndex + 1) throw new IntegrityError(`certificate ${c.index} out of order (expected ${this.lastIndex + 1}): a certificate was dropped, reordered or replayed`);
      const digest = sha256(c.blob);
      const replayOf = this.seenBlobs.get(digest.toString('hex'));
      if (replayOf !== undefined) throw new IntegrityError(`certificate ${c.index} is a replay of certificate ${replayOf}`);
      const claimed = peekCertificate(c.blob);
      const cert = verifyCertificate(c.blob, (author) => this.authorKey(author, claimed));
      if (cert.timestamp < this.lastTimestamp) throw new IntegrityError(`certificate ${c.index} goes back in time`);
      this.apply(cert, c.index);
      this.lastIndex = c.index;
      this.lastTimestamp = cert.timestamp;
      this.seenBlobs.set(digest.toString('hex'), c.index);
      this.hashes.push(sha256(Buffer.concat([this.hashes[c.index - 1]!, digest])));
    }
  }

  /**
   * Fetches the certificates after the ones held (`list(since)` asks the server), verifies and adds
   * them, then compares the now complete chain with what this device verified before (`memory`):
   * a server listing fewer certificates than were verified (one dropped, a revocation hidden) or a
   * different prefix (one rewritten, reordered or removed in the middle) is refused. The memory is
   * read before the request: whatever another process records meanwhile may postdate the answer.
   * Returns the new certificates (for the caller's cache).
   */
  async refresh(
    list: (since: number) => Promise<Array<{ index: number; blob: Buffer }>>,
    memory: CertificateMemory | null,
  ): Promise<Array<{ index: number; blob: Buffer }>> {
    const known = memory?.knownCertificates() ?? null;
    const fresh = await list(this.lastIndex);
    this.add(fresh);
    if (known) this.checkExtends(known);
    memory?.rememberCertificates(this.lastIndex, this.hashAt(this.lastIndex));
    return fresh;
  }

  /** Refuses a chain that does not extend `known` (see refresh). */
  checkExtends(known: { count: number; hash: Uint8Array }): void {
    if (this.lastIndex < known.count) {
      throw new IntegrityError(
        `the server lists ${this.lastIndex} certificates but this device already verified ${known.count}: certificates were dropped (rollback of the certificate chain)`,
      );
    }
    if (!timingSafeEqualBytes(this.hashAt(known.count), known.hash)) {
      throw new IntegrityError(
        `the first ${known.count} certificates differ from the ones this device verified before: the server rewrote, reordered or removed certificates`,
      );
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
    if (cert.type === 'realm_role' || cert.type === 'realm_group_role' || cert.type === 'realm_key') return device.verifyKey;
    if (user.profile === 'admin' || (cert.type === 'device' && cert.userId === device.userId)) return device.verifyKey;
    return undefined;
  }

  private apply(cert: Certificate, index: number): void {
    if (cert.type === 'user') {
      if (this.users.has(cert.userId)) throw new IntegrityError(`certificate ${index} recreates user ${cert.userId}`);
      this.users.set(cert.userId, { userId: cert.userId, handle: cert.handle, profile: cert.profile, publicKey: cert.publicKey, revokedAt: null });
    } else if (cert.type === 'realm_role' || cert.type === 'realm_group_role') {
      this.applyRealmGrant(cert, index);
    } else if (cert.type === 'realm_key') {
      const author = this.devices.get(cert.author)!;
      const keys = this.realmKeys.get(cert.realmId) ?? [];
      if (cert.keyIndex !== keys.length + 1) throw new IntegrityError(`certificate ${index}: workspace key ${cert.keyIndex} out of order`);
      if (this.roleAt(cert.realmId, author.userId, cert.timestamp) !== 'owner') throw new IntegrityError(`certificate ${index}: only an owner certifies workspace keys`);
      keys.push(cert.keyDigest);
      this.realmKeys.set(cert.realmId, keys);
    } else if (cert.type === 'group') {
      if (this.groups.has(cert.groupId)) throw new IntegrityError(`certificate ${index} recreates group ${cert.groupId}`);
      this.groups.set(cert.groupId, { groupId: cert.groupId, name: cert.name, members: new Map() });
    } else if (cert.type === 'group_member') {
      const group = this.groups.get(cert.groupId);
      if (!group) throw new IntegrityError(`certificate ${index} changes an unknown group`);
      if (!this.users.has(cert.userId)) throw new IntegrityError(`certificate ${index} adds an unknown user to a group`);
      const history = group.members.get(cert.userId) ?? [];
      history.push({ value: cert.member, from: cert.timestamp });
      group.members.set(cert.userId, history);
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
   * Grants go to a user (direct) or to a group (inherited by its members).
   */
  private applyRealmGrant(cert: RealmRoleCertificate | RealmGroupRoleCertificate, index: number): void {
    const author = this.devices.get(cert.author)!;
    const high = (r: Role | null) => r !== null && ROLE_RANK[r] >= ROLE_RANK.manager;
    const isNew = !this.directRoles.has(cert.realmId) && !this.groupRoles.has(cert.realmId);
    let current: Role | null;
    if (cert.type === 'realm_role') {
      const target = this.users.get(cert.userId);
      if (!target) throw new IntegrityError(`certificate ${index} gives a role to an unknown user`);
      if (target.profile === 'outsider' && high(cert.role)) throw new IntegrityError(`certificate ${index} makes an outsider ${cert.role}`);
      if (isNew && (cert.userId !== author.userId || cert.role !== 'owner')) throw new IntegrityError(`certificate ${index}: a workspace starts with its creator as owner`);
      current = this.roleAt(cert.realmId, cert.userId, cert.timestamp);
    } else {
      if (!this.groups.has(cert.groupId)) throw new IntegrityError(`certificate ${index} gives a role to an unknown group`);
      if (isNew) throw new IntegrityError(`certificate ${index}: a workspace starts with its creator as owner`);
      current = valueAt(this.groupRoles.get(cert.realmId)?.get(cert.groupId), cert.timestamp, null);
    }
    if (!isNew) {
      const authorRole = this.roleAt(cert.realmId, author.userId, cert.timestamp);
      const allowed = authorRole === 'owner' || (authorRole === 'manager' && !high(cert.role) && !high(current));
      if (!allowed) throw new IntegrityError(`certificate ${index}: its author (role ${authorRole ?? 'none'}) may not grant ${cert.role ?? 'removal'}`);
    }
    const table = cert.type === 'realm_role' ? this.directRoles : this.groupRoles;
    const key = cert.type === 'realm_role' ? cert.userId : cert.groupId;
    const byRealm = table.get(cert.realmId) ?? new Map<string, History<Role | null>>();
    const history = byRealm.get(key) ?? [];
    history.push({ value: cert.role, from: cert.timestamp });
    byRealm.set(key, history);
    table.set(cert.realmId, byRealm);
  }

  /**
   * A user's certified role on a realm at a time (null: none, or revoked by then). A direct role set
   * explicitly wins over roles inherited through groups; otherwise the highest group role counts.
   */
  roleAt(realmId: string, userId: string, timestamp: number): Role | null {
    const user = this.users.get(userId);
    if (!user || (user.revokedAt !== null && timestamp >= user.revokedAt)) return null;
    const direct = valueAt(this.directRoles.get(realmId)?.get(userId), timestamp, null);
    if (direct !== null) return direct;
    let best: Role | null = null;
    for (const [groupId, history] of this.groupRoles.get(realmId) ?? []) {
      const role = valueAt(history, timestamp, null);
      if (role === null || !valueAt(this.groups.get(groupId)?.members.get(userId), timestamp, false)) continue;
      if (best === null || ROLE_RANK[role] > ROLE_RANK[best]) best = role;
    }
    return best;
  }

  /** Whether a device could write to a realm at a time: its user was at least contributor then. */
  canWrite(realmId: string, deviceId: string, timestamp: number): boolean {
    const device = this.devices.get(deviceId);
    if (!device) return false;
    const role = this.roleAt(realmId, device.userId, timestamp);
    return role !== null && ROLE_RANK[role] >= ROLE_RANK.contributor;
  }

  /** Refuses a workspace key whose digest no owner certified (a key slipped in by the server). */
  checkRealmKey(realmId: string, keyIndex: number, key: Uint8Array): void {
    const digest = this.realmKeys.get(realmId)?.[keyIndex - 1];
    if (!digest || !timingSafeEqualBytes(digest, workspaceKeyDigest(key))) {
      throw new IntegrityError(`workspace key ${keyIndex} is not the one its owners certified: refusing it`);
    }
  }

  /** Current members of a group (for sealing keys to them). */
  groupMembers(groupId: string): string[] {
    const g = this.groups.get(groupId);
    if (!g) return [];
    const now = Number.MAX_SAFE_INTEGER;
    return [...g.members.entries()].filter(([u, h]) => valueAt(h, now, false) && this.users.get(u)?.revokedAt === null).map(([u]) => u);
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
