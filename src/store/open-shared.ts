// Which shared store a configuration names: PostgreSQL for a postgres:// URL, else the node's
// own SQLite file (the default).
import { openPgSharedStore } from './pg/store.js';
import type { PoolLog } from './pg/pool.js';
import { isPostgresUrl, type SharedStore } from './shared.js';
import { sqliteSharedStore } from './shared-sqlite.js';
import type { Store } from './store.js';

export function openSharedStore(database: string | undefined, store: Store, log?: PoolLog): Promise<SharedStore> {
  return isPostgresUrl(database) ? openPgSharedStore(database, { log }) : Promise.resolve(sqliteSharedStore(store));
}
