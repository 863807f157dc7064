import { mkdir } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import type { Logger } from 'pino';
import { BadInputError } from '../errors.js';
import { FolderBlockStore } from './blocks/folder.js';
import { S3BlockStore, type S3Options } from './blocks/s3.js';
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
 *
 * SQLite and a folder are for one server instance; several instances behind a load balancer need
 * PostgreSQL and S3 (docs/deploy.md).
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
export type BlocksSetting = { kind: 'folder'; dir: string } | ({ kind: 's3' } & S3Options);

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
    default:
      throw new BadInputError(`unknown block store "${redactUrl(v)}": use folder: (default, one instance) or s3://bucket/prefix?endpoint=…&region=…`);
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
