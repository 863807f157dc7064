import { mkdir } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import type { Logger } from 'pino';
import { BadInputError } from '../errors.js';
import { FolderBlockStore } from './blocks/folder.js';
import { S3BlockStore, type S3Options } from './blocks/s3.js';
import { SwiftBlockStore, type SwiftOptions } from './blocks/swift.js';
import type { BlockStore } from './blocks/types.js';
import { PostgresMetadataStore } from './metadata/postgres.js';
import { SqliteMetadataStore } from './metadata/sqlite.js';
import type { MetadataStore } from './metadata/types.js';

/**
 * Where the server keeps its data, as URL-style settings:
 *
 *   metadata  sqlite:                     <dataDir>/metadata.sqlite (the default)
 *             sqlite:/path/to/file.sqlite
 *             postgresql://user[:password]@host:port/database   (also postgres://; PG* env vars apply)
 *   blocks    folder:                     <dataDir>/blocks (the default)
 *             folder:/path/to/dir
 *             s3://[key:secret@]bucket[/prefix]?endpoint=http://host:port&region=us-east-1[&pathStyle=false]
 *             swift://account%3Auser:key@host:port/container[/prefix][?auth=v1&tls=false&authPath=/auth/v1.0]
 *                   (OpenStack Swift, native API, TempAuth v1; the key may also come from SWIFT_KEY)
 *
 * SQLite and a folder are for one server instance; several instances behind a load balancer need
 * PostgreSQL and S3 or Swift (docs/deploy.md).
 */
export interface StorageSettings {
  metadata?: string | undefined;
  blocks?: string | undefined;
  /** The server data directory: home of the sqlite: and folder: defaults. */
  dataDir: string;
  logger?: Logger | undefined;
}

export interface Stores {
  metadata: MetadataStore;
  blocks: BlockStore;
  /** The settings in effect, passwords and secret keys removed (for logs). */
  description: { metadata: string; blocks: string };
  close(): Promise<void>;
}

export type MetadataSetting = { kind: 'sqlite'; file: string } | { kind: 'postgres'; url: string };
export type BlocksSetting = { kind: 'folder'; dir: string } | ({ kind: 's3' } & S3Options) | ({ kind: 'swift' } & SwiftOptions);

function scheme(value: string): string {
  const m = /^([a-z][a-z0-9+.-]*):/i.exec(value);
  return m ? m[1]!.toLowerCase() : '';
}

/** Path after `sqlite:` / `folder:` (also accepts the `scheme:///abs/path` form); empty = the default. */
function localPath(value: string, prefix: string, fallback: string): string {
  let rest = value.slice(prefix.length + 1);
  if (rest.startsWith('//')) rest = rest.slice(2);
  return rest === '' ? fallback : resolve(decodeURIComponent(rest));
}

export function parseMetadataSetting(value: string | undefined, dataDir: string): MetadataSetting {
  const v = (value ?? '').trim();
  const fallback = join(dataDir, 'metadata.sqlite');
  if (v === '') return { kind: 'sqlite', file: fallback };
  switch (scheme(v)) {
    case 'sqlite':
      return { kind: 'sqlite', file: localPath(v, 'sqlite', fallback) };
    case 'postgresql':
    case 'postgres': {
      let url: URL;
      try {
        url = new URL(v);
      } catch {
        throw new BadInputError(`invalid PostgreSQL URL ${redactUrl(v)}: expected postgresql://user[:password]@host:port/database`);
      }
      if (url.hostname === '' && !url.searchParams.has('host')) throw new BadInputError(`PostgreSQL URL ${redactUrl(v)} names no host`);
      if (url.pathname.length <= 1) throw new BadInputError(`PostgreSQL URL ${redactUrl(v)} names no database (postgresql://user@host:port/database)`);
      return { kind: 'postgres', url: v };
    }
    default:
      throw new BadInputError(`unknown metadata store "${redactUrl(v)}": use sqlite: (default, one instance) or postgresql://user@host:port/database`);
  }
}

const S3_PARAMS = new Set(['endpoint', 'region', 'pathStyle']);
const SWIFT_PARAMS = new Set(['auth', 'tls', 'authPath']);

function parseSwift(v: string, env: NodeJS.ProcessEnv): BlocksSetting {
  const usage = 'expected swift://account%3Auser:key@host:port/container[/prefix]?auth=v1';
  let url: URL;
  try {
    url = new URL(v);
  } catch {
    throw new BadInputError(`invalid Swift URL ${redactUrl(v)}: ${usage}`);
  }
  for (const k of url.searchParams.keys()) {
    if (!SWIFT_PARAMS.has(k)) throw new BadInputError(`Swift URL ${redactUrl(v)}: unknown parameter "${k}" (known: ${[...SWIFT_PARAMS].join(', ')})`);
  }
  const auth = url.searchParams.get('auth') ?? 'v1';
  if (auth !== 'v1') throw new BadInputError(`Swift URL ${redactUrl(v)}: only auth=v1 (TempAuth / Swauth) is supported`);
  const tls = url.searchParams.get('tls') ?? 'false';
  if (tls !== 'true' && tls !== 'false') throw new BadInputError(`Swift URL ${redactUrl(v)}: tls must be true or false`);
  const authPath = url.searchParams.get('authPath') ?? '/auth/v1.0';
  if (!authPath.startsWith('/')) throw new BadInputError(`Swift URL ${redactUrl(v)}: authPath must start with /`);
  if (url.hostname === '') throw new BadInputError(`Swift URL ${redactUrl(v)} names no host: ${usage}`);
  const user = decodeURIComponent(url.username);
  const key = url.password !== '' ? decodeURIComponent(url.password) : (env.SWIFT_KEY ?? '');
  if (!/^[^:]+:[^:]+$/.test(user)) throw new BadInputError(`Swift URL ${redactUrl(v)}: the user must be account:user, written account%3Auser in the URL`);
  if (key === '') throw new BadInputError(`Swift URL ${redactUrl(v)}: no key (give it in the URL or SWIFT_KEY)`);
  const parts = decodeURIComponent(url.pathname).split('/').filter(Boolean);
  const container = parts.shift() ?? '';
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$/.test(container)) throw new BadInputError(`Swift URL ${redactUrl(v)}: "${container}" is not a valid container name: ${usage}`);
  const prefix = parts.join('/');
  return {
    kind: 'swift',
    authUrl: `${tls === 'true' ? 'https' : 'http'}://${url.host}${authPath}`,
    user,
    key,
    container,
    prefix: prefix === '' ? '' : `${prefix}/`,
  };
}

export function parseBlocksSetting(value: string | undefined, dataDir: string, env: NodeJS.ProcessEnv = process.env): BlocksSetting {
  const v = (value ?? '').trim();
  const fallback = join(dataDir, 'blocks');
  if (v === '') return { kind: 'folder', dir: fallback };
  switch (scheme(v)) {
    case 'folder':
      return { kind: 'folder', dir: localPath(v, 'folder', fallback) };
    case 's3': {
      let url: URL;
      try {
        url = new URL(v);
      } catch {
        throw new BadInputError(`invalid S3 URL ${redactUrl(v)}: expected s3://bucket/prefix?endpoint=http://host:port&region=us-east-1`);
      }
      const bucket = url.hostname;
      if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) throw new BadInputError(`S3 URL ${redactUrl(v)}: "${bucket}" is not a valid bucket name`);
      for (const k of url.searchParams.keys()) {
        if (!S3_PARAMS.has(k)) throw new BadInputError(`S3 URL ${redactUrl(v)}: unknown parameter "${k}" (known: ${[...S3_PARAMS].join(', ')})`);
      }
      const endpoint = url.searchParams.get('endpoint') ?? undefined;
      if (endpoint !== undefined && !/^https?:\/\/[^/]+\/?$/.test(endpoint)) {
        throw new BadInputError(`S3 URL ${redactUrl(v)}: endpoint must be http(s)://host[:port]`);
      }
      const pathStyle = url.searchParams.get('pathStyle');
      if (pathStyle !== null && pathStyle !== 'true' && pathStyle !== 'false') throw new BadInputError(`S3 URL ${redactUrl(v)}: pathStyle must be true or false`);
      const user = decodeURIComponent(url.username);
      const pass = decodeURIComponent(url.password);
      if ((user === '') !== (pass === '')) throw new BadInputError(`S3 URL ${redactUrl(v)}: give both the access key id and the secret (s3://KEY:SECRET@bucket)`);
      const envKey = env.AWS_ACCESS_KEY_ID;
      const envSecret = env.AWS_SECRET_ACCESS_KEY;
      const credentials =
        user !== '' ? { accessKeyId: user, secretAccessKey: pass } : envKey && envSecret ? { accessKeyId: envKey, secretAccessKey: envSecret } : undefined;
      const prefix = decodeURIComponent(url.pathname).replace(/^\/+/, '').replace(/\/+$/, '');
      return {
        kind: 's3',
        bucket,
        prefix: prefix === '' ? '' : `${prefix}/`,
        ...(endpoint !== undefined && { endpoint: endpoint.replace(/\/$/, '') }),
        region: url.searchParams.get('region') ?? env.AWS_REGION ?? env.AWS_DEFAULT_REGION ?? 'us-east-1',
        ...(credentials !== undefined && { credentials }),
        // Custom endpoints are addressed path-style (no DNS per bucket); AWS itself virtual-hosted.
        forcePathStyle: pathStyle !== null ? pathStyle === 'true' : endpoint !== undefined,
      };
    }
    case 'swift':
      return parseSwift(v, env);
    default:
      throw new BadInputError(`unknown block store "${redactUrl(v)}": use folder: (default, one instance), s3://bucket/prefix?endpoint=…&region=… or swift://account%3Auser:key@host:port/container`);
  }
}

/** The URL without its password / secret key. */
export function redactUrl(value: string): string {
  return value.replace(/^([a-z][a-z0-9+.-]*:\/\/)([^/@?#]*)@/i, (_m, s: string, userinfo: string) => {
    const user = userinfo.split(':')[0] ?? '';
    return userinfo.includes(':') ? `${s}${user}:***@` : `${s}${user}@`;
  });
}

/** Opens (and migrates) the metadata store and the block store named by the settings. */
export async function openStores(settings: StorageSettings): Promise<Stores> {
  // Parse both first: a typo in one must not leave the other half opened.
  const m = parseMetadataSetting(settings.metadata, settings.dataDir);
  const b = parseBlocksSetting(settings.blocks, settings.dataDir);
  let metadata: MetadataStore;
  let metadataDesc: string;
  if (m.kind === 'sqlite') {
    await mkdir(dirname(m.file), { recursive: true, mode: 0o700 });
    metadata = new SqliteMetadataStore(m.file);
    metadataDesc = `sqlite:${m.file}`;
  } else {
    metadataDesc = redactUrl(m.url);
    try {
      metadata = await PostgresMetadataStore.open({ url: m.url, ...(settings.logger && { logger: settings.logger }) });
    } catch (err) {
      throw new Error(`cannot open the PostgreSQL metadata store ${metadataDesc}: ${(err as Error).message}`, { cause: err });
    }
  }
  let blocks: BlockStore;
  let blocksDesc: string;
  try {
    if (b.kind === 'folder') {
      await mkdir(b.dir, { recursive: true, mode: 0o700 });
      blocks = new FolderBlockStore(b.dir);
      blocksDesc = `folder:${b.dir}`;
    } else if (b.kind === 'swift') {
      const { kind: _kind, ...opts } = b;
      blocks = await SwiftBlockStore.open(opts);
      blocksDesc = `swift:${b.container}/${b.prefix} at ${b.authUrl} as ${b.user}`;
    } else {
      const { kind: _kind, ...opts } = b;
      blocks = await S3BlockStore.open(opts);
      blocksDesc = `s3://${b.bucket}/${b.prefix}${b.endpoint ? ` at ${b.endpoint}` : ''} (${b.region})`;
    }
  } catch (err) {
    await metadata.close();
    throw err;
  }
  return {
    metadata,
    blocks,
    description: { metadata: metadataDesc, blocks: blocksDesc },
    close: async () => {
      try {
        await metadata.close();
      } finally {
        await blocks.close();
      }
    },
  };
}
