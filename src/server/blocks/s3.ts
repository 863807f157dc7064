import { DeleteObjectCommand, GetObjectCommand, HeadBucketCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { CofferError } from '../../errors.js';
import type { BlockStore } from './types.js';

export interface S3Options {
  bucket: string;
  /** Key prefix ("" or ending with "/"): objects are <prefix><org>/<block id>. */
  prefix: string;
  /** S3-compatible endpoint (MinIO, Ceph, Swift s3api, s3rver…); absent = AWS for the region. */
  endpoint?: string;
  region: string;
  /** Static credentials; absent = the SDK's default chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, profile, instance role). */
  credentials?: { accessKeyId: string; secretAccessKey: string };
  /** Path-style URLs (http://endpoint/bucket/key): what most S3-compatible servers need. */
  forcePathStyle: boolean;
  /** Fails a connection attempt after this long (default 5 s); the SDK retries twice more. */
  connectTimeoutMs?: number;
  /** Fails a request that takes longer (default 60 s). */
  requestTimeoutMs?: number;
}

const NETWORK_ERRORS = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'ECONNABORTED']);
const TRANSIENT_NAMES = new Set(['TimeoutError', 'RequestTimeout', 'RequestTimeoutException', 'SlowDown', 'ServiceUnavailable', 'InternalError', 'ThrottlingException']);

interface SdkError {
  name?: string;
  code?: string;
  message?: string;
  $metadata?: { httpStatusCode?: number };
}

/** The S3 endpoint cannot be reached or is overloaded: a client may retry later. */
export function isTransientS3Error(err: unknown): boolean {
  const e = err as SdkError;
  if (typeof e !== 'object' || e === null) return false;
  if (typeof e.code === 'string' && NETWORK_ERRORS.has(e.code)) return true;
  if (typeof e.name === 'string' && TRANSIENT_NAMES.has(e.name)) return true;
  const status = e.$metadata?.httpStatusCode;
  return status !== undefined && status >= 500;
}

function mapError(err: unknown, what: string): CofferError {
  if (err instanceof CofferError) return err;
  if (isTransientS3Error(err)) return new CofferError('unavailable', `block store unavailable (${what}), retry later`);
  // Misconfiguration (NoSuchBucket, AccessDenied, bad signature…): not the client's fault, not transient.
  const e = err as SdkError;
  return new CofferError('internal', `block store refused ${what}: ${e.name ?? 'error'}`);
}

/**
 * Blocks as S3 objects <prefix><org>/<block id>. A PUT is atomic in S3 (a reader sees the old
 * object, none, or the whole new one). Bodies are sent as Buffers with checksums only where the
 * API requires them: with the SDK's default streaming checksums, some S3-compatible servers store
 * corrupted bodies.
 */
export class S3BlockStore implements BlockStore {
  readonly client: S3Client;

  constructor(private readonly opts: S3Options) {
    this.client = new S3Client({
      region: opts.region,
      ...(opts.endpoint !== undefined && { endpoint: opts.endpoint }),
      ...(opts.credentials !== undefined && { credentials: opts.credentials }),
      forcePathStyle: opts.forcePathStyle,
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      maxAttempts: 3,
      requestHandler: { connectionTimeout: opts.connectTimeoutMs ?? 5000, requestTimeout: opts.requestTimeoutMs ?? 60_000 },
    });
  }

  /** Builds the store and checks that the bucket is reachable with these credentials. */
  static async open(opts: S3Options): Promise<S3BlockStore> {
    const store = new S3BlockStore(opts);
    try {
      await store.client.send(new HeadBucketCommand({ Bucket: opts.bucket }));
    } catch (err) {
      store.client.destroy();
      const e = err as SdkError;
      const where = opts.endpoint ?? `AWS ${opts.region}`;
      const reason = e.$metadata?.httpStatusCode === 404 ? 'does not exist' : `is not usable (${e.name ?? e.code ?? 'error'}: ${e.message ?? ''})`;
      throw new Error(`S3 bucket ${opts.bucket} at ${where} ${reason}`);
    }
    return store;
  }

  private key(orgId: string, blockId: string): string {
    return `${this.opts.prefix}${orgId}/${blockId}`;
  }

  async put(orgId: string, blockId: string, data: Buffer): Promise<void> {
    try {
      await this.client.send(
        new PutObjectCommand({
          Bucket: this.opts.bucket,
          Key: this.key(orgId, blockId),
          Body: data,
          ContentLength: data.length,
          ContentType: 'application/octet-stream',
        }),
      );
    } catch (err) {
      throw mapError(err, 'a block write');
    }
  }

  async get(orgId: string, blockId: string): Promise<Buffer | null> {
    try {
      const res = await this.client.send(new GetObjectCommand({ Bucket: this.opts.bucket, Key: this.key(orgId, blockId) }));
      if (!res.Body) return null;
      const bytes = await res.Body.transformToByteArray();
      return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    } catch (err) {
      const e = err as SdkError;
      if (e.name === 'NoSuchKey') return null;
      throw mapError(err, 'a block read');
    }
  }

  /** S3 DELETE is idempotent: a missing key answers 204 too. */
  async delete(orgId: string, blockId: string): Promise<void> {
    try {
      await this.client.send(new DeleteObjectCommand({ Bucket: this.opts.bucket, Key: this.key(orgId, blockId) }));
    } catch (err) {
      const e = err as SdkError;
      if (e.name === 'NoSuchKey') return;
      throw mapError(err, 'a block deletion');
    }
  }

  async close(): Promise<void> {
    this.client.destroy();
  }
}
