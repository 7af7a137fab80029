// API keys of the control plane: `e2b_` + 40 hex characters, stored as SHA-256 hashes only.
// Every key belongs to a team (E2B's model); an admin key manages every team's objects.
// The table lives in the instance's SQLite store (its schema and migrations: store.ts); the CLI (`cubebox keys ...`) and a running
// `cubebox serve` use it through separate connections (WAL), and verify() reads it on every
// request, so a key created or revoked by the CLI takes effect at once.
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type Database from 'better-sqlite3';
import { DEFAULT_TEAM_ID, migrateStore, type TeamRow } from '../store/store.js';
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

type Row = {
  id: string;
  name: string;
  prefix: string;
  hash: string;
  created_at: number;
  last_used_at: number | null;
  revoked_at: number | null;
  team_id: string | null;
  admin: number;
};

function toInfo(r: Row): ApiKeyInfo {
  return {
    id: r.id,
    name: r.name,
    prefix: r.prefix,
    createdAt: Number(r.created_at),
    lastUsedAt: r.last_used_at === null ? null : Number(r.last_used_at),
    revokedAt: r.revoked_at === null ? null : Number(r.revoked_at),
    team: r.team_id ?? DEFAULT_TEAM_ID,
    admin: Number(r.admin) === 1,
  };
}

export function hashApiKey(key: string): string {
  return createHash('sha256').update(key, 'utf8').digest('hex');
}

export class ApiKeys {
  private readonly byHash: Database.Statement<[string], Row>;
  private readonly touch: Database.Statement<[number, string]>;

  constructor(private readonly db: Database.Database) {
    migrateStore(db);
    this.byHash = db.prepare<[string], Row>('SELECT * FROM api_keys WHERE hash = ?');
    this.touch = db.prepare<[number, string]>('UPDATE api_keys SET last_used_at = ? WHERE id = ?');
  }

  /**
   * A new key of a team (by name or id; a name that no team has yet makes that team; default:
   * the default team). `admin` keys manage every team's objects.
   */
  create(name = '', opts: { team?: string; admin?: boolean } = {}): { key: string; info: ApiKeyInfo } {
    if (typeof name !== 'string' || name.length > 200) throw invalid('the key name must be a string of at most 200 characters');
    const key = 'e2b_' + randomBytes(20).toString('hex');
    const add = this.db.transaction(() => {
      const team = this.ensureTeam(opts.team ?? DEFAULT_TEAM_ID);
      const row: Row = {
        id: 'key_' + randomId(12),
        name,
        prefix: key.slice(0, PREFIX_LENGTH),
        hash: hashApiKey(key),
        created_at: Date.now(),
        last_used_at: null,
        revoked_at: null,
        team_id: team.id,
        admin: opts.admin ? 1 : 0,
      };
      this.db
        .prepare(
          'INSERT INTO api_keys (id, name, prefix, hash, created_at, last_used_at, revoked_at, team_id, admin) VALUES (@id, @name, @prefix, @hash, @created_at, @last_used_at, @revoked_at, @team_id, @admin)',
        )
        .run(row);
      return { key, info: toInfo(row) };
    });
    // immediate: a deferred transaction that reads, then writes fails at once ("database is
    // locked") when the running service wrote in between, instead of waiting for its turn
    return add.immediate();
  }

  /** The team named (by id or name), made when no team has that name. */
  ensureTeam(ref: string): TeamRow {
    const found = this.team(ref);
    if (found) return found;
    if (!TEAM_NAME_RE.test(ref)) throw invalid(`bad team name '${ref}': use 1-63 of [a-z0-9_.-], starting with a letter or digit`);
    const row: TeamRow = { id: 'team_' + randomId(12), name: ref, createdAt: Date.now(), quota: '{}' };
    this.db.prepare('INSERT INTO teams (id, name, created_at, quota) VALUES (?, ?, ?, ?)').run(row.id, row.name, row.createdAt, row.quota);
    return row;
  }

  team(ref: string): TeamRow | undefined {
    const r = this.db.prepare('SELECT * FROM teams WHERE id = ? OR name = ?').get(ref, ref) as
      { id: string; name: string; created_at: number; quota: string } | undefined;
    return r && { id: r.id, name: r.name, createdAt: Number(r.created_at), quota: r.quota };
  }

  /** Every key, revoked ones included, oldest first. */
  list(): ApiKeyInfo[] {
    return (this.db.prepare('SELECT * FROM api_keys ORDER BY created_at, id').all() as Row[]).map(toInfo);
  }

  /**
   * Revokes a key named by its id, by a prefix of the key (at least 'e2b_' + 4 hex, at most the
   * stored prefix), or by the whole key. Revoking a revoked key changes nothing.
   */
  revoke(idOrPrefix: string): ApiKeyInfo {
    const arg = (idOrPrefix ?? '').trim();
    if (!arg) throw invalid('name a key by its id or the first characters of the key');
    let matches: Row[];
    if (API_KEY_RE.test(arg)) {
      const r = this.byHash.get(hashApiKey(arg));
      matches = r ? [r] : [];
    } else {
      matches = this.db.prepare<[string], Row>('SELECT * FROM api_keys WHERE id = ?').all(arg);
      if (!matches.length && arg.startsWith('e2b_')) {
        if (arg.length < MIN_LOOKUP_PREFIX) throw invalid(`key prefix '${arg}' is too short: give at least ${MIN_LOOKUP_PREFIX} characters`);
        if (arg.length <= PREFIX_LENGTH) {
          matches = (this.db.prepare('SELECT * FROM api_keys ORDER BY created_at, id').all() as Row[]).filter((r) => r.prefix.startsWith(arg));
        }
      }
    }
    if (!matches.length) throw notFound(`no API key '${arg}'`);
    if (matches.length > 1) throw invalid(`'${arg}' matches several keys (${matches.map((m) => m.id).join(', ')}): use the key id`);
    const row = matches[0] as Row;
    if (row.revoked_at === null) {
      row.revoked_at = Date.now();
      this.db.prepare('UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL').run(row.revoked_at, row.id);
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
    const row = this.byHash.get(hash);
    if (!row) return undefined;
    if (!timingSafeEqual(Buffer.from(row.hash, 'hex'), Buffer.from(hash, 'hex'))) return undefined;
    if (row.revoked_at !== null) return undefined;
    const now = Date.now();
    if (row.last_used_at === null || now - Number(row.last_used_at) >= LAST_USED_RESOLUTION_MS) {
      row.last_used_at = now;
      this.touchQuietly(now, row.id);
    }
    return toInfo(row);
  }

  /** Best effort: never block a request behind another process's write lock. */
  private touchQuietly(now: number, id: string): void {
    const previous = this.db.pragma('busy_timeout', { simple: true }) as number;
    try {
      if (previous !== 0) this.db.pragma('busy_timeout = 0');
      this.touch.run(now, id);
    } catch (err) {
      const code = (err as { code?: string }).code ?? '';
      if (!code.startsWith('SQLITE_BUSY') && !code.startsWith('SQLITE_LOCKED')) throw err;
    } finally {
      if (previous !== 0) this.db.pragma(`busy_timeout = ${Number(previous)}`);
    }
  }
}
