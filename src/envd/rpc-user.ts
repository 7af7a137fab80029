// The user of a Connect request (contract 5.1).
import { Code, ConnectError } from '@connectrpc/connect';
import { basicAuthUser, lookupUser } from './auth.js';
import type { EnvdState } from './state.js';
import type { UserInfo } from './users.js';

/** The user of a Connect request; unauthenticated when the named user does not exist. */
export function rpcUser(state: EnvdState, headers: Headers): UserInfo {
  const name = basicAuthUser(headers.get('authorization'));
  const u = lookupUser(state, name);
  if (!u) throw new ConnectError(`invalid username: '${name || state.defaultUser}'`, Code.Unauthenticated);
  return u;
}
