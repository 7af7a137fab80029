// The templates table: a template's layers and settings, names unique per team namespace.
import type Database from 'better-sqlite3';

export interface TemplateRow {
  id: string;
  name: string;
  layers: string[]; // layer directory names, topmost first
  config: string; // JSON settings (user, workdir, env, start command, limits)
  createdAt: number;
}

export interface TemplateRepo {
  /** The row's team namespace is the config's `team` ('' for public). */
  insert(row: TemplateRow): void;
  get(id: string): TemplateRow | undefined;
  /** Every template of that name (one per team namespace at most, '' being the public one). */
  named(name: string): TemplateRow[];
  /** By name. */
  list(): TemplateRow[];
  setConfig(id: string, config: string): void;
  /** New layers and settings (a rebuild): the id, name and team stay. */
  replace(id: string, layers: string[], config: string): void;
  delete(id: string): void;
}

type Raw = Record<string, unknown>;

function toTemplate(r: Raw): TemplateRow {
  return {
    id: r.id as string,
    name: r.name as string,
    layers: JSON.parse(r.layers as string) as string[],
    config: r.config as string,
    createdAt: r.created_at as number,
  };
}

export class SqliteTemplateRepo implements TemplateRepo {
  constructor(private readonly db: Database.Database) {}

  insert(row: TemplateRow): void {
    this.db
      .prepare('INSERT INTO templates (id, team, name, layers, config, created_at) VALUES (?, ?, ?, ?, ?, ?)')
      .run(row.id, (JSON.parse(row.config) as { team?: string }).team ?? '', row.name, JSON.stringify(row.layers), row.config, row.createdAt);
  }

  get(id: string): TemplateRow | undefined {
    const r = this.db.prepare('SELECT * FROM templates WHERE id = ?').get(id) as Raw | undefined;
    return r ? toTemplate(r) : undefined;
  }

  named(name: string): TemplateRow[] {
    return (this.db.prepare('SELECT * FROM templates WHERE name = ?').all(name) as Raw[]).map(toTemplate);
  }

  list(): TemplateRow[] {
    return (this.db.prepare('SELECT * FROM templates ORDER BY name').all() as Raw[]).map(toTemplate);
  }

  setConfig(id: string, config: string): void {
    this.db.prepare('UPDATE templates SET config = ? WHERE id = ?').run(config, id);
  }

  replace(id: string, layers: string[], config: string): void {
    this.db.prepare('UPDATE templates SET layers = ?, config = ? WHERE id = ?').run(JSON.stringify(layers), config, id);
  }

  delete(id: string): void {
    this.db.prepare('DELETE FROM templates WHERE id = ?').run(id);
  }
}
