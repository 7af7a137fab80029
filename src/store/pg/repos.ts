// The shared store's repositories on PostgreSQL. What SQLite got from one process holds across
// processes here: names are unique by constraint (a race has one winner, the other gets the
// same conflict error), a quota's read-modify-write holds the team's row lock (SELECT ... FOR
// UPDATE), a secret counted against its team's limit holds the team's advisory lock.
import type pg from 'pg';
import { conflict } from '../../util/errors.js';
import type { ApiKeyRow, SecretRow, SharedKeyRepo, SharedSecretRepo, SharedTeamRepo, TeamRow } from '../shared.js';
import { rows, transaction, uniqueViolation, type Queryable } from './pool.js';

/** The advisory lock class of a team's secrets (the second key is the team id's hash). */
const SECRETS_LOCK = 0x736563; // 'sec'

const num = (v: unknown): number => Number(v);
const numOrNull = (v: unknown): number | null => (v === null || v === undefined ? null : Number(v));

const toTeam = (r: Record<string, unknown>): TeamRow => ({
  id: r.id as string,
  name: r.name as string,
  createdAt: num(r.created_at),
  quota: r.quota as string,
});

const toKey = (r: Record<string, unknown>): ApiKeyRow => ({
  id: r.id as string,
  name: r.name as string,
  prefix: r.prefix as string,
  hash: r.hash as string,
  createdAt: num(r.created_at),
  lastUsedAt: numOrNull(r.last_used_at),
  revokedAt: numOrNull(r.revoked_at),
  team: r.team_id as string,
  admin: r.admin === true,
});

const toSecret = (r: Record<string, unknown>): SecretRow => ({
  id: r.id as string,
  team: r.team as string,
  name: r.name as string,
  version: num(r.version),
  sealed: r.sealed as string,
  metadata: JSON.parse(r.metadata as string) as Record<string, string>,
  createdAt: num(r.created_at),
  updatedAt: num(r.updated_at),
});

// an id match wins over a name match (a team may be named like another's id)
const TEAM_BY_REF = 'SELECT * FROM teams WHERE id = $1 OR name = $1 ORDER BY (id = $1) DESC LIMIT 1';

async function teamByRef(db: Queryable, ref: string, lock = false): Promise<TeamRow | undefined> {
  const [r] = await rows(db, TEAM_BY_REF + (lock ? ' FOR UPDATE' : ''), [ref]);
  return r && toTeam(r);
}

/** The team of ref, made by make(ref) when none exists; a concurrent maker's insert wins and is returned. */
async function ensureTeam(db: Queryable, ref: string, make: (ref: string) => TeamRow): Promise<TeamRow> {
  const found = await teamByRef(db, ref);
  if (found) return found;
  const t = make(ref);
  const [made] = await rows(db, 'INSERT INTO teams (id, name, created_at, quota) VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING RETURNING *', [
    t.id,
    t.name,
    t.createdAt,
    t.quota,
  ]);
  if (made) return toTeam(made);
  const winner = await teamByRef(db, t.name);
  if (!winner) throw conflict(`team '${t.name}' is being changed; try again`);
  return winner;
}

export class PgTeamRepo implements SharedTeamRepo {
  constructor(private readonly pool: pg.Pool) {}

  get(ref: string): Promise<TeamRow | undefined> {
    return teamByRef(this.pool, ref);
  }

  async list(): Promise<TeamRow[]> {
    return (await rows(this.pool, 'SELECT * FROM teams ORDER BY created_at, id')).map(toTeam);
  }

  ensure(ref: string, make: (ref: string) => TeamRow): Promise<TeamRow> {
    return ensureTeam(this.pool, ref, make);
  }

  changeQuota(ref: string, change: (quota: string) => string): Promise<TeamRow | undefined> {
    return transaction(this.pool, async (c) => {
      const row = await teamByRef(c, ref, true);
      if (!row) return undefined;
      const quota = change(row.quota);
      await rows(c, 'UPDATE teams SET quota = $1 WHERE id = $2', [quota, row.id]);
      return { ...row, quota };
    });
  }

  async withLiveKeys(): Promise<Set<string>> {
    const r = await rows<{ team_id: string }>(this.pool, 'SELECT DISTINCT team_id FROM api_keys WHERE revoked_at IS NULL');
    return new Set(r.map((x) => x.team_id));
  }

  /** Every team and whether it has a live key, in one statement (the directory's load). */
  async directory(): Promise<{ teams: TeamRow[]; live: Set<string> }> {
    const r = await rows(
      this.pool,
      'SELECT t.*, EXISTS (SELECT 1 FROM api_keys k WHERE k.team_id = t.id AND k.revoked_at IS NULL) AS live FROM teams t ORDER BY t.created_at, t.id',
    );
    return { teams: r.map(toTeam), live: new Set(r.filter((x) => x.live === true).map((x) => x.id as string)) };
  }
}

export class PgKeyRepo implements SharedKeyRepo {
  constructor(private readonly pool: pg.Pool) {}

  create(teamRef: string, make: (ref: string) => TeamRow, row: Omit<ApiKeyRow, 'team'>): Promise<{ key: ApiKeyRow; team: TeamRow }> {
    return transaction(this.pool, async (c) => {
      const team = await ensureTeam(c, teamRef, make);
      const key: ApiKeyRow = { ...row, team: team.id };
      await rows(
        c,
        'INSERT INTO api_keys (id, name, prefix, hash, created_at, last_used_at, revoked_at, team_id, admin) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)',
        [key.id, key.name, key.prefix, key.hash, key.createdAt, key.lastUsedAt, key.revokedAt, key.team, key.admin],
      );
      return { key, team };
    });
  }

  async byHash(hash: string): Promise<ApiKeyRow | undefined> {
    const [r] = await rows(this.pool, 'SELECT * FROM api_keys WHERE hash = $1', [hash]);
    return r && toKey(r);
  }

  async get(id: string): Promise<ApiKeyRow | undefined> {
    const [r] = await rows(this.pool, 'SELECT * FROM api_keys WHERE id = $1', [id]);
    return r && toKey(r);
  }

  async list(): Promise<ApiKeyRow[]> {
    return (await rows(this.pool, 'SELECT * FROM api_keys ORDER BY created_at, id')).map(toKey);
  }

  async revoke(id: string, at: number): Promise<void> {
    await rows(this.pool, 'UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL', [at, id]);
  }

  async rename(id: string, name: string): Promise<void> {
    await rows(this.pool, 'UPDATE api_keys SET name = $1 WHERE id = $2', [name, id]);
  }

  async touch(id: string, at: number): Promise<void> {
    // not awaited: a request never waits for the bookkeeping, nor fails with it
    this.pool.query('UPDATE api_keys SET last_used_at = $1 WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $1)', [at, id]).catch(() => {});
  }

  async teamHasLiveKey(team: string): Promise<boolean> {
    return (await rows(this.pool, 'SELECT 1 FROM api_keys WHERE team_id = $1 AND revoked_at IS NULL LIMIT 1', [team])).length > 0;
  }
}

export class PgSecretRepo implements SharedSecretRepo {
  constructor(private readonly pool: pg.Pool) {}

  async find(team: string, ref: string): Promise<SecretRow | undefined> {
    const [r] = ref.startsWith('sec_')
      ? await rows(this.pool, 'SELECT * FROM secrets WHERE team = $1 AND id = $2', [team, ref])
      : await rows(this.pool, 'SELECT * FROM secrets WHERE team = $1 AND name = $2', [team, ref.toLowerCase()]);
    return r && toSecret(r);
  }

  async list(team: string, afterName: string | undefined, limit: number): Promise<SecretRow[]> {
    // COLLATE "C": byte order, as SQLite compares, so pages follow the same order on both stores
    const r = await rows(this.pool, 'SELECT * FROM secrets WHERE team = $1 AND name COLLATE "C" > $2 ORDER BY name COLLATE "C" LIMIT $3', [
      team,
      afterName ?? '',
      limit,
    ]);
    return r.map(toSecret);
  }

  async count(team: string): Promise<number> {
    const [r] = await rows<{ n: string }>(this.pool, 'SELECT count(*) AS n FROM secrets WHERE team = $1', [team]);
    return Number(r?.n ?? 0);
  }

  insert(row: SecretRow, admit: (count: number) => void): Promise<void> {
    return transaction(this.pool, async (c) => {
      // the team's secrets are counted and added one maker at a time, across processes
      await rows(c, 'SELECT pg_advisory_xact_lock($1, hashtext($2))', [SECRETS_LOCK, row.team]);
      if ((await rows(c, 'SELECT 1 FROM secrets WHERE team = $1 AND name = $2', [row.team, row.name])).length)
        throw conflict(`secret '${row.name}' already exists`);
      const [n] = await rows<{ n: string }>(c, 'SELECT count(*) AS n FROM secrets WHERE team = $1', [row.team]);
      admit(Number(n?.n ?? 0));
      try {
        await c.query('INSERT INTO secrets (id, team, name, version, sealed, metadata, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)', [
          row.id,
          row.team,
          row.name,
          row.version,
          row.sealed,
          JSON.stringify(row.metadata),
          row.createdAt,
          row.updatedAt,
        ]);
      } catch (err) {
        if (uniqueViolation(err)) throw conflict(`secret '${row.name}' already exists`);
        throw err;
      }
    });
  }

  async update(row: Pick<SecretRow, 'id' | 'team' | 'version' | 'sealed' | 'metadata' | 'updatedAt'>): Promise<void> {
    await rows(this.pool, 'UPDATE secrets SET version = $1, sealed = $2, metadata = $3, updated_at = $4 WHERE id = $5 AND team = $6', [
      row.version,
      row.sealed,
      JSON.stringify(row.metadata),
      row.updatedAt,
      row.id,
      row.team,
    ]);
  }

  async delete(team: string, id: string): Promise<boolean> {
    const r = await rows(this.pool, 'DELETE FROM secrets WHERE team = $1 AND id = $2 RETURNING id', [team, id]);
    return r.length > 0;
  }
}
