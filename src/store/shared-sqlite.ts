// The shared store on the node's own SQLite file: the default, a single-node install's state
// where it always was (no migration). Each operation is the synchronous repository's, run at
// once; the atomic ones in one immediate transaction (a second process, the CLI, waits its turn).
import { conflict } from '../util/errors.js';
import type { Store } from './store.js';
import type { ApiKeyRow, SecretRow, SharedKeyRepo, SharedSecretRepo, SharedStore, SharedTeamRepo, TeamDirectory, TeamRow } from './shared.js';

/** The shared store over an open node store (closing it leaves the node store open). */
export function sqliteSharedStore(store: Store): SharedStore {
  const ensure = (ref: string, make: (ref: string) => TeamRow): TeamRow => {
    const found = store.teams.get(ref);
    if (found) return found;
    const row = make(ref);
    store.teams.insert(row);
    return row;
  };
  const teams: SharedTeamRepo = {
    get: async (ref) => store.teams.get(ref),
    list: async () => store.teams.list(),
    ensure: async (ref, make) => store.immediate(() => ensure(ref, make)),
    changeQuota: async (ref, change) =>
      store.immediate(() => {
        const row = store.teams.get(ref);
        if (!row) return undefined;
        const quota = change(row.quota);
        store.teams.setQuota(row.id, quota);
        return { ...row, quota };
      }),
    withLiveKeys: async () => store.keys.liveTeams(),
  };
  const keys: SharedKeyRepo = {
    create: async (teamRef, make, row) =>
      store.immediate(() => {
        const team = ensure(teamRef, make);
        const key: ApiKeyRow = { ...row, team: team.id };
        store.keys.insert(key);
        return { key, team };
      }),
    byHash: async (hash) => store.keys.byHash(hash),
    get: async (id) => store.keys.get(id),
    list: async () => store.keys.list(),
    revoke: async (id, at) => store.keys.revoke(id, at),
    rename: async (id, name) => store.keys.rename(id, name),
    touch: async (id, at) => store.keys.touch(id, at),
    teamHasLiveKey: async (team) => store.keys.teamHasLiveKey(team),
  };
  const secrets: SharedSecretRepo = {
    find: async (team, ref) => store.secrets.find(team, ref),
    list: async (team, after, limit) => store.secrets.list(team, after, limit),
    count: async (team) => store.secrets.count(team),
    insert: async (row: SecretRow, admit) =>
      store.secrets.transaction(() => {
        if (store.secrets.find(row.team, row.name)) throw conflict(`secret '${row.name}' already exists`);
        admit(store.secrets.count(row.team));
        store.secrets.insert(row);
      }),
    update: async (row) => store.secrets.update(row),
    delete: async (team, id) => store.secrets.delete(team, id),
  };
  return { kind: 'sqlite', teams, keys, secrets, directory: sqliteDirectory(store), keyCacheMs: 0, close: async () => {} };
}

/** The file read at each call: a change by the CLI, another process, shows at once. */
export function sqliteDirectory(store: Store): TeamDirectory {
  return {
    team: (ref) => store.teams.get(ref),
    teams: () => store.teams.list(),
    hasLiveKey: (team) => store.keys.teamHasLiveKey(team),
    fresh: async () => {},
    invalidate: () => {},
  };
}
