import { z } from 'zod';
import { fillRandom } from '../crypto/random.js';

/** Every id in Coffer is 16 random bytes as lowercase hex: unguessable and carries no meaning. */
export const ID_PATTERN = /^[0-9a-f]{32}$/;

export type EntryId = string;
export type BlockId = string;
export type RealmId = string;
export type DeviceId = string;
export type UserId = string;

const idBytes = Buffer.alloc(16);

export function newId(): string {
  fillRandom(idBytes);
  return idBytes.toString('hex');
}

export const IdSchema: z.ZodType<string> = z
  .string()
  .regex(ID_PATTERN, 'must be an id: 32 lowercase hex characters');
