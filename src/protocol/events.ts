import { z } from 'zod';
import { IdSchema } from '../model/ids.js';
import { ROLES } from './schemas.js';

/** Events pushed by the server (server-sent events); clients parse them with this schema. */
export const ServerEventSchema = z.discriminatedUnion('type', [
  z.strictObject({ type: z.literal('vlob'), realmId: IdSchema, vlobId: IdSchema, version: z.number().int().positive(), checkpoint: z.number().int().positive(), authorDeviceId: IdSchema }),
  z.strictObject({ type: z.literal('role'), realmId: IdSchema, userId: IdSchema, role: z.enum(ROLES).nullable() }),
  z.strictObject({ type: z.literal('certificate'), index: z.number().int().positive() }),
  z.strictObject({ type: z.literal('keys'), realmId: IdSchema, keyIndex: z.number().int().positive() }),
  z.strictObject({ type: z.literal('invitation'), invitationId: IdSchema, status: z.string(), greeterUserId: IdSchema }),
]);
export type ServerEvent = z.infer<typeof ServerEventSchema>;
