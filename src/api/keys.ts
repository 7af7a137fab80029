// API keys of the control plane: `e2b_` + 40 hex characters, stored as SHA-256 hashes only.
// Every key belongs to a team (E2B's model); an admin key manages every team's objects.
// The table lives in the instance's SQLite store (its schema and migrations: store/schema.ts, its queries: store/api-keys.ts); the CLI (`cubebox keys ...`) and a running
// `cubebox serve` use it through separate connections (WAL), and verify() reads it on every
// request, so a key created or revoked by the CLI takes effect at once.
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { DEFAULT_TEAM_ID, type ApiKeyRow, type Repositories, type TeamRow } from '../store/store.js';
import { invalid, notFound } from '../util/errors.js';
import { randomId } from '../util/ids.js';

export interface ApiKeyInfo {
  id: string;
  name: string;
  /** The first characters of the key ('e2b_' + 8 hex), for display. */
  prefix: string;
  createdAt: number;
  lastUsedAt: number | null;
  revokedAt: number | null;
  /** The team's id. */
  team: string;
  /** Manages every team's sandboxes, snapshots and templates. */
  admin: boolean;
}

export const API_KEY_RE = /^e2b_[0-9a-f]{40}$/;
const PREFIX_LENGTH = 12; // 'e2b_' + 8 hex
const MIN_LOOKUP_PREFIX = 8; // 'e2b_' + 4 hex: shorter prefixes are refused by revoke()
const LAST_USED_RESOLUTION_MS = 60_000;

/** Team names: what `--team` takes and GET /teams shows. */
export const TEAM_NAME_RE = /^[a-z0-9][a-z0-9_.-]{0,62}$/;

function toInfo(r: ApiKeyRow): ApiKeyInfo {
  return {
    id: r.id,
    name: r.name,
    prefix: r.prefix,
    createdAt: r.createdAt,
    lastUsedAt: r.lastUsedAt,
    revokedAt: r.revokedAt,
    team: r.team ?? DEFAULT_TEAM_ID,
    admin: r.admin,
  };
}

export function hashApiKey(key: string): string {
  return createHash('sha256').update(key, 'utf8').digest('hex');
}

/** What the keys need of the store: the two tables, and immediate transactions across them. */
export type KeyStore = Pick<Repositories, 'keys' | 'teams' | 'immediate'>;

export class ApiKeys {
  constructor(private readonly store: KeyStore) {}

  /**
   * A new key of a team (by name or id; a name that no team has yet makes that team; default:
   * the default team). `admin` keys manage every team's objects.
   */
  create(name = '', opts: { team?: string; admin?: boolean } = {}): { key: string; info: ApiKeyInfo } {
    if (typeof name !== 'string' || name.length > 200) throw invalid('the key name must be a string of at most 200 characters');
    const key = 'e2b_' + randomBytes(20).toString('hex');
    // immediate: a deferred transaction that reads, then writes fails at once ("database is
    // locked") when the running service wrote in between, instead of waiting for its turn
    return this.store.immediate(() => {
      const team = this.ensureTeam(opts.team ?? DEFAULT_TEAM_ID);
      const row: ApiKeyRow = {
        id: 'key_' + randomId(12),
        name,
        prefix: key.slice(0, PREFIX_LENGTH),
        hash: hashApiKey(key),
        createdAt: Date.now(),
        lastUsedAt: null,
        revokedAt: null,
        team: team.id,
        admin: !!opts.admin,
      };
      this.store.keys.insert(row);
      return { key, info: toInfo(row) };
    });
  }

  /** The team named (by id or name), made when no team has that name. */
  ensureTeam(ref: string): TeamRow {
    const found = this.team(ref);
    if (found) return found;
    if (!TEAM_NAME_RE.test(ref)) throw invalid(`bad team name '${ref}': use 1-63 of [a-z0-9_.-], starting with a letter or digit`);
    const row: TeamRow = { id: 'team_' + randomId(12), name: ref, createdAt: Date.now(), quota: '{}' };
    this.store.teams.insert(row);
    return row;
  }

  team(ref: string): TeamRow | undefined {
    return this.store.teams.get(ref);
  }

  /** Every key, revoked ones included, oldest first. */
  list(): ApiKeyInfo[] {
    return this.store.keys.list().map(toInfo);
  }

  /**
   * Revokes a key named by its id, by a prefix of the key (at least 'e2b_' + 4 hex, at most the
   * stored prefix), or by the whole key. Revoking a revoked key changes nothing.
   */
  revoke(idOrPrefix: string): ApiKeyInfo {
    const arg = (idOrPrefix ?? '').trim();
    if (!arg) throw invalid('name a key by its id or the first characters of the key');
    let matches: ApiKeyRow[];
    if (API_KEY_RE.test(arg)) {
      const r = this.store.keys.byHash(hashApiKey(arg));
      matches = r ? [r] : [];
    } else {
      const r = this.store.keys.get(arg);
      matches = r ? [r] : [];
      if (!matches.length && arg.startsWith('e2b_')) {
        if (arg.length < MIN_LOOKUP_PREFIX) throw invalid(`key prefix '${arg}' is too short: give at least ${MIN_LOOKUP_PREFIX} characters`);
        if (arg.length <= PREFIX_LENGTH) {
          matches = this.store.keys.list().filter((r) => r.prefix.startsWith(arg));
        }
      }
    }
    if (!matches.length) throw notFound(`no API key '${arg}'`);
    if (matches.length > 1) throw invalid(`'${arg}' matches several keys (${matches.map((m) => m.id).join(', ')}): use the key id`);
    const row = matches[0] as ApiKeyRow;
    if (row.revokedAt === null) {
      row.revokedAt = Date.now();
      this.store.keys.revoke(row.id, row.revokedAt);
    }
    return toInfo(row);
  }

  /**
   * The key's info when it is a live key, else undefined. The lookup is by the key's SHA-256
   * (an index search on the hash leaks nothing usable about the key) and the stored hash is
   * compared in constant time. lastUsedAt is written at most once a minute per key.
   */
  verify(key: string | undefined): ApiKeyInfo | undefined {
    if (typeof key !== 'string' || !API_KEY_RE.test(key)) return undefined;
    const hash = hashApiKey(key);
    const row = this.store.keys.byHash(hash);
    if (!row) return undefined;
    if (!timingSafeEqual(Buffer.from(row.hash, 'hex'), Buffer.from(hash, 'hex'))) return undefined;
    if (row.revokedAt !== null) return undefined;
    const now = Date.now();
    if (row.lastUsedAt === null || now - row.lastUsedAt >= LAST_USED_RESOLUTION_MS) {
      row.lastUsedAt = now;
      this.store.keys.touch(row.id, now); // best effort: never blocks a request behind another process's write lock
    }
    return toInfo(row);
  }
}
