// Sandbox ids as E2B's protocol spells them; shared by the host (manager, API, proxy) and envd.
// No host-only imports here: envd's bundle pulls this file in.
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

/** The characters of a sandbox id, as a pattern to embed (ours are 20 long; up to 64 are accepted). */
export const SANDBOX_ID_PATTERN = '[a-z0-9]{1,64}';

/** A whole string that is a sandbox id. */
export const SANDBOX_ID_RE = new RegExp(`^${SANDBOX_ID_PATTERN}$`);

/**
 * The sandbox id of `<id>` or `<id>-<clientID>` (the SDK's form), or undefined when what is left
 * is not an id.
 */
export function sandboxIdOf(raw: string): string | undefined {
  const v = raw.trim();
  const i = v.indexOf('-');
  const id = i > 0 ? v.slice(0, i) : v;
  return SANDBOX_ID_RE.test(id) ? id : undefined;
}
