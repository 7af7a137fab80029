// The teams table: a team's name and its quota overrides.
import type Database from 'better-sqlite3';

export interface TeamRow {
  id: string;
  name: string;
  createdAt: number;
  /** JSON of the quota overrides (unset limits take the defaults). */
  quota: string;
}

export interface TeamRepo {
  insert(row: TeamRow): void;
  /** The team whose id or name is `idOrName`. */
  get(idOrName: string): TeamRow | undefined;
  /** Oldest first. */
  list(): TeamRow[];
  setQuota(id: string, quota: string): void;
}

const toTeam = (r: Record<string, unknown>): TeamRow => ({
  id: r.id as string,
  name: r.name as string,
  createdAt: Number(r.created_at),
  quota: r.quota as string,
});

export class SqliteTeamRepo implements TeamRepo {
  constructor(private readonly db: Database.Database) {}

  insert(row: TeamRow): void {
    this.db.prepare('INSERT INTO teams (id, name, created_at, quota) VALUES (?, ?, ?, ?)').run(row.id, row.name, row.createdAt, row.quota);
  }

  get(idOrName: string): TeamRow | undefined {
    const r = this.db.prepare('SELECT * FROM teams WHERE id = ? OR name = ?').get(idOrName, idOrName) as Record<string, unknown> | undefined;
    return r ? toTeam(r) : undefined;
  }

  list(): TeamRow[] {
    return (this.db.prepare('SELECT * FROM teams ORDER BY created_at, id').all() as Record<string, unknown>[]).map(toTeam);
  }

  setQuota(id: string, quota: string): void {
    this.db.prepare('UPDATE teams SET quota = ? WHERE id = ?').run(quota, id);
  }
}
