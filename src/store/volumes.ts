// The volumes table: one row per persistent volume, written before its disk is made (the
// ledger of a volume's host resources: its directory, disk image and mount all follow from the id).
import type Database from 'better-sqlite3';

/** creating: the row is written, the disk is being made; ready: mounted on the host; deleting: being removed. */
export type VolumeState = 'creating' | 'ready' | 'deleting';

export interface VolumeRow {
  id: string;
  team: string | null;
  name: string;
  /** The bearer token of the volume content API (returned by GET /volumes/{id}, as E2B's is). */
  token: string;
  sizeMB: number;
  state: VolumeState;
  createdAt: number;
}

/** A volume mount of a sandbox, as its stored spec keeps it. */
export interface VolumeMountSpec {
  name: string;
  path: string;
  volumeId: string;
}

export interface VolumeRepo {
  insert(row: VolumeRow): void;
  get(id: string): VolumeRow | undefined;
  byName(team: string | null, name: string): VolumeRow | undefined;
  /** A team's volumes (all of them with team undefined), oldest first. */
  list(team?: string | null): VolumeRow[];
  setState(id: string, state: VolumeState): void;
  remove(id: string): void;
}

type Raw = Record<string, unknown>;

const toRow = (r: Raw): VolumeRow => ({
  id: r.id as string,
  team: (r.team as string | null) ?? null,
  name: r.name as string,
  token: r.token as string,
  sizeMB: r.size_mb as number,
  state: r.state as VolumeState,
  createdAt: r.created_at as number,
});

export class SqliteVolumeRepo implements VolumeRepo {
  constructor(private readonly db: Database.Database) {}

  insert(row: VolumeRow): void {
    this.db
      .prepare('INSERT INTO volumes (id, team, name, token, size_mb, state, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)')
      .run(row.id, row.team, row.name, row.token, row.sizeMB, row.state, row.createdAt);
  }

  get(id: string): VolumeRow | undefined {
    const r = this.db.prepare('SELECT * FROM volumes WHERE id = ?').get(id) as Raw | undefined;
    return r ? toRow(r) : undefined;
  }

  byName(team: string | null, name: string): VolumeRow | undefined {
    const r = this.db.prepare('SELECT * FROM volumes WHERE team IS ? AND name = ?').get(team, name) as Raw | undefined;
    return r ? toRow(r) : undefined;
  }

  list(team?: string | null): VolumeRow[] {
    const rows =
      team === undefined
        ? this.db.prepare('SELECT * FROM volumes ORDER BY created_at, id').all()
        : this.db.prepare('SELECT * FROM volumes WHERE team IS ? ORDER BY created_at, id').all(team);
    return (rows as Raw[]).map(toRow);
  }

  setState(id: string, state: VolumeState): void {
    this.db.prepare('UPDATE volumes SET state = ? WHERE id = ?').run(state, id);
  }

  remove(id: string): void {
    this.db.prepare('DELETE FROM volumes WHERE id = ?').run(id);
  }
}
