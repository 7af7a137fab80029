// Sealing a secret's value with AES-256-GCM. The additional data binds a sealed value to its
// secret (team, id, version): a sealed value copied onto another row, another team's or an
// older version's, fails to open instead of decrypting under the wrong name.
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { SECRET_KEY_BYTES } from './key.js';

const PREFIX = 'v1:';
const IV_BYTES = 12;
const TAG_BYTES = 16;

/** What a sealed value belongs to. */
export interface SealedFor {
  team: string;
  secretId: string;
  version: number;
}

const aad = (f: SealedFor) => Buffer.from(JSON.stringify([f.team, f.secretId, f.version]));

/** `v1:` + base64(iv | tag | ciphertext): text, so that the store's schema stays plain portable SQL. */
export function seal(key: Buffer, value: string, f: SealedFor): string {
  if (key.length !== SECRET_KEY_BYTES) throw new Error('secret key must be 32 bytes');
  const iv = randomBytes(IV_BYTES);
  const c = createCipheriv('aes-256-gcm', key, iv);
  c.setAAD(aad(f));
  const ct = Buffer.concat([c.update(value, 'utf8'), c.final()]);
  return PREFIX + Buffer.concat([iv, c.getAuthTag(), ct]).toString('base64');
}

/** The value sealed for `f`; throws (without any of the value) if the key, the owner or the bytes differ. */
export function unseal(key: Buffer, sealed: string, f: SealedFor): string {
  if (!sealed.startsWith(PREFIX)) throw new Error('sealed secret has an unknown format');
  const raw = Buffer.from(sealed.slice(PREFIX.length), 'base64');
  if (raw.length < IV_BYTES + TAG_BYTES) throw new Error('sealed secret is too short');
  const d = createDecipheriv('aes-256-gcm', key, raw.subarray(0, IV_BYTES));
  d.setAAD(aad(f));
  d.setAuthTag(raw.subarray(IV_BYTES, IV_BYTES + TAG_BYTES));
  try {
    return Buffer.concat([d.update(raw.subarray(IV_BYTES + TAG_BYTES)), d.final()]).toString('utf8');
  } catch {
    throw new Error('sealed secret does not open with this key (wrong key, owner or version, or altered bytes)');
  }
}
