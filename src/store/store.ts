import { chmodSync } from 'node:fs';
import Database from 'better-sqlite3';
import { migrateStore } from './schema.js';

/** The states a sandbox row can be in; their transitions, deadlines and E2B names are in src/sandbox/states.ts. */
export type SandboxState =
  | 'creating'
  | 'pooled' // prepared ahead of requests (warm pool): envd answers, no identity yet
  | 'running'
  | 'pausing'
  | 'paused'
  | 'resuming'
  | 'stopped' // PID 1 exited or the sandbox died; resources remain until delete
  | 'failed' // an operation failed; delete (or the reconciler) reclaims it
  | 'deleting';

export const SANDBOX_STATES: readonly SandboxState[] = ['creating', 'pooled', 'running', 'pausing', 'paused', 'resuming', 'stopped', 'failed', 'deleting'];

/**
 * The embedded store: sandboxes, templates, and the ledger of host resources each
 * sandbox owns. Plain SQL kept to what PostgreSQL also speaks (TEXT, BIGINT, INTEGER,
 * ON CONFLICT), so a cluster store can take the same schema.
 */

export type ResourceKind = 'dir' | 'mount' | 'cgroup' | 'container' | 'uidrange';

export interface SandboxRow {
  id: string;
  templateId: string;
  /** The owning team (API creates); null for sandboxes made on the host (CLI) and pooled ones. */
  team?: string | null;
  state: SandboxState;
  stateDeadline: number | null; // ms epoch: the reconciler acts when a transitional state outlives it
  runtime: string;
  uidSlot: number | null;
  pid: number | null; // informational only: never signalled
  createdAt: number;
  startedAt: number | null;
  endAt: number | null;
  spec: string; // JSON of the creation request (limits, metadata, env, ...)
  lastError: string | null;
  attempts: number;
  nextAttemptAt: number | null;
}

export interface ResourceRow {
  sandboxId: string;
  kind: ResourceKind;
  name: string;
  createdAt: number;
}

export interface TemplateRow {
  id: string;
  name: string;
  layers: string[]; // layer directory names, topmost first
  config: string; // JSON settings (user, workdir, env, start command, limits)
  createdAt: number;
}

export { DEFAULT_TEAM_ID, DEFAULT_TEAM_NAME, migrateStore, SCHEMA_VERSION } from './schema.js';

export interface TeamRow {
  id: string;
  name: string;
  createdAt: number;
  /** JSON of the quota overrides (unset limits take the defaults). */
  quota: string;
}

type Raw = Record<string, unknown>;

function toSandbox(r: Raw): SandboxRow {
  return {
    id: r.id as string,
    templateId: r.template_id as string,
    team: (r.team as string | null) ?? null,
    state: r.state as SandboxState,
    stateDeadline: (r.state_deadline as number | null) ?? null,
    runtime: r.runtime as string,
    uidSlot: (r.uid_slot as number | null) ?? null,
    pid: (r.pid as number | null) ?? null,
    createdAt: r.created_at as number,
    startedAt: (r.started_at as number | null) ?? null,
    endAt: (r.end_at as number | null) ?? null,
    spec: r.spec as string,
    lastError: (r.last_error as string | null) ?? null,
    attempts: r.attempts as number,
    nextAttemptAt: (r.next_attempt_at as number | null) ?? null,
  };
}

function toTemplate(r: Raw): TemplateRow {
  return {
    id: r.id as string,
    name: r.name as string,
    layers: JSON.parse(r.layers as string) as string[],
    config: r.config as string,
    createdAt: r.created_at as number,
  };
}

export class Store {
  readonly db: Database.Database;

  constructor(file: string) {
    this.db = new Database(file);
    // API key hashes and envd access tokens live here: root only (SQLite gives its
    // -wal and -shm files the database file's permissions)
    chmodSync(file, 0o600);
    // first: every later statement, the journal mode switch included, may meet the running
    // service's lock and must wait for it rather than fail with "database is locked"
    this.db.pragma('busy_timeout = 5000');
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = NORMAL');
    migrateStore(this.db);
  }

  close(): void {
    this.db.close();
  }

  transaction<T>(fn: () => T): T {
    return this.db.transaction(fn)();
  }

  // --- sandboxes ---
  insertSandbox(row: SandboxRow): void {
    this.db
      .prepare(
        `INSERT INTO sandboxes (id, template_id, team, state, state_deadline, runtime, uid_slot, pid, created_at, started_at, end_at, spec, last_error, attempts, next_attempt_at)
         VALUES (@id, @templateId, @team, @state, @stateDeadline, @runtime, @uidSlot, @pid, @createdAt, @startedAt, @endAt, @spec, @lastError, @attempts, @nextAttemptAt)`,
      )
      .run({ ...row, team: row.team ?? null });
  }

  getSandbox(id: string): SandboxRow | undefined {
    const r = this.db.prepare('SELECT * FROM sandboxes WHERE id = ?').get(id) as Raw | undefined;
    return r ? toSandbox(r) : undefined;
  }

  listSandboxes(): SandboxRow[] {
    return (this.db.prepare('SELECT * FROM sandboxes ORDER BY created_at DESC, id').all() as Raw[]).map(toSandbox);
  }

  /** Sandboxes in one state (optionally of one template), oldest first: a pool's, without reading every row. */
  sandboxesInState(state: SandboxState, templateId?: string): SandboxRow[] {
    const rows =
      templateId === undefined
        ? this.db.prepare('SELECT * FROM sandboxes WHERE state = ? ORDER BY created_at, id').all(state)
        : this.db.prepare('SELECT * FROM sandboxes WHERE state = ? AND template_id = ? ORDER BY created_at, id').all(state, templateId);
    return (rows as Raw[]).map(toSandbox);
  }

  updateSandbox(id: string, fields: Partial<Omit<SandboxRow, 'id'>>): void {
    const cols: Record<string, string> = {
      templateId: 'template_id',
      team: 'team',
      state: 'state',
      stateDeadline: 'state_deadline',
      runtime: 'runtime',
      uidSlot: 'uid_slot',
      pid: 'pid',
      createdAt: 'created_at',
      startedAt: 'started_at',
      endAt: 'end_at',
      spec: 'spec',
      lastError: 'last_error',
      attempts: 'attempts',
      nextAttemptAt: 'next_attempt_at',
    };
    const keys = Object.keys(fields);
    if (!keys.length) return;
    const sets = keys.map((k) => `${cols[k]} = @${k}`).join(', ');
    this.db.prepare(`UPDATE sandboxes SET ${sets} WHERE id = @id`).run({ ...fields, id });
  }

  deleteSandbox(id: string): void {
    this.transaction(() => {
      this.db.prepare('DELETE FROM resources WHERE sandbox_id = ?').run(id);
      this.db.prepare('DELETE FROM sandboxes WHERE id = ?').run(id);
    });
  }

  usedUidSlots(): Set<number> {
    const rows = this.db.prepare('SELECT uid_slot FROM sandboxes WHERE uid_slot IS NOT NULL').all() as { uid_slot: number }[];
    return new Set(rows.map((r) => r.uid_slot));
  }

  /** A team's sandboxes in the given states (for quota accounting). */
  teamSandboxes(team: string, states: readonly SandboxState[]): SandboxRow[] {
    const marks = states.map(() => '?').join(', ');
    return (this.db.prepare(`SELECT * FROM sandboxes WHERE team = ? AND state IN (${marks})`).all(team, ...states) as Raw[]).map(toSandbox);
  }

  // --- teams ---
  insertTeam(row: TeamRow): void {
    this.db.prepare('INSERT INTO teams (id, name, created_at, quota) VALUES (?, ?, ?, ?)').run(row.id, row.name, row.createdAt, row.quota);
  }

  getTeam(idOrName: string): TeamRow | undefined {
    const r = this.db.prepare('SELECT * FROM teams WHERE id = ? OR name = ?').get(idOrName, idOrName) as Raw | undefined;
    return r ? { id: r.id as string, name: r.name as string, createdAt: Number(r.created_at), quota: r.quota as string } : undefined;
  }

  listTeams(): TeamRow[] {
    return (this.db.prepare('SELECT * FROM teams ORDER BY created_at, id').all() as Raw[]).map((r) => ({
      id: r.id as string,
      name: r.name as string,
      createdAt: Number(r.created_at),
      quota: r.quota as string,
    }));
  }

  setTeamQuota(id: string, quota: string): void {
    this.db.prepare('UPDATE teams SET quota = ? WHERE id = ?').run(quota, id);
  }

  /** Whether the team has at least one API key that is not revoked (a team without one is blocked). */
  teamHasLiveKey(team: string): boolean {
    this.liveKeyStmt ??= this.db.prepare('SELECT 1 AS x FROM api_keys WHERE team_id = ? AND revoked_at IS NULL LIMIT 1');
    return this.liveKeyStmt.get(team) !== undefined;
  }
  private liveKeyStmt: Database.Statement | undefined;

  // --- ledger ---
  /** Records a resource before it is created, so that a crash leaves a record of it. */
  recordResource(sandboxId: string, kind: ResourceKind, name: string): void {
    this.db
      .prepare('INSERT INTO resources (sandbox_id, kind, name, created_at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING')
      .run(sandboxId, kind, name, Date.now());
  }

  forgetResource(sandboxId: string, kind: ResourceKind, name: string): void {
    this.db.prepare('DELETE FROM resources WHERE sandbox_id = ? AND kind = ? AND name = ?').run(sandboxId, kind, name);
  }

  resources(sandboxId: string): ResourceRow[] {
    return (this.db.prepare('SELECT * FROM resources WHERE sandbox_id = ? ORDER BY created_at, kind, name').all(sandboxId) as Raw[]).map((r) => ({
      sandboxId: r.sandbox_id as string,
      kind: r.kind as ResourceKind,
      name: r.name as string,
      createdAt: r.created_at as number,
    }));
  }

  /** Sandbox ids that have ledger rows but no sandbox row (a crash between the two deletes). */
  orphanLedgerIds(): string[] {
    return (
      this.db.prepare('SELECT DISTINCT sandbox_id FROM resources WHERE sandbox_id NOT IN (SELECT id FROM sandboxes)').all() as {
        sandbox_id: string;
      }[]
    ).map((r) => r.sandbox_id);
  }

  countRows(sandboxId: string): { sandboxes: number; resources: number } {
    const s = this.db.prepare('SELECT COUNT(*) AS n FROM sandboxes WHERE id = ?').get(sandboxId) as { n: number };
    const r = this.db.prepare('SELECT COUNT(*) AS n FROM resources WHERE sandbox_id = ?').get(sandboxId) as { n: number };
    return { sandboxes: s.n, resources: r.n };
  }

  // --- templates ---
  insertTemplate(row: TemplateRow): void {
    this.db
      .prepare('INSERT INTO templates (id, team, name, layers, config, created_at) VALUES (?, ?, ?, ?, ?, ?)')
      .run(row.id, (JSON.parse(row.config) as { team?: string }).team ?? '', row.name, JSON.stringify(row.layers), row.config, row.createdAt);
  }

  getTemplate(id: string): TemplateRow | undefined {
    const r = this.db.prepare('SELECT * FROM templates WHERE id = ?').get(id) as Raw | undefined;
    return r ? toTemplate(r) : undefined;
  }

  /** Every template of that name (one per team namespace at most, '' being the public one). */
  templatesNamed(name: string): TemplateRow[] {
    return (this.db.prepare('SELECT * FROM templates WHERE name = ?').all(name) as Raw[]).map(toTemplate);
  }

  listTemplates(): TemplateRow[] {
    return (this.db.prepare('SELECT * FROM templates ORDER BY name').all() as Raw[]).map(toTemplate);
  }

  updateTemplateConfig(id: string, config: string): void {
    this.db.prepare('UPDATE templates SET config = ? WHERE id = ?').run(config, id);
  }

  deleteTemplate(id: string): void {
    this.db.prepare('DELETE FROM templates WHERE id = ?').run(id);
  }

  sandboxesUsingTemplate(id: string): number {
    return (this.db.prepare('SELECT COUNT(*) AS n FROM sandboxes WHERE template_id = ?').get(id) as { n: number }).n;
  }
}

/**
 * One manager owns a data directory at a time. The lock is an SQLite database held in
 * exclusive locking mode: the kernel drops the underlying fcntl lock when the process
 * dies, however it dies, so a crashed manager never leaves a stale lock.
 */
export class ManagerLock {
  private db: Database.Database | undefined;

  constructor(private readonly file: string) {}

  tryAcquire(): boolean {
    const db = new Database(this.file);
    try {
      db.pragma('busy_timeout = 0');
      db.pragma('locking_mode = EXCLUSIVE');
      db.exec('BEGIN EXCLUSIVE; CREATE TABLE IF NOT EXISTS owner (pid INTEGER); DELETE FROM owner; INSERT INTO owner VALUES (' + process.pid + '); COMMIT;');
      this.db = db;
      return true;
    } catch (err) {
      db.close();
      if ((err as { code?: string }).code === 'SQLITE_BUSY') return false;
      throw err;
    }
  }

  release(): void {
    this.db?.close();
    this.db = undefined;
  }
}
