import type { Role } from '../../protocol/schemas.js';

/**
 * Metadata storage behind an interface: SQLite (embedded default) today, PostgreSQL for scale-out.
 * Every method is one transaction. Binary values are Buffers.
 */
export interface OrganizationRow {
  orgId: string;
  bootstrapTokenHash: Buffer;
  rootVerifyKey: Buffer | null;
  createdAt: number;
  bootstrappedAt: number | null;
}

export interface DeviceRow {
  orgId: string;
  deviceId: string;
  userId: string;
  verifyKey: Buffer;
  userRevokedAt: number | null;
}

export interface NewUser {
  userId: string;
  publicKey: Buffer;
  profile: string;
  certificate: Buffer;
  timestamp: number;
}

export interface NewDevice {
  deviceId: string;
  userId: string;
  verifyKey: Buffer;
  certificate: Buffer;
  timestamp: number;
}

/** A signed certificate to append; its timestamp must not be older than the last one (else CofferError 'conflict'). */
export interface CertificateBlob {
  blob: Buffer;
  timestamp: number;
}

export interface RealmKeyRow {
  keyIndex: number;
  sealedKey: Buffer;
}

export interface RealmMembership {
  realmId: string;
  role: Role;
  keys: RealmKeyRow[];
  /** A member was revoked since the last key rotation: an owner must rotate the keys. */
  rotationNeeded: boolean;
  /** Some member (through a group) has no copy of the current key yet: an owner or manager seals it to them. */
  keysMissing: boolean;
}

export interface VlobRow {
  vlobId: string;
  version: number;
  keyIndex: number;
  author: string;
  timestamp: number;
  createdAt: number;
  blob: Buffer;
}

export interface VlobWrite {
  orgId: string;
  realmId: string;
  vlobId: string;
  version: number;
  keyIndex: number;
  author: string;
  timestamp: number;
  createdAt: number;
  blob: Buffer;
}

/** Outcome of a vlob write: the new checkpoint, or the version currently stored (conflict). */
export type VlobWriteResult = { ok: true; checkpoint: number } | { ok: false; currentVersion: number | null };

export interface BlockMeta {
  realmId: string;
  size: number;
  digest: Buffer;
}

export interface MetadataStore {
  createOrganization(orgId: string, bootstrapTokenHash: Buffer, now: number): Promise<boolean>;
  getOrganization(orgId: string): Promise<OrganizationRow | null>;
  /** Bootstraps once: false when already bootstrapped (a race loses). */
  bootstrapOrganization(orgId: string, rootVerifyKey: Buffer, user: NewUser, device: NewDevice, now: number): Promise<boolean>;
  getDevice(orgId: string, deviceId: string): Promise<DeviceRow | null>;
  listCertificates(orgId: string, sinceIndex: number): Promise<Array<{ index: number; blob: Buffer }>>;

  /** Adds a user with a first device (certificates appended in order); false when the id exists. */
  createUser(orgId: string, user: NewUser, device: NewDevice): Promise<boolean>;
  getUser(orgId: string, userId: string): Promise<{ userId: string; profile: string; publicKey: Buffer; revokedAt: number | null } | null>;

  /** `certificate` (the creator's owner role certificate) is appended in the same transaction. */
  createRealm(orgId: string, realmId: string, ownerUserId: string, keyIndex: number, sealedKey: Buffer, now: number, certificates: CertificateBlob[]): Promise<boolean>;
  getRole(orgId: string, realmId: string, userId: string): Promise<Role | null>;
  /** Sets (or with null removes) a member's role, storing the workspace keys sealed to them. */
  setRole(orgId: string, realmId: string, userId: string, role: Role | null, keys: RealmKeyRow[], certificate: CertificateBlob): Promise<void>;
  realmExists(orgId: string, realmId: string): Promise<boolean>;
  listRealms(orgId: string, userId: string): Promise<RealmMembership[]>;

  createVlob(write: VlobWrite): Promise<VlobWriteResult>;
  updateVlob(write: VlobWrite): Promise<VlobWriteResult>;
  readVlob(orgId: string, realmId: string, vlobId: string, opts: { version?: number; at?: number }): Promise<VlobRow | null>;
  /** Latest versions (or, with `at`, the versions current at that server time). */
  readVlobs(orgId: string, realmId: string, vlobIds: readonly string[], at?: number): Promise<VlobRow[]>;
  listChanges(orgId: string, realmId: string, since: number): Promise<{ checkpoint: number; changes: Array<{ vlobId: string; version: number; checkpoint: number }> }>;

  getBlockMeta(orgId: string, blockId: string): Promise<BlockMeta | null>;
  /** Records a block; returns false when a block with that id already exists. */
  insertBlockMeta(orgId: string, blockId: string, meta: BlockMeta, author: string, now: number): Promise<boolean>;

  // Block garbage collection (docs/deploy.md): a realm owner's or manager's client releases the
  // blocks no manifest within its history window references; the server deletes released blocks
  // once they have stayed released for the retention period.
  /** The realm's blocks not being deleted, by id, ids after `after` ("" = from the start). */
  listBlocks(orgId: string, realmId: string, after: string, limit: number): Promise<BlockListRow[]>;
  /** Marks blocks released, all or none: every id must be a block of this realm (not being deleted). */
  releaseBlocks(orgId: string, realmId: string, blockIds: readonly string[], deviceId: string, now: number): Promise<ReleaseResult>;
  /** A block uploaded again while released is live again; 'deleting' when the GC has started removing it. */
  reviveBlock(orgId: string, blockId: string): Promise<'live' | 'revived' | 'deleting' | 'absent'>;
  /** Blocks released at or before `releasedBefore` (also those a GC run left half-deleted), oldest release first. */
  listReleasedBlocks(releasedBefore: number, limit: number): Promise<ReleasedBlockRow[]>;
  /** Claims a released block for deletion (true also when already claimed); false when it was revived meanwhile. */
  markBlockDeleting(orgId: string, blockId: string, releasedBefore: number, now: number): Promise<boolean>;
  /** Removes the record of a block claimed for deletion, once its bytes are gone. */
  deleteBlockMeta(orgId: string, blockId: string): Promise<boolean>;

  createInvitation(orgId: string, row: InvitationRow): Promise<void>;
  getInvitation(orgId: string, invitationId: string): Promise<InvitationRow | null>;
  getInvitationByToken(orgId: string, tokenHash: Buffer): Promise<InvitationRow | null>;
  listInvitations(orgId: string, greeterUserId: string): Promise<InvitationRow[]>;
  /** Applies `update` only when every field named in `unset` is still null and the status is one of `statuses`. */
  updateInvitation(orgId: string, invitationId: string, update: InvitationUpdate, guard: { unset: Array<keyof InvitationUpdate>; statuses: InvitationStatus[] }): Promise<boolean>;
  /** Adds a device to an existing user (certificate appended). */
  createDevice(orgId: string, device: NewDevice): Promise<boolean>;
  listMembers(orgId: string, realmId: string): Promise<Array<{ userId: string; role: Role }>>;
  /** Marks the user revoked (its certificate appended), drops its roles and flags those realms for key rotation. */
  revokeUser(orgId: string, userId: string, certificate: Buffer, timestamp: number, now: number): Promise<boolean>;
  /** Adds key `keyIndex` (must be the next one) sealed to each listed member; clears the rotation flag. */
  addRealmKey(orgId: string, realmId: string, keyIndex: number, keys: Array<{ userId: string; sealedKey: Buffer }>, certificate: CertificateBlob): Promise<boolean>;

  createGroup(orgId: string, groupId: string, certificate: CertificateBlob): Promise<boolean>;
  groupExists(orgId: string, groupId: string): Promise<boolean>;
  /** Adds or removes a member; a removal flags the realms shared with the group for key rotation. */
  setGroupMember(orgId: string, groupId: string, userId: string, member: boolean, certificate: CertificateBlob): Promise<void>;
  /** Shares a realm with a group (null: stops), storing keys sealed to the members given. */
  setGroupRole(orgId: string, realmId: string, groupId: string, role: Role | null, keys: MemberKeyRow[], certificate: CertificateBlob): Promise<void>;
  getGroupRole(orgId: string, realmId: string, groupId: string): Promise<Role | null>;
  /** Stores keys sealed to members who lack them (after a group grew); never replaces existing ones. */
  addMemberKeys(orgId: string, realmId: string, keys: MemberKeyRow[]): Promise<void>;

  close(): Promise<void>;
}

export interface BlockListRow {
  blockId: string;
  size: number;
  createdAt: number;
  releasedAt: number | null;
}

export interface ReleasedBlockRow {
  orgId: string;
  realmId: string;
  blockId: string;
  size: number;
  releasedAt: number;
  releasedBy: string;
  deleting: boolean;
}

/** A `blocks` row (same column names in every store) as a ReleasedBlockRow. */
export function releasedBlockFromRow(row: Record<string, unknown>): ReleasedBlockRow {
  return {
    orgId: row.org_id as string,
    realmId: row.realm_id as string,
    blockId: row.block_id as string,
    size: Number(row.size),
    releasedAt: Number(row.released_at),
    releasedBy: row.released_by as string,
    deleting: row.deleting_at !== null,
  };
}

export type ReleaseResult = { ok: true; released: number; alreadyReleased: number } | { ok: false; unknown: string[] };

export interface MemberKeyRow {
  userId: string;
  keyIndex: number;
  sealedKey: Buffer;
}

export type InvitationStatus = 'pending' | 'claiming' | 'done' | 'cancelled';

export interface InvitationRow {
  invitationId: string;
  tokenHash: Buffer;
  type: 'user' | 'device';
  handle: string | null;
  greeterUserId: string;
  greeterDeviceId: string;
  status: InvitationStatus;
  createdAt: number;
  claimerPublicKey: Buffer | null;
  claimerCommitment: Buffer | null;
  claimerNonce: Buffer | null;
  claimerPayload: Buffer | null;
  greeterPublicKey: Buffer | null;
  greeterNonce: Buffer | null;
  greeterPayload: Buffer | null;
}

/** The fields one step of the exchange sets; `expect` guards against replays and races. */
export type InvitationUpdate = Partial<Pick<InvitationRow, 'status' | 'claimerPublicKey' | 'claimerCommitment' | 'claimerNonce' | 'claimerPayload' | 'greeterPublicKey' | 'greeterNonce' | 'greeterPayload'>>;
