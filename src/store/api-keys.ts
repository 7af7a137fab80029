// The api_keys table: API keys as SHA-256 hashes, each of a team (src/api/keys.ts makes and checks them).
import type Database from 'better-sqlite3';

export interface ApiKeyRow {
  id: string;
  name: string;
  /** The first characters of the key, for display and lookup by prefix. */
  prefix: string;
  /** SHA-256 of the key, hex. */
  hash: string;
  createdAt: number;
  lastUsedAt: number | null;
  revokedAt: number | null;
  /** The team's id (null only in rows from before teams, which the migration fills). */
  team: string | null;
  admin: boolean;
}

export interface KeyRepo {
  insert(row: ApiKeyRow): void;
  byHash(hash: string): ApiKeyRow | undefined;
  get(id: string): ApiKeyRow | undefined;
  /** Every key, revoked ones included, oldest first. */
  list(): ApiKeyRow[];
  /** Sets revokedAt unless the key is revoked already. */
  revoke(id: string, at: number): void;
  rename(id: string, name: string): void;
  /** Best effort: writes lastUsedAt unless another process holds the write lock (never waits for it). */
  touch(id: string, at: number): void;
  /** Whether the team has at least one API key that is not revoked. */
  teamHasLiveKey(team: string): boolean;
  /** The ids of the teams with at least one live key. */
  liveTeams(): Set<string>;
}

type Raw = {
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

const toKey = (r: Raw): ApiKeyRow => ({
  id: r.id,
  name: r.name,
  prefix: r.prefix,
  hash: r.hash,
  createdAt: Number(r.created_at),
  lastUsedAt: r.last_used_at === null ? null : Number(r.last_used_at),
  revokedAt: r.revoked_at === null ? null : Number(r.revoked_at),
  team: r.team_id,
  admin: Number(r.admin) === 1,
});

export class SqliteKeyRepo implements KeyRepo {
  // verify() reads a key on every request: its statements are prepared once, on first use
  private byHashStmt: Database.Statement<[string], Raw> | undefined;
  private touchStmt: Database.Statement<[number, string]> | undefined;
  private liveKeyStmt: Database.Statement | undefined;

  constructor(private readonly db: Database.Database) {}

  insert(k: ApiKeyRow): void {
    this.db
      .prepare('INSERT INTO api_keys (id, name, prefix, hash, created_at, last_used_at, revoked_at, team_id, admin) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)')
      .run(k.id, k.name, k.prefix, k.hash, k.createdAt, k.lastUsedAt, k.revokedAt, k.team, k.admin ? 1 : 0);
  }

  byHash(hash: string): ApiKeyRow | undefined {
    this.byHashStmt ??= this.db.prepare<[string], Raw>('SELECT * FROM api_keys WHERE hash = ?');
    const r = this.byHashStmt.get(hash);
    return r && toKey(r);
  }

  get(id: string): ApiKeyRow | undefined {
    const r = this.db.prepare<[string], Raw>('SELECT * FROM api_keys WHERE id = ?').get(id);
    return r && toKey(r);
  }

  list(): ApiKeyRow[] {
    return this.db.prepare<[], Raw>('SELECT * FROM api_keys ORDER BY created_at, id').all().map(toKey);
  }

  revoke(id: string, at: number): void {
    this.db.prepare('UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL').run(at, id);
  }

  rename(id: string, name: string): void {
    this.db.prepare('UPDATE api_keys SET name = ? WHERE id = ?').run(name, id);
  }

  touch(id: string, at: number): void {
    const previous = this.db.pragma('busy_timeout', { simple: true }) as number;
    try {
      if (previous !== 0) this.db.pragma('busy_timeout = 0');
      this.touchStmt ??= this.db.prepare<[number, string]>('UPDATE api_keys SET last_used_at = ? WHERE id = ?');
      this.touchStmt.run(at, id);
    } catch (err) {
      const code = (err as { code?: string }).code ?? '';
      if (!code.startsWith('SQLITE_BUSY') && !code.startsWith('SQLITE_LOCKED')) throw err;
    } finally {
      if (previous !== 0) this.db.pragma(`busy_timeout = ${Number(previous)}`);
    }
  }

  teamHasLiveKey(team: string): boolean {
    this.liveKeyStmt ??= this.db.prepare('SELECT 1 AS x FROM api_keys WHERE team_id = ? AND revoked_at IS NULL LIMIT 1');
    return this.liveKeyStmt.get(team) !== undefined;
  }

  liveTeams(): Set<string> {
    const rows = this.db.prepare<[], { team_id: string }>('SELECT DISTINCT team_id FROM api_keys WHERE revoked_at IS NULL AND team_id IS NOT NULL').all();
    return new Set(rows.map((r) => r.team_id));
  }
}
