import { z } from 'zod';
import { IdSchema } from '../model/ids.js';
import { ErrorBodySchema } from './errors.js';

/** Request and response bodies shared by client and server; every body crossing the wire is parsed with these. */
export const API_PREFIX = '/v1';
export const OrgIdSchema = z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'organization id: 1-64 of A-Z a-z 0-9 _ -');
const Base64 = z.string().max(12 * 1024 * 1024).regex(/^[A-Za-z0-9+/]*={0,2}$/, 'must be base64');
const Timestamp = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);
const Version = z.number().int().min(1).max(2 ** 31);
const KeyIndex = z.number().int().min(1).max(2 ** 31);
export const ROLES = ['reader', 'contributor', 'manager', 'owner'] as const;
export type Role = (typeof ROLES)[number];
export const ROLE_RANK: Record<Role, number> = { reader: 1, contributor: 2, manager: 3, owner: 4 };

export const CreateOrgRequest = z.strictObject({ orgId: OrgIdSchema });
export const CreateOrgResponse = z.strictObject({ orgId: OrgIdSchema, bootstrapToken: z.string() });

export const BootstrapRequest = z.strictObject({
  token: z.string().min(16).max(128),
  rootVerifyKey: Base64,
  userCertificate: Base64,
  deviceCertificate: Base64,
});

export const CreateUserRequest = z.strictObject({ userCertificate: Base64, deviceCertificate: Base64 });
export const SetRoleRequest = z.strictObject({
  role: z.enum(ROLES).nullable(),
  certificate: Base64,
  keys: z.array(z.strictObject({ keyIndex: KeyIndex, sealedKey: Base64 })).max(1000),
});

/** Invitations: the server only relays the greeter/claimer exchange (keys, commitment, nonces, sealed payloads). */
export const INVITATION_TYPES = ['user', 'device'] as const;
export const INVITATION_STATUSES = ['pending', 'claiming', 'done', 'cancelled'] as const;
const Key32B64 = Base64.max(64);
export const CreateInvitationRequest = z.strictObject({
  type: z.enum(INVITATION_TYPES),
  handle: z.string().min(1).max(254).regex(/^[^\s\u0000-\u001f]+$/, 'no spaces or control characters').optional(),
});
export const CreateInvitationResponse = z.strictObject({ invitationId: IdSchema, token: z.string() });
export const InvitationState = z.strictObject({
  invitationId: IdSchema,
  type: z.enum(INVITATION_TYPES),
  handle: z.string().nullable(),
  status: z.enum(INVITATION_STATUSES),
  createdAt: Timestamp,
  claimerPublicKey: Key32B64.nullable(),
  claimerCommitment: Key32B64.nullable(),
  claimerNonce: Key32B64.nullable(),
  claimerPayload: Base64.max(65536).nullable(),
  greeterPublicKey: Key32B64.nullable(),
  greeterNonce: Key32B64.nullable(),
  greeterPayload: Base64.max(65536).nullable(),
});
export type InvitationStateBody = z.infer<typeof InvitationState>;
export const InvitationListResponse = z.strictObject({ invitations: z.array(InvitationState) });
export const GreeterStepRequest = z.discriminatedUnion('step', [
  z.strictObject({ step: z.literal('keys'), publicKey: Key32B64, nonce: Key32B64 }),
  z.strictObject({ step: z.literal('payload'), payload: Base64.max(65536) }),
]);
export const ClaimerStepRequest = z.discriminatedUnion('step', [
  z.strictObject({ step: z.literal('poll'), token: z.string().min(16).max(128) }),
  z.strictObject({ step: z.literal('start'), token: z.string().min(16).max(128), publicKey: Key32B64, commitment: Key32B64 }),
  z.strictObject({ step: z.literal('reveal'), token: z.string().min(16).max(128), nonce: Key32B64 }),
  z.strictObject({ step: z.literal('payload'), token: z.string().min(16).max(128), payload: Base64.max(65536) }),
]);
export const CreateDeviceRequest = z.strictObject({ deviceCertificate: Base64 });
export const MembersResponse = z.strictObject({ members: z.array(z.strictObject({ userId: IdSchema, role: z.enum(ROLES) })) });

export const CertificateListResponse = z.strictObject({
  certificates: z.array(z.strictObject({ index: z.number().int().positive(), blob: Base64 })),
});

export const CreateRealmRequest = z.strictObject({ realmId: IdSchema, keyIndex: KeyIndex, sealedKey: Base64, roleCertificate: Base64, keyCertificate: Base64 });
export const RealmInfo = z.strictObject({
  realmId: IdSchema,
  role: z.enum(ROLES),
  keys: z.array(z.strictObject({ keyIndex: KeyIndex, sealedKey: Base64 })),
  rotationNeeded: z.boolean(),
  keysMissing: z.boolean(),
});
export const CertificateRequest = z.strictObject({ certificate: Base64 });
const MemberKeys = z.array(z.strictObject({ userId: IdSchema, keyIndex: KeyIndex, sealedKey: Base64 })).max(100_000);
export const SetGroupRoleRequest = z.strictObject({ role: z.enum(ROLES).nullable(), certificate: Base64, keys: MemberKeys });
export const MemberKeysRequest = z.strictObject({ keys: MemberKeys.min(1) });
export const RevokeUserRequest = z.strictObject({ certificate: Base64 });
export const RotateKeyRequest = z.strictObject({
  keyIndex: KeyIndex,
  certificate: Base64,
  keys: z.array(z.strictObject({ userId: IdSchema, sealedKey: Base64 })).min(1).max(100_000),
});
export const RealmListResponse = z.strictObject({ realms: z.array(RealmInfo) });

export const CreateVlobRequest = z.strictObject({ vlobId: IdSchema, keyIndex: KeyIndex, timestamp: Timestamp, blob: Base64 });
export const UpdateVlobRequest = z.strictObject({ version: Version, keyIndex: KeyIndex, timestamp: Timestamp, blob: Base64 });
export const VlobRecord = z.strictObject({
  vlobId: IdSchema,
  version: Version,
  keyIndex: KeyIndex,
  author: IdSchema,
  timestamp: Timestamp, // the author's claimed time (also signed inside the blob)
  createdAt: Timestamp, // server time, used for "as of" reads
  blob: Base64,
});
export type VlobRecordBody = z.infer<typeof VlobRecord>;
export const VlobWriteResponse = z.strictObject({ vlobId: IdSchema, version: Version, checkpoint: z.number().int().nonnegative() });
/**
 * Many vlob writes in one request (what a sync round sends: one manifest per file): each is created
 * (version 1) or updated exactly as by the single routes, and answered on its own, in order, with its
 * checkpoint or its error. Ids must be distinct within a request.
 */
export const MAX_VLOB_WRITE_BATCH = 64;
export const WriteVlobsRequest = z.strictObject({
  writes: z
    .array(z.strictObject({ vlobId: IdSchema, version: Version, keyIndex: KeyIndex, timestamp: Timestamp, blob: Base64 }))
    .min(1)
    .max(MAX_VLOB_WRITE_BATCH)
    .refine((ws) => new Set(ws.map((w) => w.vlobId)).size === ws.length, 'each vlobId at most once per request'),
});
export const WriteVlobsResponse = z.strictObject({
  results: z.array(z.union([VlobWriteResponse, z.strictObject({ vlobId: IdSchema, error: ErrorBodySchema })])),
});
export const ReadVlobsRequest = z.strictObject({ vlobIds: z.array(IdSchema).min(1).max(1000), at: Timestamp.optional() });
export const ReadVlobsResponse = z.strictObject({ vlobs: z.array(VlobRecord), missing: z.array(IdSchema) });
export const ChangesResponse = z.strictObject({
  checkpoint: z.number().int().nonnegative(),
  changes: z.array(z.strictObject({ vlobId: IdSchema, version: Version, checkpoint: z.number().int().positive() })),
});
/** Largest block body the server accepts: 4 MiB of plaintext plus AEAD overhead. */
export const MAX_BLOCK_BYTES = 4 * 1024 * 1024 + 64;
export const BlockPutResponse = z.strictObject({ blockId: IdSchema, created: z.boolean() });
/**
 * Many small blocks in one request (a small file is one block). The body is binary: a 4-byte
 * big-endian length, that many bytes of JSON index (BlockBatchIndex), then the blocks' bytes back to
 * back in index order. Each block is stored exactly as by the single PUT and answered on its own.
 */
export const MAX_BLOCK_WRITE_BATCH = 64;
export const BlockBatchIndex = z.strictObject({
  blocks: z
    .array(z.strictObject({ blockId: IdSchema, size: z.number().int().positive() }))
    .min(1)
    .max(MAX_BLOCK_WRITE_BATCH)
    .refine((bs) => new Set(bs.map((b) => b.blockId)).size === bs.length, 'each blockId at most once per request'),
});
export const WriteBlocksResponse = z.strictObject({
  results: z.array(z.union([BlockPutResponse, z.strictObject({ blockId: IdSchema, error: ErrorBodySchema })])),
});
/**
 * Many blocks read in one request (what read-ahead wants next): JSON `{ blockIds }` in, and a binary
 * answer framed like a batched write's body (4-byte length, JSON index BlockReadIndex, the blocks
 * back to back), one index entry per id, in request order: the block's size, or the error its own
 * GET would have answered. At most MAX_BLOCK_READ_BATCH ids; blocks past MAX_BLOCK_READ_BYTES (by
 * their recorded sizes) are answered `too_large` instead, to be asked for again on their own.
 */
export const MAX_BLOCK_READ_BATCH = 64;
export const MAX_BLOCK_READ_BYTES = 16 * 1024 * 1024;
export const ReadBlocksRequest = z.strictObject({
  blockIds: z
    .array(IdSchema)
    .min(1)
    .max(MAX_BLOCK_READ_BATCH)
    .refine((ids) => new Set(ids).size === ids.length, 'each blockId at most once per request'),
});
export const BlockReadIndex = z.strictObject({
  blocks: z
    .array(z.union([z.strictObject({ blockId: IdSchema, size: z.number().int().nonnegative().max(MAX_BLOCK_BYTES) }), z.strictObject({ blockId: IdSchema, error: ErrorBodySchema })]))
    .max(MAX_BLOCK_READ_BATCH),
});

/**
 * Block garbage collection (docs/deploy.md "Block garbage collection"): an owner or manager lists the
 * realm's blocks, and releases those that no manifest within its history window references, in a
 * device-signed request. The server deletes released blocks after its retention period.
 */
export const MAX_RELEASE_BATCH = 10_000;
export const BlockListQuery = z.strictObject({
  after: IdSchema.optional(),
  limit: z.coerce.number().int().min(1).max(10_000).default(1000),
});
export const BlockListResponse = z.strictObject({
  blocks: z.array(z.strictObject({ blockId: IdSchema, size: z.number().int().nonnegative(), createdAt: Timestamp, releasedAt: Timestamp.nullable() })),
  /** Pass as `after` for the next page; null at the end. */
  next: IdSchema.nullable(),
});
export const ReleaseBlocksRequest = z.strictObject({ blockIds: z.array(IdSchema).min(1).max(MAX_RELEASE_BATCH) });
export const ReleaseBlocksResponse = z.strictObject({ released: z.number().int().nonnegative(), alreadyReleased: z.number().int().nonnegative() });

export const VlobQuery = z.strictObject({
  version: z.coerce.number().pipe(Version).optional(),
  at: z.coerce.number().pipe(Timestamp).optional(),
});
export const ChangesQuery = z.strictObject({ since: z.coerce.number().int().nonnegative().default(0) });
export const CertificatesQuery = z.strictObject({ since: z.coerce.number().int().nonnegative().default(0) });

/** Route patterns, one place for client and server (`:name` segments are path parameters). */
export const ROUTES = {
  health: `${API_PREFIX}/health`,
  orgs: `${API_PREFIX}/orgs`,
  bootstrap: `${API_PREFIX}/orgs/:org/bootstrap`,
  certificates: `${API_PREFIX}/orgs/:org/certificates`,
  users: `${API_PREFIX}/orgs/:org/users`,
  devices: `${API_PREFIX}/orgs/:org/devices`,
  invitations: `${API_PREFIX}/orgs/:org/invitations`,
  invitation: `${API_PREFIX}/orgs/:org/invitations/:invitation`,
  greeterStep: `${API_PREFIX}/orgs/:org/invitations/:invitation/greeter`,
  claim: `${API_PREFIX}/orgs/:org/invitation-claim`,
  members: `${API_PREFIX}/orgs/:org/realms/:realm/roles`,
  revoke: `${API_PREFIX}/orgs/:org/users/:user/revoke`,
  realmKeys: `${API_PREFIX}/orgs/:org/realms/:realm/keys`,
  memberKeys: `${API_PREFIX}/orgs/:org/realms/:realm/member-keys`,
  groups: `${API_PREFIX}/orgs/:org/groups`,
  groupMembers: `${API_PREFIX}/orgs/:org/groups/:group/members`,
  groupRole: `${API_PREFIX}/orgs/:org/realms/:realm/group-roles/:group`,
  events: `${API_PREFIX}/orgs/:org/events`,
  realms: `${API_PREFIX}/orgs/:org/realms`,
  role: `${API_PREFIX}/orgs/:org/realms/:realm/roles/:user`,
  block: `${API_PREFIX}/orgs/:org/realms/:realm/blocks/:block`,
  blocks: `${API_PREFIX}/orgs/:org/realms/:realm/blocks`,
  releaseBlocks: `${API_PREFIX}/orgs/:org/realms/:realm/blocks-release`,
  writeBlocks: `${API_PREFIX}/orgs/:org/realms/:realm/blocks-write`,
  readBlocks: `${API_PREFIX}/orgs/:org/realms/:realm/blocks-read`,
  vlobs: `${API_PREFIX}/orgs/:org/realms/:realm/vlobs`,
  vlob: `${API_PREFIX}/orgs/:org/realms/:realm/vlobs/:vlob`,
  readVlobs: `${API_PREFIX}/orgs/:org/realms/:realm/vlobs-read`,
  writeVlobs: `${API_PREFIX}/orgs/:org/realms/:realm/vlobs-write`,
  changes: `${API_PREFIX}/orgs/:org/realms/:realm/changes`,
} as const;

/** Fill a route pattern's parameters (client side). */
export function routePath(pattern: string, values: Record<string, string>): string {
  return pattern.replace(/:([a-z]+)/g, (_m, name: string) => {
    const v = values[name];
    if (v === undefined) throw new Error(`missing route parameter ${name}`);
    return encodeURIComponent(v);
  });
}

/** Largest JSON body (a file manifest of a very large file fits). */
export const MAX_JSON_BYTES = 16 * 1024 * 1024;
