// The template builds of E2B's build API: one row per build (its template id and name, team,
// status and the reason of a failure), and its log lines in order.
import type Database from 'better-sqlite3';

export type BuildStatus = 'waiting' | 'building' | 'ready' | 'error';

export interface BuildRow {
  id: string;
  templateId: string;
  /** The template's name in its team's namespace. */
  name: string;
  /** '' for the host's own (public) builds. */
  team: string;
  status: BuildStatus;
  /** JSON: cpuCount, memoryMB, tags. */
  config: string;
  reason: string | null;
  /** The step that failed ('base', a step number, 'finalize'). */
  failedStep: string | null;
  createdAt: number;
  updatedAt: number;
  finishedAt: number | null;
}

export interface BuildLogRow {
  seq: number;
  at: number;
  level: 'debug' | 'info' | 'warn' | 'error';
  step: string | null;
  message: string;
}

export interface TemplateBuildRepo {
  insert(row: BuildRow): void;
  get(id: string): BuildRow | undefined;
  /** A team's builds of one template, newest first. */
  ofTemplate(templateId: string): BuildRow[];
  /** Builds in these states (all teams), oldest first. */
  inStatus(statuses: BuildStatus[]): BuildRow[];
  setStatus(id: string, status: BuildStatus, fields?: { reason?: string | null; failedStep?: string | null; finishedAt?: number | null }): void;
  /** Appends a log line; returns its sequence number (0-based within the build). */
  log(id: string, line: Omit<BuildLogRow, 'seq'>): number;
  /** Log lines from seq `offset` on, at most `limit`. */
  logs(id: string, offset: number, limit: number): BuildLogRow[];
  delete(id: string): void;
}

type Raw = Record<string, unknown>;

const toBuild = (r: Raw): BuildRow => ({
  id: r.id as string,
  templateId: r.template_id as string,
  name: r.name as string,
  team: r.team as string,
  status: r.status as BuildStatus,
  config: r.config as string,
  reason: (r.reason as string | null) ?? null,
  failedStep: (r.failed_step as string | null) ?? null,
  createdAt: Number(r.created_at),
  updatedAt: Number(r.updated_at),
  finishedAt: r.finished_at === null || r.finished_at === undefined ? null : Number(r.finished_at),
});

export class SqliteTemplateBuildRepo implements TemplateBuildRepo {
  constructor(private readonly db: Database.Database) {}

  insert(row: BuildRow): void {
    this.db
      .prepare(
        'INSERT INTO template_builds (id, template_id, name, team, status, config, reason, failed_step, created_at, updated_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
      )
      .run(row.id, row.templateId, row.name, row.team, row.status, row.config, row.reason, row.failedStep, row.createdAt, row.updatedAt, row.finishedAt);
  }

  get(id: string): BuildRow | undefined {
    const r = this.db.prepare('SELECT * FROM template_builds WHERE id = ?').get(id) as Raw | undefined;
    return r ? toBuild(r) : undefined;
  }

  ofTemplate(templateId: string): BuildRow[] {
    return (this.db.prepare('SELECT * FROM template_builds WHERE template_id = ? ORDER BY created_at DESC, id').all(templateId) as Raw[]).map(toBuild);
  }

  inStatus(statuses: BuildStatus[]): BuildRow[] {
    const marks = statuses.map(() => '?').join(', ');
    return (this.db.prepare(`SELECT * FROM template_builds WHERE status IN (${marks}) ORDER BY created_at, id`).all(...statuses) as Raw[]).map(toBuild);
  }

  setStatus(id: string, status: BuildStatus, fields: { reason?: string | null; failedStep?: string | null; finishedAt?: number | null } = {}): void {
    const cur = this.get(id);
    if (!cur) return;
    this.db
      .prepare('UPDATE template_builds SET status = ?, reason = ?, failed_step = ?, finished_at = ?, updated_at = ? WHERE id = ?')
      .run(
        status,
        fields.reason !== undefined ? fields.reason : cur.reason,
        fields.failedStep !== undefined ? fields.failedStep : cur.failedStep,
        fields.finishedAt !== undefined ? fields.finishedAt : cur.finishedAt,
        Date.now(),
        id,
      );
  }

  log(id: string, line: Omit<BuildLogRow, 'seq'>): number {
    const r = this.db.prepare('SELECT COALESCE(MAX(seq), -1) AS m FROM template_build_logs WHERE build_id = ?').get(id) as { m: number };
    const seq = Number(r.m) + 1;
    this.db
      .prepare('INSERT INTO template_build_logs (build_id, seq, at, level, step, message) VALUES (?, ?, ?, ?, ?, ?)')
      .run(id, seq, line.at, line.level, line.step, line.message);
    return seq;
  }

  logs(id: string, offset: number, limit: number): BuildLogRow[] {
    return (
      this.db
        .prepare('SELECT seq, at, level, step, message FROM template_build_logs WHERE build_id = ? AND seq >= ? ORDER BY seq LIMIT ?')
        .all(id, offset, limit) as Raw[]
    ).map((r) => ({
      seq: Number(r.seq),
      at: Number(r.at),
      level: r.level as BuildLogRow['level'],
      step: (r.step as string | null) ?? null,
      message: r.message as string,
    }));
  }

  delete(id: string): void {
    this.db.prepare('DELETE FROM template_build_logs WHERE build_id = ?').run(id);
    this.db.prepare('DELETE FROM template_builds WHERE id = ?').run(id);
  }
}
