// The resources table: the ledger of host resources each sandbox owns, written before each is made.
import type Database from 'better-sqlite3';

/** A kind of host resource ('dir', 'mount', 'network', ...): the kinds and their release are in src/sandbox/ledger.ts. */
export type ResourceKind = string;

export interface ResourceRow {
  sandboxId: string;
  kind: ResourceKind;
  name: string;
  createdAt: number;
}

export interface ResourceRepo {
  /** Records a resource before it is created, so that a crash leaves a record of it (idempotent). */
  record(sandboxId: string, kind: ResourceKind, name: string): void;
  forget(sandboxId: string, kind: ResourceKind, name: string): void;
  forgetAll(sandboxId: string): void;
  /** A sandbox's resources in the order they were recorded. */
  of(sandboxId: string): ResourceRow[];
  count(sandboxId: string): number;
  /** Sandbox ids that have ledger rows but no sandbox row (a crash between the two deletes). */
  orphanIds(): string[];
}

export class SqliteResourceRepo implements ResourceRepo {
  constructor(private readonly db: Database.Database) {}

  record(sandboxId: string, kind: ResourceKind, name: string): void {
    this.db
      .prepare('INSERT INTO resources (sandbox_id, kind, name, created_at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING')
      .run(sandboxId, kind, name, Date.now());
  }

  forget(sandboxId: string, kind: ResourceKind, name: string): void {
    this.db.prepare('DELETE FROM resources WHERE sandbox_id = ? AND kind = ? AND name = ?').run(sandboxId, kind, name);
  }

  forgetAll(sandboxId: string): void {
    this.db.prepare('DELETE FROM resources WHERE sandbox_id = ?').run(sandboxId);
  }

  of(sandboxId: string): ResourceRow[] {
    return (this.db.prepare('SELECT * FROM resources WHERE sandbox_id = ? ORDER BY rowid').all(sandboxId) as Record<string, unknown>[]).map((r) => ({
      sandboxId: r.sandbox_id as string,
      kind: r.kind as ResourceKind,
      name: r.name as string,
      createdAt: r.created_at as number,
    }));
  }

  count(sandboxId: string): number {
    return (this.db.prepare('SELECT COUNT(*) AS n FROM resources WHERE sandbox_id = ?').get(sandboxId) as { n: number }).n;
  }

  orphanIds(): string[] {
    return (
      this.db.prepare('SELECT DISTINCT sandbox_id FROM resources WHERE sandbox_id NOT IN (SELECT id FROM sandboxes)').all() as {
        sandbox_id: string;
      }[]
    ).map((r) => r.sandbox_id);
  }
}
