// `cubebox keys create|list|revoke` and `cubebox teams list|create|set-quota`: API keys and
// their teams in a data directory, or in the PostgreSQL database of --database (CUBEBOX_DATABASE).
// The CLI opens the instance's SQLite store directly (WAL mode), so it works while `cubebox
// serve` runs; serve checks keys against the same database on every request.
import { existsSync } from 'node:fs';
import type { Command } from 'commander';
import { ApiKeys, type ApiKeyInfo } from '../api/keys.js';
import { DEFAULT_QUOTA, parseQuota, QUOTA_KEYS, setTeamQuota, type Quota } from '../api/tenancy.js';
import { databaseOf } from '../app/config.js';
import { openPaths } from '../config.js';
import { openPgSharedStore } from '../store/pg/store.js';
import type { SharedStore } from '../store/shared.js';
import { sqliteSharedStore } from '../store/shared-sqlite.js';
import { Store } from '../store/store.js';
import { invalid, notFound } from '../util/errors.js';

async function withKeys<T>(cmd: Command, dataDir: string, create: boolean, fn: (keys: ApiKeys, store: SharedStore) => Promise<T>): Promise<T> {
  const database = databaseOf(cmd.optsWithGlobals() as { database?: string });
  if (database) {
    const shared = await openPgSharedStore(database, { cacheTtlMs: 0 });
    try {
      return await fn(new ApiKeys(shared), shared);
    } finally {
      await shared.close();
    }
  }
  if (!create && !existsSync(dataDir)) throw notFound(`${dataDir} is not a cubebox data directory`);
  let paths;
  try {
    paths = openPaths(dataDir, create);
  } catch (err) {
    throw notFound((err as Error).message);
  }
  if (!create && !existsSync(paths.db)) throw notFound(`${dataDir} has no store yet (no API keys)`);
  const store = new Store(paths.db);
  try {
    const shared = sqliteSharedStore(store);
    return await fn(new ApiKeys(shared), shared);
  } finally {
    store.close();
  }
}

const iso = (t: number | null) => (t === null ? '-' : new Date(t).toISOString());

function describe(k: ApiKeyInfo & { teamName?: string }): string {
  const state = k.revokedAt === null ? 'active' : `revoked ${iso(k.revokedAt)}`;
  const team = `${k.teamName ?? k.team}${k.admin ? ' (admin)' : ''}`;
  return `${k.id}  ${(k.prefix + '…').padEnd(14)} ${(k.name || '-').padEnd(20)} team ${team.padEnd(16)} created ${iso(k.createdAt)}  last used ${iso(k.lastUsedAt)}  ${state}`;
}

export function registerKeysCommand(program: Command, dataDirOf: (cmd: Command) => string): void {
  const keys = program
    .command('keys')
    .description('manage the API keys of the control plane (X-API-KEY / E2B_API_KEY)')
    .option('--database <url>', 'the PostgreSQL database of `serve --database` (env CUBEBOX_DATABASE)');
  keys
    .command('create')
    .description('create an API key; prints the key alone on the last line (it is stored hashed and never shown again)')
    .option('--name <name>', 'a name to recognise the key by')
    .option('--team <team>', "the key's team (made when no team has that name; default: the default team)")
    .option('--admin', "an admin key: sees and manages every team's sandboxes, snapshots and templates")
    .action(async (opts: { name?: string; team?: string; admin?: boolean }, cmd: Command) => {
      const { key, info, team } = await withKeys(cmd, dataDirOf(cmd), true, async (k) => {
        const made = await k.create(opts.name ?? '', { team: opts.team, admin: opts.admin });
        return { ...made, team: (await k.team(made.info.team))?.name ?? made.info.team };
      });
      process.stderr.write(
        `created ${info.admin ? 'admin ' : ''}API key ${info.id}${info.name ? ` (${info.name})` : ''} of team '${team}'; keep it now, it cannot be shown again\n`,
      );
      process.stdout.write(key + '\n');
    });
  keys
    .command('list')
    .description('list API keys (prefixes only)')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      const list = await withKeys(cmd, dataDirOf(cmd), false, async (k, store) => {
        const names = new Map((await store.teams.list()).map((t) => [t.id, t.name]));
        return (await k.list()).map((i) => ({ ...i, teamName: names.get(i.team) ?? i.team }));
      });
      if (opts.json) return void process.stdout.write(JSON.stringify(list, null, 2) + '\n');
      if (!list.length) return void process.stderr.write('no API keys: create one with `cubebox keys create`\n');
      for (const k of list) process.stdout.write(describe(k) + '\n');
    });
  keys
    .command('revoke <id-or-prefix>')
    .description('revoke a key by its id, the first characters of the key, or the whole key')
    .action(async (idOrPrefix: string, _opts: unknown, cmd: Command) => {
      const info = await withKeys(cmd, dataDirOf(cmd), false, (k) => k.revoke(idOrPrefix));
      process.stderr.write(`revoked API key ${info.id} (${info.prefix}…)\n`);
      process.stdout.write(info.id + '\n');
    });
}

const QUOTA_FLAGS: Record<keyof Quota, string> = {
  sandboxes: 'sandboxes',
  vcpus: 'vcpus',
  memoryMB: 'memory-mb',
  diskMB: 'disk-mb',
  pausedSandboxes: 'paused-sandboxes',
  snapshots: 'snapshots',
  metadataBytes: 'metadata-bytes',
  secrets: 'secrets',
  volumes: 'volumes',
  volumeMB: 'volume-mb',
};

/** `cubebox teams ...`: teams, their live keys and quotas. Teams are made by `keys create --team` or `teams create`. */
export function registerTeamsCommand(program: Command, dataDirOf: (cmd: Command) => string): void {
  const teams = program
    .command('teams')
    .description('manage teams (every API key belongs to one) and their quotas')
    .option('--database <url>', 'the PostgreSQL database of `serve --database` (env CUBEBOX_DATABASE)');
  teams
    .command('list')
    .description('list teams with their live keys and quotas')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      const list = await withKeys(cmd, dataDirOf(cmd), false, async (k, store) => {
        const keys = await k.list();
        const live = await store.teams.withLiveKeys();
        return (await store.teams.list()).map((t) => ({
          teamID: t.id,
          name: t.name,
          liveKeys: keys.filter((x) => x.team === t.id && x.revokedAt === null).length,
          blocked: !live.has(t.id),
          quota: { ...DEFAULT_QUOTA, ...parseQuota(t.quota) },
        }));
      });
      if (opts.json) return void process.stdout.write(JSON.stringify(list, null, 2) + '\n');
      for (const t of list) {
        const q = QUOTA_KEYS.map((k) => `${QUOTA_FLAGS[k]}=${t.quota[k]}`).join(' ');
        process.stdout.write(`${t.teamID}  ${t.name.padEnd(20)} keys ${t.liveKeys}${t.blocked ? ' (blocked)' : ''}  ${q}\n`);
      }
    });
  teams
    .command('create <name>')
    .description('create a team (without keys it is blocked until one is made with `keys create --team`)')
    .action(async (name: string, _o: unknown, cmd: Command) => {
      const team = await withKeys(cmd, dataDirOf(cmd), true, async (k) => {
        if (await k.team(name)) throw invalid(`team '${name}' exists`);
        return k.ensureTeam(name);
      });
      process.stdout.write(team.id + '\n');
    });
  let set = teams
    .command('set-quota <team>')
    .description(
      `set a team's limits (a 429 names the one a create or resume would pass); 'default' resets one. Defaults: ${QUOTA_KEYS.map((k) => `${QUOTA_FLAGS[k]} ${DEFAULT_QUOTA[k]}`).join(', ')}`,
    );
  for (const k of QUOTA_KEYS) set = set.option(`--${QUOTA_FLAGS[k]} <n>`, `limit: ${k}`);
  set.action(async (ref: string, opts: Record<string, string | undefined>, cmd: Command) => {
    const change: Partial<Record<keyof Quota, number | null>> = {};
    for (const k of QUOTA_KEYS) {
      const raw = opts[QUOTA_FLAGS[k].replace(/-([a-z])/g, (_m, c: string) => c.toUpperCase())];
      if (raw === undefined) continue;
      if (raw === 'default') change[k] = null;
      else if (/^\d+$/.test(raw)) change[k] = Number(raw);
      else throw invalid(`--${QUOTA_FLAGS[k]} must be a non-negative integer or 'default', got '${raw}'`);
    }
    if (!Object.keys(change).length) throw invalid(`name at least one limit: ${QUOTA_KEYS.map((k) => '--' + QUOTA_FLAGS[k]).join(' ')}`);
    const q = await withKeys(cmd, dataDirOf(cmd), false, (_k, store) => setTeamQuota(store, ref, change));
    process.stdout.write(JSON.stringify(q) + '\n');
  });
}
