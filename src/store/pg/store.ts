// The shared store on PostgreSQL (`--database postgres://...`): a pool, the schema migrated at
// open, the repositories, and the in-memory copies that keep per-request reads cheap.
import type { SharedStore } from '../shared.js';
import { CachedDirectory } from './directory.js';
import { migrate } from './migrations.js';
import { openPool, type PoolLog } from './pool.js';
import { PgKeyRepo, PgSecretRepo, PgTeamRepo } from './repos.js';

/**
 * How long a copy read from the database is trusted, ms: the teams directory, and a verified key
 * (so a key revoked through another replica stops working there within this time; through this
 * one, at once).
 */
export const SHARED_CACHE_TTL_MS = 2000;

export async function openPgSharedStore(url: string, opts: { log?: PoolLog; cacheTtlMs?: number } = {}): Promise<SharedStore> {
  const pool = openPool(url, opts.log);
  try {
    await migrate(pool);
  } catch (err) {
    await pool.end().catch(() => {});
    throw err;
  }
  const ttl = opts.cacheTtlMs ?? SHARED_CACHE_TTL_MS;
  const teams = new PgTeamRepo(pool);
  const directory = new CachedDirectory(() => teams.directory(), ttl, opts.log);
  await directory.fresh().catch(() => {}); // the first copy now when it can be had; else on first use
  return {
    kind: 'postgres',
    teams,
    keys: new PgKeyRepo(pool),
    secrets: new PgSecretRepo(pool),
    directory,
    keyCacheMs: ttl,
    close: () => pool.end(),
  };
}
