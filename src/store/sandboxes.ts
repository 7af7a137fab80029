// The sandboxes table: one row per sandbox, its state and the spec it was created from.
import type Database from 'better-sqlite3';

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

export interface SandboxRepo {
  insert(row: SandboxRow): void;
  get(id: string): SandboxRow | undefined;
  /** Newest first. */
  list(): SandboxRow[];
  /** Sandboxes in one state (optionally of one template), oldest first. */
  inState(state: SandboxState, templateId?: string): SandboxRow[];
  update(id: string, fields: Partial<Omit<SandboxRow, 'id'>>): void;
  delete(id: string): void;
  usedUidSlots(): Set<number>;
  /** A team's sandboxes in the given states. */
  ofTeam(team: string, states: readonly SandboxState[]): SandboxRow[];
  countUsingTemplate(templateId: string): number;
  /** Id and spec of the sandboxes whose spec contains `text` (a coarse filter: callers parse the spec). */
  specsContaining(text: string): { id: string; spec: string }[];
  exists(id: string): boolean;
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

const COLUMNS: Record<keyof Omit<SandboxRow, 'id'>, string> = {
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

export class SqliteSandboxRepo implements SandboxRepo {
  constructor(private readonly db: Database.Database) {}

  insert(row: SandboxRow): void {
    this.db
      .prepare(
        `INSERT INTO sandboxes (id, template_id, team, state, state_deadline, runtime, uid_slot, pid, created_at, started_at, end_at, spec, last_error, attempts, next_attempt_at)
         VALUES (@id, @templateId, @team, @state, @stateDeadline, @runtime, @uidSlot, @pid, @createdAt, @startedAt, @endAt, @spec, @lastError, @attempts, @nextAttemptAt)`,
      )
      .run({ ...row, team: row.team ?? null });
  }

  get(id: string): SandboxRow | undefined {
    const r = this.db.prepare('SELECT * FROM sandboxes WHERE id = ?').get(id) as Raw | undefined;
    return r ? toSandbox(r) : undefined;
  }

  list(): SandboxRow[] {
    return (this.db.prepare('SELECT * FROM sandboxes ORDER BY created_at DESC, id').all() as Raw[]).map(toSandbox);
  }

  inState(state: SandboxState, templateId?: string): SandboxRow[] {
    const rows =
      templateId === undefined
        ? this.db.prepare('SELECT * FROM sandboxes WHERE state = ? ORDER BY created_at, id').all(state)
        : this.db.prepare('SELECT * FROM sandboxes WHERE state = ? AND template_id = ? ORDER BY created_at, id').all(state, templateId);
    return (rows as Raw[]).map(toSandbox);
  }

  update(id: string, fields: Partial<Omit<SandboxRow, 'id'>>): void {
    const keys = Object.keys(fields) as (keyof typeof COLUMNS)[];
    if (!keys.length) return;
    const sets = keys.map((k) => `${COLUMNS[k]} = @${k}`).join(', ');
    this.db.prepare(`UPDATE sandboxes SET ${sets} WHERE id = @id`).run({ ...fields, id });
  }

  delete(id: string): void {
    this.db.prepare('DELETE FROM sandboxes WHERE id = ?').run(id);
  }

  usedUidSlots(): Set<number> {
    const rows = this.db.prepare('SELECT uid_slot FROM sandboxes WHERE uid_slot IS NOT NULL').all() as { uid_slot: number }[];
    return new Set(rows.map((r) => r.uid_slot));
  }

  ofTeam(team: string, states: readonly SandboxState[]): SandboxRow[] {
    const marks = states.map(() => '?').join(', ');
    return (this.db.prepare(`SELECT * FROM sandboxes WHERE team = ? AND state IN (${marks})`).all(team, ...states) as Raw[]).map(toSandbox);
  }

  countUsingTemplate(templateId: string): number {
    return (this.db.prepare('SELECT COUNT(*) AS n FROM sandboxes WHERE template_id = ?').get(templateId) as { n: number }).n;
  }

  specsContaining(text: string): { id: string; spec: string }[] {
    return this.db.prepare('SELECT id, spec FROM sandboxes WHERE spec LIKE ?').all(`%${text}%`) as { id: string; spec: string }[];
  }

  exists(id: string): boolean {
    return (this.db.prepare('SELECT COUNT(*) AS n FROM sandboxes WHERE id = ?').get(id) as { n: number }).n > 0;
  }
}
