import { z } from 'zod';
import { parseWith } from '../../model/codec.js';
import { IdSchema } from '../../model/ids.js';
import { OrgIdSchema } from '../../protocol/schemas.js';

/** Path parameters, validated like bodies. */
export const OrgParams = z.strictObject({ org: OrgIdSchema });
export const RealmParams = z.strictObject({ org: OrgIdSchema, realm: IdSchema });
export const BlockParams = z.strictObject({ org: OrgIdSchema, realm: IdSchema, block: IdSchema });
export const VlobParams = z.strictObject({ org: OrgIdSchema, realm: IdSchema, vlob: IdSchema });

export function params<T>(schema: z.ZodType<T>, value: unknown): T {
  return parseWith(schema, value, 'path');
}

export function b64(data: Uint8Array): string {
  return Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString('base64');
}

export function fromB64(text: string): Buffer {
  return Buffer.from(text, 'base64');
}
export const RoleParams = z.strictObject({ org: OrgIdSchema, realm: IdSchema, user: IdSchema });
export const UserParams = z.strictObject({ org: OrgIdSchema, user: IdSchema });
