// Who a request acts as, and the access token checks (contract 5.1, 5.3). No Connect imports:
// /health and /init load this before the Connect services (loaded on first use, services.ts).
import { safeEqual } from '../protocol/signature.js';
import type { EnvdState } from './state.js';
import type { UserInfo } from './users.js';

/** The user named by `Authorization: Basic base64("<user>:")`, if any. */
export function basicAuthUser(header: string | null | undefined): string | undefined {
  if (!header) return undefined;
  const m = /^\s*basic\s+(\S+)\s*$/i.exec(header);
  if (!m?.[1]) return undefined;
  const decoded = Buffer.from(m[1], 'base64').toString('utf8');
  const i = decoded.indexOf(':');
  const name = i >= 0 ? decoded.slice(0, i) : decoded;
  return name || undefined;
}

/** Resolve a user by name (or the default user); undefined when unknown. */
export function lookupUser(state: EnvdState, name: string | undefined): UserInfo | undefined {
  return state.users.lookup(name || state.defaultUser);
}

/** Token check: undefined when allowed, else the error message. */
export function checkToken(state: EnvdState, presented: string | null | undefined): string | undefined {
  if (!state.accessToken) return undefined;
  if (presented === undefined || presented === null || presented === '') return 'missing access token';
  if (!safeEqual(presented, state.accessToken)) return 'invalid access token';
  return undefined;
}
