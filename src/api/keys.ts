// API keys of the control plane: `e2b_` + 40 hex characters, stored as SHA-256 hashes only.
// The table lives in the instance's SQLite store; the CLI (`cubebox keys ...`) and a running
// `cubebox serve` use it through separate connections (WAL), and verify() reads it on every
// request, so a key created or revoked by the CLI takes effect at once.
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type Database from 'better-sqlite3';
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
}

export const API_KEY_RE = /^e2b_[0-9a-f]{40}$/;
const PREFIX_LENGTH = 12; // 'e2b_' + 8 hex
const MIN_LOOKUP_PREFIX = 8; // 'e2b_' + 4 hex: shorter prefixes are refused by revoke()
const LAST_USED_RESOLUTION_MS = 60_000;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS api_keys (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  prefix TEXT NOT NULL,
  hash TEXT NOT NULL UNIQUE,
  created_at BIGINT NOT NULL,
  last_used_at BIGINT,
  revoked_at BIGINT
);
`;

type Row = {
  id: string;
  name: string;
  prefix: string;
  hash: string;
  created_at: number;
  last_used_at: number | null;
  revoked_at: number | null;
};

function toInfo(r: Row): ApiKeyInfo {
  return {
    id: r.id,
    name: r.name,
    prefix: r.prefix,
    createdAt: Number(r.created_at),
    lastUsedAt: r.last_used_at === null ? null : Number(r.last_used_at),
    revokedAt: r.revoked_at === null ? null : Number(r.revoked_at),
  };
}

export function hashApiKey(key: string): string {
  return createHash('sha256').update(key, 'utf8').digest('hex');
}

export class ApiKeys {
  private readonly byHash: Database.Statement<[string], Row>;
  private readonly touch: Database.Statement<[number, string]>;

  constructor(private readonly db: Database.Database) {
    db.exec(SCHEMA);
    this.byHash = db.prepare<[string], Row>('SELECT * FROM api_keys WHERE hash = ?');
    this.touch = db.prepare<[number, string]>('UPDATE api_keys SET last_used_at = ? WHERE id = ?');
  }

  create(name = ''): { key: string; info: ApiKeyInfo } {
    if (typeof name !== 'string' || name.length > 200) throw invalid('the key name must be a string of at most 200 characters');
    const key = 'e2b_' + randomBytes(20).toString('hex');
    const row: Row = {
      id: 'key_' + randomId(12),
      name,
      prefix: key.slice(0, PREFIX_LENGTH),
      hash: hashApiKey(key),
      created_at: Date.now(),
      last_used_at: null,
      revoked_at: null,
    };
    this.db
      .prepare('INSERT INTO api_keys (id, name, prefix, hash, created_at, last_used_at, revoked_at) VALUES (@id, @name, @prefix, @hash, @created_at, @last_used_at, @revoked_at)')
      .run(row);
    return { key, info: toInfo(row) };
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
