// Secret rows: a team's named, sealed values (src/secrets/ seals them; this file never sees a
// value in clear). The table is in schema.ts. Plain SQL, as the rest of the store.
import type Database from 'better-sqlite3';

export interface SecretRow {
  id: string;
  team: string;
  /** Lower-cased, unique within the team. */
  name: string;
  /** 1 for a new secret; each new value adds one. */
  version: number;
  /** The current value, sealed (src/secrets/cipher.ts). */
  sealed: string;
  metadata: Record<string, string>;
  createdAt: number;
  updatedAt: number;
}

type Raw = Record<string, unknown>;

function toSecret(r: Raw): SecretRow {
  return {
    id: r.id as string,
    team: r.team as string,
    name: r.name as string,
    version: r.version as number,
    sealed: r.sealed as string,
    metadata: JSON.parse(r.metadata as string) as Record<string, string>,
    createdAt: r.created_at as number,
    updatedAt: r.updated_at as number,
  };
}

export interface SecretRepo {
  /** The team's secret by id (`sec_...`) or by lower-cased name; another team's is not found. */
  find(team: string, ref: string): SecretRow | undefined;
  /** A page of the team's secrets in name order, starting after `afterName`. */
  list(team: string, afterName: string | undefined, limit: number): SecretRow[];
  count(team: string): number;
  insert(row: SecretRow): void;
  /** Replaces the value (a new version) and the metadata. */
  update(row: Pick<SecretRow, 'id' | 'team' | 'version' | 'sealed' | 'metadata' | 'updatedAt'>): void;
  delete(team: string, id: string): boolean;
  /** Runs fn in one immediate transaction (a count and the insert it allows, together). */
  transaction<T>(fn: () => T): T;
}

export class SqliteSecretRepo implements SecretRepo {
  constructor(private readonly db: Database.Database) {}

  /** The team's secret by id (`sec_...`) or by lower-cased name; another team's is not found. */
  find(team: string, ref: string): SecretRow | undefined {
    const r = ref.startsWith('sec_')
      ? this.db.prepare('SELECT * FROM secrets WHERE team = ? AND id = ?').get(team, ref)
      : this.db.prepare('SELECT * FROM secrets WHERE team = ? AND name = ?').get(team, ref.toLowerCase());
    return r ? toSecret(r as Raw) : undefined;
  }

  /** A page of the team's secrets in name order, starting after `afterName`. */
  list(team: string, afterName: string | undefined, limit: number): SecretRow[] {
    const rows = this.db.prepare('SELECT * FROM secrets WHERE team = ? AND name > ? ORDER BY name LIMIT ?').all(team, afterName ?? '', limit) as Raw[];
    return rows.map(toSecret);
  }

  count(team: string): number {
    return (this.db.prepare('SELECT COUNT(*) AS n FROM secrets WHERE team = ?').get(team) as { n: number }).n;
  }

  insert(row: SecretRow): void {
    this.db
      .prepare('INSERT INTO secrets (id, team, name, version, sealed, metadata, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)')
      .run(row.id, row.team, row.name, row.version, row.sealed, JSON.stringify(row.metadata), row.createdAt, row.updatedAt);
  }

  /** Replaces the value (a new version) and the metadata. */
  update(row: Pick<SecretRow, 'id' | 'team' | 'version' | 'sealed' | 'metadata' | 'updatedAt'>): void {
    this.db
      .prepare('UPDATE secrets SET version = ?, sealed = ?, metadata = ?, updated_at = ? WHERE id = ? AND team = ?')
      .run(row.version, row.sealed, JSON.stringify(row.metadata), row.updatedAt, row.id, row.team);
  }

  delete(team: string, id: string): boolean {
    return this.db.prepare('DELETE FROM secrets WHERE team = ? AND id = ?').run(team, id).changes > 0;
  }

  /** Runs fn in one immediate transaction (a count and the insert it allows, together). */
  transaction<T>(fn: () => T): T {
    return this.db.transaction(fn).immediate();
  }
}
