// The shared store's schema in PostgreSQL: versioned migrations recorded in schema_version,
// applied at open under an advisory lock, so that processes starting together migrate once
// (the others wait for the lock, then find the work done).
import type pg from 'pg';
import { DEFAULT_TEAM_ID, DEFAULT_TEAM_NAME } from '../schema.js';
import { mapError } from './pool.js';

/** The advisory lock key of migrations (any constant that no other lock of ours uses). */
const MIGRATION_LOCK = 0x637562; // 'cub'

type Migration = (c: pg.PoolClient) => Promise<void>;

/** Migration n (from 1) brings the schema from version n-1 to n. Append only. */
const MIGRATIONS: Migration[] = [
  async (c) => {
    await c.query(`
      CREATE TABLE teams (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at BIGINT NOT NULL,
        quota TEXT NOT NULL DEFAULT '{}'
      );
      CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        prefix TEXT NOT NULL,
        hash TEXT NOT NULL UNIQUE,
        created_at BIGINT NOT NULL,
        last_used_at BIGINT,
        revoked_at BIGINT,
        team_id TEXT NOT NULL REFERENCES teams (id),
        admin BOOLEAN NOT NULL DEFAULT false
      );
      CREATE INDEX api_keys_live ON api_keys (team_id) WHERE revoked_at IS NULL;
      CREATE TABLE secrets (
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
    `);
    await c.query('INSERT INTO teams (id, name, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING', [DEFAULT_TEAM_ID, DEFAULT_TEAM_NAME, Date.now()]);
  },
  // a cluster's nodes as their heartbeats describe them, and which node holds each sandbox (store/pg/nodes.ts)
  async (c) => {
    await c.query(`
      CREATE TABLE nodes (
        id TEXT PRIMARY KEY,
        address TEXT NOT NULL,
        runtimes TEXT[] NOT NULL,
        cpus INTEGER NOT NULL,
        memory_mb INTEGER NOT NULL,
        free_slots INTEGER NOT NULL,
        sandboxes INTEGER NOT NULL,
        templates TEXT[] NOT NULL,
        pooled TEXT[] NOT NULL,
        started_at BIGINT NOT NULL,
        heartbeat_at BIGINT NOT NULL
      );
      CREATE TABLE sandbox_nodes (
        sandbox_id TEXT PRIMARY KEY,
        node_id TEXT NOT NULL,
        placed_at BIGINT NOT NULL
      );
      CREATE INDEX sandbox_nodes_node ON sandbox_nodes (node_id);
    `);
  },
  // sandboxes deleted while their node was lost: the node deletes them when it is heard from again
  async (c) => {
    await c.query(`
      CREATE TABLE sandbox_tombstones (
        sandbox_id TEXT PRIMARY KEY,
        node_id TEXT NOT NULL,
        deleted_at BIGINT NOT NULL
      );
      CREATE INDEX sandbox_tombstones_node ON sandbox_tombstones (node_id);
    `);
  },
  // what each node's sandboxes hold against their team's quotas (cluster/team-usage.ts), summed under the team's
  // lock; and which node holds each volume (a sandbox that mounts it is placed there)
  async (c) => {
    await c.query(`
      CREATE TABLE team_usage (
        node_id TEXT NOT NULL,
        team TEXT NOT NULL,
        sandboxes INTEGER NOT NULL,
        vcpus DOUBLE PRECISION NOT NULL,
        memory_mb DOUBLE PRECISION NOT NULL,
        disk_mb DOUBLE PRECISION NOT NULL,
        paused INTEGER NOT NULL,
        updated_at BIGINT NOT NULL,
        PRIMARY KEY (team, node_id)
      );
      CREATE INDEX team_usage_node ON team_usage (node_id);
      CREATE TABLE volume_nodes (
        volume_id TEXT PRIMARY KEY,
        node_id TEXT NOT NULL,
        team TEXT,
        name TEXT NOT NULL,
        placed_at BIGINT NOT NULL
      );
      CREATE INDEX volume_nodes_node ON volume_nodes (node_id);
      CREATE INDEX volume_nodes_name ON volume_nodes (team, name);
    `);
  },
];

/** The version this code writes. */
export const PG_SCHEMA_VERSION = MIGRATIONS.length;

/** Brings the database to PG_SCHEMA_VERSION; refuses one that a newer cubebox migrated further. */
export async function migrate(pool: pg.Pool): Promise<void> {
  let client: pg.PoolClient;
  try {
    client = await pool.connect();
  } catch (err) {
    throw mapError(err);
  }
  try {
    await client.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK]);
    try {
      await client.query('CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_at BIGINT NOT NULL)');
      const r = await client.query<{ v: number | null }>('SELECT max(version) AS v FROM schema_version');
      const current = r.rows[0]?.v ?? 0;
      if (current > PG_SCHEMA_VERSION) throw new Error(`the database's schema is version ${current}, newer than this cubebox's (${PG_SCHEMA_VERSION})`);
      for (let v = current + 1; v <= PG_SCHEMA_VERSION; v++) {
        await client.query('BEGIN');
        try {
          await MIGRATIONS[v - 1]!(client);
          await client.query('INSERT INTO schema_version (version, applied_at) VALUES ($1, $2)', [v, Date.now()]);
          await client.query('COMMIT');
        } catch (err) {
          await client.query('ROLLBACK').catch(() => {});
          throw err;
        }
      }
    } finally {
      await client.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK]).catch(() => {});
    }
  } catch (err) {
    throw mapError(err);
  } finally {
    client.release(true); // closed, not pooled: no session lock can outlive the migration
  }
}
