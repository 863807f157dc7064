/**
 * Manifests: the encrypted metadata tree. Schemas are strict and carry the structural invariants,
 * because a manifest may come from any workspace member (or a buggy client) and the mount must
 * never act on an inconsistent one.
 */
import { z } from 'zod';
import { decodeWith, encode, parseWith } from './codec.js';
import { ID_PATTERN, IdSchema, type BlockId, type EntryId, type RealmId } from './ids.js';
import { EntryNameSchema } from './names.js';

export const DEFAULT_BLOCK_SIZE = 512 * 1024;
export const MIN_BLOCK_SIZE = 4 * 1024;
export const MAX_BLOCK_SIZE = 4 * 1024 * 1024;
export const MAX_CHILDREN = 1_000_000;
export const MAX_USER_WORKSPACES = 100_000;

export interface BlockRef {
  id: BlockId;
  offset: number;
  size: number;
  key: Uint8Array;
  digest: Uint8Array;
}
export interface FileManifest {
  type: 'file';
  id: EntryId;
  parent: EntryId;
  created: number;
  updated: number;
  mode: number;
  size: number;
  blockSize: number;
  blocks: BlockRef[];
}
export interface FolderManifest {
  type: 'folder';
  id: EntryId;
  parent: EntryId;
  created: number;
  updated: number;
  mode: number;
  children: Record<string, EntryId>;
}
/** The root folder of a workspace; its id is the realm id. */
export interface WorkspaceManifest {
  type: 'workspace';
  id: EntryId;
  name: string;
  created: number;
  updated: number;
  mode: number;
  children: Record<string, EntryId>;
}
export interface UserManifest {
  type: 'user';
  id: EntryId;
  created: number;
  updated: number;
  workspaces: Array<{ id: RealmId; name: string }>;
}
export type Manifest = FileManifest | FolderManifest | WorkspaceManifest | UserManifest;

const SafeUint = z.number().int().nonnegative(); // zod 4 .int() is also bounded to safe integers
const Timestamp = SafeUint; // integer milliseconds since epoch
const Mode = z.number().int().min(0).max(0o7777);
const bytes32 = z.custom<Uint8Array>(
  (v) => v instanceof Uint8Array && v.byteLength === 32,
  'must be a Uint8Array of exactly 32 bytes',
);

export function isValidBlockSize(n: number): boolean {
  return Number.isSafeInteger(n) && n >= MIN_BLOCK_SIZE && n <= MAX_BLOCK_SIZE && (n & (n - 1)) === 0;
}

export const BlockRefSchema = z.strictObject({
  id: IdSchema,
  offset: SafeUint,
  size: SafeUint,
  key: bytes32,
  digest: bytes32, // sha256 of the ciphertext
});

const Children = z
  .record(EntryNameSchema, IdSchema)
  .refine((c) => Object.keys(c).length <= MAX_CHILDREN, `at most ${MAX_CHILDREN} children allowed`)
  // Null prototype: a child named "constructor" or "toString" must not resolve to an inherited value.
  .transform((c) => Object.assign(Object.create(null) as Record<string, EntryId>, c));

export const FileManifestSchema = z
  .strictObject({
    type: z.literal('file'),
    id: IdSchema,
    parent: IdSchema,
    created: Timestamp,
    updated: Timestamp,
    mode: Mode,
    size: SafeUint,
    blockSize: SafeUint,
    blocks: z.array(BlockRefSchema),
  })
  .superRefine((m, ctx) => {
    if (!isValidBlockSize(m.blockSize)) {
      ctx.addIssue({
        code: 'custom',
        path: ['blockSize'],
        message: `must be a power of two between ${MIN_BLOCK_SIZE} and ${MAX_BLOCK_SIZE}, got ${m.blockSize}`,
      });
      return; // every block check depends on it
    }
    const maxBlocks = Math.ceil(m.size / m.blockSize);
    if (m.blocks.length > maxBlocks) {
      ctx.addIssue({
        code: 'custom',
        path: ['blocks'],
        message: `${m.blocks.length} blocks for a ${m.size}-byte file, at most ${maxBlocks} possible`,
      });
      return;
    }
    let previous = -1;
    m.blocks.forEach((b, i) => {
      const issue = (field: string, message: string): void =>
        ctx.addIssue({ code: 'custom', path: ['blocks', i, field], message });
      if (b.offset % m.blockSize !== 0) issue('offset', `must be a multiple of blockSize (${m.blockSize}), got ${b.offset}`);
      if (b.offset === previous) issue('offset', `two blocks at offset ${b.offset}`);
      else if (b.offset < previous) issue('offset', `blocks must be sorted by offset (${b.offset} after ${previous})`);
      if (b.size === 0 || b.size > m.blockSize) issue('size', `must be between 1 and blockSize (${m.blockSize}), got ${b.size}`);
      if (b.offset + b.size > m.size) issue('size', `block ends at ${b.offset + b.size}, past the file size ${m.size}`);
      previous = Math.max(previous, b.offset);
    });
  });

export const FolderManifestSchema = z.strictObject({
  type: z.literal('folder'),
  id: IdSchema,
  parent: IdSchema,
  created: Timestamp,
  updated: Timestamp,
  mode: Mode,
  children: Children,
});

export const WorkspaceManifestSchema = z.strictObject({
  type: z.literal('workspace'),
  id: IdSchema,
  name: EntryNameSchema, // shown as a folder name by the mount
  created: Timestamp,
  updated: Timestamp,
  mode: Mode,
  children: Children,
});

export const UserManifestSchema = z.strictObject({
  type: z.literal('user'),
  id: IdSchema,
  created: Timestamp,
  updated: Timestamp,
  workspaces: z
    .array(z.strictObject({ id: IdSchema, name: EntryNameSchema }))
    .max(MAX_USER_WORKSPACES)
    .superRefine((list, ctx) => {
      const seen = new Set<string>();
      list.forEach((w, i) => {
        if (seen.has(w.id)) ctx.addIssue({ code: 'custom', path: [i, 'id'], message: `workspace ${w.id} listed twice` });
        seen.add(w.id);
      });
    }),
});

export const ManifestSchema = z.discriminatedUnion('type', [
  FileManifestSchema,
  FolderManifestSchema,
  WorkspaceManifestSchema,
  UserManifestSchema,
]);

// Compile-time proof that the schemas and the hand-written interfaces agree both ways.
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
const schemasMatchInterfaces: [
  Same<z.output<typeof BlockRefSchema>, BlockRef>,
  Same<z.output<typeof FileManifestSchema>, FileManifest>,
  Same<z.output<typeof FolderManifestSchema>, FolderManifest>,
  Same<z.output<typeof WorkspaceManifestSchema>, WorkspaceManifest>,
  Same<z.output<typeof UserManifestSchema>, UserManifest>,
  Same<z.output<typeof ManifestSchema>, Manifest>,
] = [true, true, true, true, true, true];
void schemasMatchInterfaces;

export function parseManifest(value: unknown): Manifest {
  return parseWith(ManifestSchema, value, manifestLabel(value));
}

/** Validates before encoding so an invalid manifest is never written anywhere. */
export function encodeManifest(m: Manifest): Uint8Array {
  return encode(parseManifest(m));
}

/**
 * Encodes a manifest this device keeps for itself (the engine's in-memory state, built by its own
 * typed code, or taken from a manifest validated when it arrived) without the schema pass: ≈40 µs a
 * manifest, at every save of every close. The checks stay where bytes come in: decodeManifest on
 * every load, and parseManifest when a manifest is signed to leave the device (model/vlob.ts).
 * With COFFER_MANIFEST_CHECKS=1 (set by the tests) it validates too, so an engine bug fails at the
 * save that writes it rather than at the next load.
 */
export function encodeOwnManifest(m: Manifest): Uint8Array {
  checkOwnManifests ??= process.env.COFFER_MANIFEST_CHECKS === '1'; // read at first use: tests set it after imports
  return encode(checkOwnManifests ? parseManifest(m) : m);
}
let checkOwnManifests: boolean | undefined;

export function decodeManifest(bytes: Uint8Array): Manifest {
  return parseManifest(decodeWith(z.unknown(), bytes, 'manifest'));
}

// Name the manifest kind in errors when the input says which kind it claims to be.
function manifestLabel(value: unknown): string {
  const type = typeof value === 'object' && value !== null ? (value as { type?: unknown }).type : undefined;
  return typeof type === 'string' && ['file', 'folder', 'workspace', 'user'].includes(type)
    ? `${type} manifest`
    : 'manifest';
}

/**
 * A new file or folder is valid when its arguments are (what else it holds is constant): those are
 * checked by hand, and the schema runs only to word the error when they are not. Every create and
 * mkdir builds one; the schema pass cost ≈40 µs.
 */
function validArguments(ids: readonly string[], now: number): boolean {
  return ids.every((id) => ID_PATTERN.test(id)) && Number.isSafeInteger(now) && now >= 0;
}

export function newFileManifest(id: EntryId, parent: EntryId, now: number, blockSize: number = DEFAULT_BLOCK_SIZE): FileManifest {
  const m: FileManifest = { type: 'file', id, parent, created: now, updated: now, mode: 0o644, size: 0, blockSize, blocks: [] };
  return validArguments([id, parent], now) && isValidBlockSize(blockSize) ? m : parseWith(FileManifestSchema, m, 'file manifest');
}

export function newFolderManifest(id: EntryId, parent: EntryId, now: number): FolderManifest {
  // Null prototype, as the schema makes it (see Children).
  const m: FolderManifest = { type: 'folder', id, parent, created: now, updated: now, mode: 0o755, children: Object.create(null) as Record<string, EntryId> };
  return validArguments([id, parent], now) ? m : parseWith(FolderManifestSchema, m, 'folder manifest');
}

export function newUserManifest(id: EntryId, now: number): UserManifest {
  const m: UserManifest = { type: 'user', id, created: now, updated: now, workspaces: [] };
  return parseWith(UserManifestSchema, m, 'user manifest');
}

export function newWorkspaceManifest(id: EntryId, name: string, now: number): WorkspaceManifest {
  const m: WorkspaceManifest = { type: 'workspace', id, name, created: now, updated: now, mode: 0o755, children: {} };
  return parseWith(WorkspaceManifestSchema, m, 'workspace manifest');
}
