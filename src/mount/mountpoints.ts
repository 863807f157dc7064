/**
 * The mountpoints file: several workspaces mounted at once by one process.
 *
 * ```json
 * {
 *   "device": "optional path to the device file",
 *   "mounts": [
 *     { "workspace": "name or id", "path": "/abs/or/relative/dir", "readOnly": false,
 *       "at": "2024-05-01T12:00:00Z", "cacheSizeMiB": 1024, "pin": false,
 *       "transport": "auto", "writebackCache": false }
 *   ]
 * }
 * ```
 * - Relative paths (`device`, `path`) are resolved against the directory holding the file.
 * - `at` mounts the workspace as it was at that time; it implies `readOnly` (an explicit
 *   `"readOnly": false` next to it is an error). A date without a time means 00:00 UTC.
 * - `transport` (libfuse3 | fuse-native | auto) and `writebackCache` choose the FUSE transport and
 *   its kernel write cache; `coffer mount --transport/--writeback-cache` override them.
 * - Two mounts may not share a path, nor be nested inside one another.
 * - `_doc` keys (a string or an array of strings) are allowed at the top level and in each entry
 *   for documentation, since JSON has no comments; they are ignored.
 * See mountpoints.example.json.
 */
import { dirname, isAbsolute, relative, resolve, sep } from 'node:path';
import { z } from 'zod';
import { BadInputError } from '../errors.js';
import type { TransportChoice } from './transport.js';

export const DEFAULT_CACHE_SIZE_MIB = 1024;
export const MAX_CACHE_SIZE_MIB = 16 * 1024 * 1024; // 16 TiB
export const MAX_MOUNTS = 256;

const DocSchema = z.union([z.string(), z.array(z.string())]).optional();

const DATE_ONLY = /^\d{4}-\d{2}-\d{2}$/;
const DATE_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})$/;

/** ISO-8601 date or date-time with an explicit zone (Z or ±hh:mm); returns ms since epoch. */
function parseIsoInstant(text: string): number | undefined {
  const dateOnly = DATE_ONLY.test(text);
  if (!dateOnly && !DATE_TIME.test(text)) return undefined;
  const ms = Date.parse(dateOnly ? `${text}T00:00:00Z` : text);
  if (!Number.isFinite(ms)) return undefined;
  // Date.parse rolls 2024-02-30 over to March: insist the calendar date exists.
  const [y, m, d] = text.slice(0, 10).split('-').map(Number) as [number, number, number];
  const probe = new Date(Date.UTC(y, m - 1, d));
  if (probe.getUTCFullYear() !== y || probe.getUTCMonth() !== m - 1 || probe.getUTCDate() !== d) return undefined;
  return ms;
}

const MountEntrySchema = z.strictObject({
  _doc: DocSchema,
  workspace: z.string().trim().min(1, 'must not be empty').max(256, 'is too long'),
  path: z.string().min(1, 'must not be empty').max(1000, 'is too long'),
  readOnly: z.boolean().optional(),
  at: z
    .string()
    .refine((s) => parseIsoInstant(s) !== undefined, {
      message: 'must be an ISO-8601 date (2024-05-01) or date-time with a zone (2024-05-01T12:00:00Z)',
    })
    .optional(),
  cacheSizeMiB: z
    .number()
    .int('must be a whole number')
    .min(1, 'must be at least 1')
    .max(MAX_CACHE_SIZE_MIB, `must be at most ${MAX_CACHE_SIZE_MIB}`)
    .optional(),
  pin: z.boolean().optional(),
  transport: z.enum(['libfuse3', 'fuse-native', 'auto']).optional(),
  writebackCache: z.boolean().optional(),
});

export const MountpointsFileSchema = z.strictObject({
  _doc: DocSchema,
  device: z.string().min(1, 'must not be empty').max(1000, 'is too long').optional(),
  mounts: z.array(MountEntrySchema).min(1, 'must list at least one mount').max(MAX_MOUNTS, `must list at most ${MAX_MOUNTS} mounts`),
});

export interface MountpointConfig {
  /** Workspace name or id, as written. */
  workspace: string;
  /** Absolute mount point path. */
  path: string;
  readOnly: boolean;
  /** Mount the workspace as of this instant (ms since epoch); implies readOnly. */
  at: number | undefined;
  cacheSizeMiB: number;
  /** Keep the whole workspace in the local cache. */
  pin: boolean;
  /** FUSE transport; undefined: COFFER_FUSE_TRANSPORT, else automatic. */
  transport: TransportChoice | undefined;
  /** Kernel writeback cache (libfuse3); undefined: COFFER_FUSE_WRITEBACK. */
  writebackCache: boolean | undefined;
}

export interface MountpointsConfig {
  /** Absolute path of the device file, when given. */
  device: string | undefined;
  mounts: MountpointConfig[];
}

function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const part of path) {
    if (typeof part === 'number') out += `[${part}]`;
    else out += out ? `.${String(part)}` : String(part);
  }
  return out || '(top level)';
}

function describeIssue(issue: z.core.$ZodIssue): string {
  const where = formatPath(issue.path);
  switch (issue.code) {
    case 'unrecognized_keys':
      return `${where}: unknown field${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => `"${k}"`).join(', ')}`;
    case 'invalid_type':
      if (issue.input === undefined) return `${where}: missing required field (expected ${issue.expected})`;
      if (issue.expected === 'int' && typeof issue.input === 'number') return `${where}: must be a whole number`;
      return `${where}: expected ${issue.expected}, got ${issue.input === null ? 'null' : Array.isArray(issue.input) ? 'array' : typeof issue.input}`;
    case 'invalid_union':
      return `${where}: expected a string or an array of strings`;
    default:
      return `${where}: ${issue.message}`;
  }
}

/**
 * Parses and validates a mountpoints file. `file` is its path: used in messages and to resolve
 * relative paths. Throws BadInputError naming the file, the entry and the field.
 */
export function parseMountpointsFile(text: string, file: string): MountpointsConfig {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (err) {
    throw new BadInputError(`${file}: not valid JSON: ${err instanceof Error ? err.message : String(err)}`, { file });
  }
  const parsed = MountpointsFileSchema.safeParse(data, { reportInput: true });
  if (!parsed.success) {
    const problems = parsed.error.issues.slice(0, 5).map(describeIssue);
    const more = parsed.error.issues.length > 5 ? ` (and ${parsed.error.issues.length - 5} more)` : '';
    throw new BadInputError(`${file}: ${problems.join('; ')}${more}`, { file, problems });
  }
  const baseDir = dirname(resolve(file));
  const raw = parsed.data;

  const mounts: MountpointConfig[] = raw.mounts.map((m, i) => {
    if (m.at !== undefined && m.readOnly === false) {
      throw new BadInputError(`${file}: mounts[${i}].readOnly: must not be false when "at" is given (a past state is read-only)`, {
        file,
        index: i,
        field: 'readOnly',
      });
    }
    const at = m.at === undefined ? undefined : parseIsoInstant(m.at);
    return {
      workspace: m.workspace.trim(),
      path: isAbsolute(m.path) ? resolve(m.path) : resolve(baseDir, m.path),
      readOnly: m.readOnly === true || at !== undefined,
      at,
      cacheSizeMiB: m.cacheSizeMiB ?? DEFAULT_CACHE_SIZE_MIB,
      pin: m.pin === true,
      transport: m.transport,
      writebackCache: m.writebackCache,
    };
  });

  for (let i = 0; i < mounts.length; i++) {
    for (let j = 0; j < i; j++) {
      const a = mounts[j]!.path;
      const b = mounts[i]!.path;
      if (a === b) {
        throw new BadInputError(`${file}: mounts[${i}].path: duplicate of mounts[${j}].path (${b})`, { file, index: i, field: 'path' });
      }
      const rel1 = relative(a, b);
      const rel2 = relative(b, a);
      const inside = (rel: string): boolean => rel !== '' && !rel.startsWith(`..${sep}`) && rel !== '..' && !isAbsolute(rel);
      if (inside(rel1) || inside(rel2)) {
        throw new BadInputError(`${file}: mounts[${i}].path: ${b} and mounts[${j}].path ${a} are nested`, {
          file,
          index: i,
          field: 'path',
        });
      }
    }
  }

  return {
    device: raw.device === undefined ? undefined : isAbsolute(raw.device) ? resolve(raw.device) : resolve(baseDir, raw.device),
    mounts,
  };
}
