// `cubebox keys create|list|revoke`: API keys of a data directory. The CLI opens the instance's
// SQLite store directly (WAL mode), so it works while `cubebox serve` runs; serve checks keys
// against the same database on every request.
import { existsSync } from 'node:fs';
import type { Command } from 'commander';
import { ApiKeys, type ApiKeyInfo } from '../api/keys.js';
import { openPaths } from '../config.js';
import { Store } from '../store/store.js';
import { notFound } from '../util/errors.js';

function withKeys<T>(dataDir: string, create: boolean, fn: (keys: ApiKeys) => T): T {
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
    return fn(new ApiKeys(store.db));
  } finally {
    store.close();
  }
}

const iso = (t: number | null) => (t === null ? '-' : new Date(t).toISOString());

function describe(k: ApiKeyInfo): string {
  const state = k.revokedAt === null ? 'active' : `revoked ${iso(k.revokedAt)}`;
  return `${k.id}  ${(k.prefix + '…').padEnd(14)} ${(k.name || '-').padEnd(20)} created ${iso(k.createdAt)}  last used ${iso(k.lastUsedAt)}  ${state}`;
}

export function registerKeysCommand(program: Command, dataDirOf: (cmd: Command) => string): void {
  const keys = program.command('keys').description('manage the API keys of the control plane (X-API-KEY / E2B_API_KEY)');
  keys
    .command('create')
    .description('create an API key; prints the key alone on the last line (it is stored hashed and never shown again)')
    .option('--name <name>', 'a name to recognise the key by')
    .action((opts: { name?: string }, cmd: Command) => {
      const { key, info } = withKeys(dataDirOf(cmd), true, (k) => k.create(opts.name ?? ''));
      process.stderr.write(`created API key ${info.id}${info.name ? ` (${info.name})` : ''}; keep it now, it cannot be shown again\n`);
      process.stdout.write(key + '\n');
    });
  keys
    .command('list')
    .description('list API keys (prefixes only)')
    .option('--json', 'print JSON')
    .action((opts: { json?: boolean }, cmd: Command) => {
      const list = withKeys(dataDirOf(cmd), false, (k) => k.list());
      if (opts.json) return void process.stdout.write(JSON.stringify(list, null, 2) + '\n');
      if (!list.length) return void process.stderr.write('no API keys: create one with `cubebox keys create`\n');
      for (const k of list) process.stdout.write(describe(k) + '\n');
    });
  keys
    .command('revoke <id-or-prefix>')
    .description('revoke a key by its id, the first characters of the key, or the whole key')
    .action((idOrPrefix: string, _opts: unknown, cmd: Command) => {
      const info = withKeys(dataDirOf(cmd), false, (k) => k.revoke(idOrPrefix));
      process.stderr.write(`revoked API key ${info.id} (${info.prefix}…)\n`);
      process.stdout.write(info.id + '\n');
    });
}
