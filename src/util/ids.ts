import { randomBytes } from 'node:crypto';

const ALPHABET = 'abcdefghijklmnopqrstuvwxyz0123456789';

/** A random id of [a-z0-9] (E2B sandbox ids are 20 such characters). */
export function randomId(length = 20): string {
  const bytes = randomBytes(length * 2);
  let out = '';
  for (let i = 0; out.length < length && i < bytes.length; i++) {
    const b = bytes[i]!;
    if (b < 252) out += ALPHABET[b % 36]; // 252 = 7*36: no modulo bias
  }
  return out.length === length ? out : randomId(length);
}

export const SANDBOX_ID_RE = /^[a-z0-9]{1,64}$/;
export const NAME_RE = /^[a-z0-9][a-z0-9._-]{0,62}$/;
