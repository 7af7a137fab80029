// The store's schema and its versioned migrations.
import type Database from 'better-sqlite3';

const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- team '': public (built-in and host-made); a team's names live in its own namespace
CREATE TABLE IF NOT EXISTS templates (
  id TEXT PRIMARY KEY,
  team TEXT NOT NULL DEFAULT '',
  name TEXT NOT NULL,
  layers TEXT NOT NULL,
  config TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  UNIQUE (team, name)
);
CREATE TABLE IF NOT EXISTS sandboxes (
  id TEXT PRIMARY KEY,
  template_id TEXT NOT NULL,
  state TEXT NOT NULL,
  state_deadline BIGINT,
  runtime TEXT NOT NULL,
  uid_slot INTEGER UNIQUE,
  pid INTEGER,
  created_at BIGINT NOT NULL,
  started_at BIGINT,
  end_at BIGINT,
  spec TEXT NOT NULL,
  last_error TEXT,
  attempts INTEGER NOT NULL DEFAULT 0,
  next_attempt_at BIGINT
);
CREATE TABLE IF NOT EXISTS resources (
  sandbox_id TEXT NOT NULL,
  kind TEXT NOT NULL,
  name TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  PRIMARY KEY (sandbox_id, kind, name)
);
-- the network ledger: a slot (namespace, veth pair, address, nft chain and sets) is recorded
-- before any of it is made, and its row goes only after all of it is gone
CREATE TABLE IF NOT EXISTS net_slots (
  slot INTEGER PRIMARY KEY,
  state TEXT NOT NULL,
  sandbox_id TEXT UNIQUE,
  created_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS secrets (
  id TEXT PRIMARY KEY,
  team TEXT NOT NULL,
  name TEXT NOT NULL,
  version INTEGER NOT NULL,
  sealed TEXT NOT NULL,
  metadata TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL,
  UNIQUE (team, name)
);
CREATE TABLE IF NOT EXISTS volumes (
  id TEXT PRIMARY KEY,
  team TEXT,
  name TEXT NOT NULL,
  token TEXT NOT NULL,
  size_mb INTEGER NOT NULL,
  state TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  UNIQUE (team, name)
);
`;

/** The schema version this code writes; migrate() brings older stores up to it. */
export const SCHEMA_VERSION = 4;

/** The team that keys and sandboxes made before teams existed belong to. */
export const DEFAULT_TEAM_ID = 'team_default';
export const DEFAULT_TEAM_NAME = 'default';

/**
 * Brings a store to SCHEMA_VERSION, one step at a time, each in an immediate transaction
 * (a second process opening the same store waits, then finds the work done). Idempotent.
 *   1 -> 2: teams; API keys move here and get a team (existing ones: the default team) and
 *           an admin flag; sandboxes get a team column (existing ones: the default team);
 *           snapshots made through the API before teams belong to the default team.
 *   2 -> 3: template names are unique per team (a team column, copied from the config's team).
 *   3 -> 4: template builds of the E2B build API and their log lines.
 */
export function migrateStore(db: Database.Database): void {
  db.exec(SCHEMA);
  const version = (): number => {
    const r = db.prepare("SELECT value FROM meta WHERE key = 'schema_version'").get() as { value: string } | undefined;
    return r ? Number(r.value) : 1;
  };
  if (version() >= SCHEMA_VERSION) return;
  db.transaction(() => {
    if (version() >= SCHEMA_VERSION) return;
    const columns = (table: string) => new Set((db.prepare(`PRAGMA table_info(${table})`).all() as { name: string }[]).map((c) => c.name));
    if (version() < 2) {
      db.exec(`
        CREATE TABLE IF NOT EXISTS teams (
          id TEXT PRIMARY KEY,
          name TEXT NOT NULL UNIQUE,
          created_at BIGINT NOT NULL,
          quota TEXT NOT NULL DEFAULT '{}'
        );
        CREATE TABLE IF NOT EXISTS api_keys (
          id TEXT PRIMARY KEY,
          name TEXT NOT NULL,
          prefix TEXT NOT NULL,
          hash TEXT NOT NULL UNIQUE,
          created_at BIGINT NOT NULL,
          last_used_at BIGINT,
          revoked_at BIGINT
        );
      `);
      const keyCols = columns('api_keys');
      if (!keyCols.has('team_id')) db.exec('ALTER TABLE api_keys ADD COLUMN team_id TEXT');
      if (!keyCols.has('admin')) db.exec('ALTER TABLE api_keys ADD COLUMN admin INTEGER NOT NULL DEFAULT 0');
      if (!columns('sandboxes').has('team')) db.exec('ALTER TABLE sandboxes ADD COLUMN team TEXT');
      db.exec('CREATE INDEX IF NOT EXISTS api_keys_team ON api_keys (team_id, revoked_at)');
      db.exec('CREATE INDEX IF NOT EXISTS sandboxes_team ON sandboxes (team, state)');
      db.prepare('INSERT INTO teams (id, name, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING').run(DEFAULT_TEAM_ID, DEFAULT_TEAM_NAME, Date.now());
      db.prepare('UPDATE api_keys SET team_id = ? WHERE team_id IS NULL').run(DEFAULT_TEAM_ID);
      db.prepare("UPDATE sandboxes SET team = ? WHERE team IS NULL AND state <> 'pooled'").run(DEFAULT_TEAM_ID);
      for (const t of db.prepare('SELECT id, config FROM templates').all() as { id: string; config: string }[]) {
        const c = JSON.parse(t.config) as { snapshotOf?: string; ephemeral?: boolean; buildStep?: boolean; team?: string };
        if (c.snapshotOf && !c.ephemeral && !c.buildStep && c.team === undefined) {
          db.prepare('UPDATE templates SET config = ? WHERE id = ?').run(JSON.stringify({ ...c, team: DEFAULT_TEAM_ID }), t.id);
        }
      }
    }
    if (version() < 3 && !columns('templates').has('team')) migrateTemplateTeams(db);
    if (version() < 4) {
      db.exec(`
        CREATE TABLE IF NOT EXISTS template_builds (
          id TEXT PRIMARY KEY,
          template_id TEXT NOT NULL,
          name TEXT NOT NULL,
          team TEXT NOT NULL,
          status TEXT NOT NULL,
          config TEXT NOT NULL,
          reason TEXT,
          failed_step TEXT,
          created_at BIGINT NOT NULL,
          updated_at BIGINT NOT NULL,
          finished_at BIGINT
        );
        CREATE INDEX IF NOT EXISTS template_builds_template ON template_builds (template_id);
        CREATE TABLE IF NOT EXISTS template_build_logs (
          build_id TEXT NOT NULL,
          seq INTEGER NOT NULL,
          at BIGINT NOT NULL,
          level TEXT NOT NULL,
          step TEXT,
          message TEXT NOT NULL,
          PRIMARY KEY (build_id, seq)
        );
      `);
    }
    db.prepare("INSERT INTO meta (key, value) VALUES ('schema_version', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value").run(String(SCHEMA_VERSION));
  }).immediate();
}

/** Rebuilds the templates table with a team column and names unique per team (SQLite cannot drop a constraint in place). */
function migrateTemplateTeams(db: Database.Database): void {
  db.exec(`CREATE TABLE templates_v3 (
    id TEXT PRIMARY KEY, team TEXT NOT NULL DEFAULT '', name TEXT NOT NULL, layers TEXT NOT NULL,
    config TEXT NOT NULL, created_at BIGINT NOT NULL, UNIQUE (team, name))`);
  const insert = db.prepare('INSERT INTO templates_v3 (id, team, name, layers, config, created_at) VALUES (?, ?, ?, ?, ?, ?)');
  for (const t of db.prepare('SELECT * FROM templates').all() as { id: string; name: string; layers: string; config: string; created_at: number }[]) {
    insert.run(t.id, (JSON.parse(t.config) as { team?: string }).team ?? '', t.name, t.layers, t.config, t.created_at);
  }
  db.exec('DROP TABLE templates; ALTER TABLE templates_v3 RENAME TO templates');
}
