// API keys on a temporary SQLite store: format, hash-only storage, verify, revoke, and the CLI.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import { ApiKeys, hashApiKey } from '../../src/api/keys.js';
import { registerKeysCommand } from '../../src/cli/keys.js';
import { openPaths, PROJECT_ROOT } from '../../src/config.js';
import Database from 'better-sqlite3';
import { sqliteSharedStore } from '../../src/store/shared-sqlite.js';
import { DEFAULT_TEAM_ID, migrateStore, SCHEMA_VERSION, Store } from '../../src/store/store.js';
import { CubeboxError } from '../../src/util/errors.js';

const KEY_RE = /^e2b_[0-9a-f]{40}$/;

describe('ApiKeys', () => {
  let dir: string;
  let store: Store;
  let keys: ApiKeys;

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'cubebox-keys-'));
    store = new Store(join(dir, 'cubebox.db'));
    keys = new ApiKeys(sqliteSharedStore(store));
  });
  after(() => {
    store?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test('create returns an e2b_ key of 40 hex characters and its info', async () => {
    const { key, info } = await keys.create('ci');
    assert.match(key, KEY_RE);
    assert.equal(info.name, 'ci');
    assert.equal(info.prefix, key.slice(0, 12));
    assert.equal(info.lastUsedAt, null);
    assert.equal(info.revokedAt, null);
    assert.ok(info.createdAt > 0);
    const other = await keys.create();
    assert.notEqual(other.key, key);
    assert.notEqual(other.info.id, info.id);
    assert.equal(other.info.name, '');
  });

  test('only the hash is stored: the key is not in the database files', async () => {
    const { key } = await keys.create('secret');
    store['db'].pragma('wal_checkpoint(FULL)');
    for (const f of readdirSync(dir)) {
      const bytes = readFileSync(join(dir, f));
      assert.equal(bytes.includes(Buffer.from(key)), false, `key found in ${f}`);
      assert.equal(bytes.includes(Buffer.from(key.slice(12))), false, `secret part found in ${f}`);
    }
    const row = store['db'].prepare('SELECT hash FROM api_keys WHERE hash = ?').get(hashApiKey(key)) as { hash: string } | undefined;
    assert.ok(row);
  });

  test('verify accepts live keys and rejects everything else', async () => {
    const { key, info } = await keys.create('v');
    const ok = await keys.verify(key);
    assert.equal(ok?.id, info.id);
    assert.equal(await keys.verify(undefined), undefined);
    assert.equal(await keys.verify(''), undefined);
    assert.equal(await keys.verify(key.toUpperCase()), undefined);
    assert.equal(await keys.verify(key.slice(0, -1) + (key.endsWith('0') ? '1' : '0')), undefined);
    assert.equal(await keys.verify(key + '0'), undefined);
    assert.equal(await keys.verify('e2b_' + '0'.repeat(40)), undefined);
  });

  test('verify records lastUsedAt at most once a minute', async () => {
    const { key, info } = await keys.create('u');
    const first = await keys.verify(key);
    assert.ok(first?.lastUsedAt);
    const stored = async () => (await keys.list()).find((k) => k.id === info.id)?.lastUsedAt;
    assert.equal(await stored(), first.lastUsedAt);
    // Pretend the last use was 30 s ago: no write. Two minutes ago: a write.
    const t30 = Date.now() - 30_000;
    store['db'].prepare('UPDATE api_keys SET last_used_at = ? WHERE id = ?').run(t30, info.id);
    assert.equal((await keys.verify(key))?.lastUsedAt, t30);
    assert.equal(await stored(), t30);
    const t120 = Date.now() - 120_000;
    store['db'].prepare('UPDATE api_keys SET last_used_at = ? WHERE id = ?').run(t120, info.id);
    const again = await keys.verify(key);
    assert.ok(again?.lastUsedAt && again.lastUsedAt > t120);
    assert.equal(await stored(), again.lastUsedAt);
  });

  test('list shows every key with its prefix, never the key', async () => {
    const list = await keys.list();
    assert.ok(list.length >= 4);
    for (const k of list) {
      assert.match(k.prefix, /^e2b_[0-9a-f]{8}$/);
      assert.deepEqual(Object.keys(k).sort(), ['admin', 'createdAt', 'id', 'lastUsedAt', 'name', 'prefix', 'revokedAt', 'team']);
    }
  });

  test('every key has a team: the default one, or a named one made on first use; admin is a flag', async () => {
    const plain = await keys.create('p');
    assert.equal(plain.info.team, DEFAULT_TEAM_ID);
    assert.equal(plain.info.admin, false);
    const t1 = await keys.create('t1', { team: 'acme' });
    const t2 = await keys.create('t2', { team: 'acme', admin: true });
    assert.notEqual(t1.info.team, DEFAULT_TEAM_ID);
    assert.equal(t2.info.team, t1.info.team);
    assert.equal(t2.info.admin, true);
    assert.equal((await keys.verify(t2.key))?.admin, true);
    assert.equal((await keys.team('acme'))?.id, t1.info.team);
    await assert.rejects(async () => keys.create('bad', { team: 'Bad Name!' }), CubeboxError);
    assert.equal(store.teamHasLiveKey(t1.info.team), true);
    await keys.revoke(t1.info.id);
    assert.equal(store.teamHasLiveKey(t1.info.team), true);
    await keys.revoke(t2.info.id);
    assert.equal(store.teamHasLiveKey(t1.info.team), false);
  });

  test('a store from before teams is migrated: its keys and sandboxes join the default team', async () => {
    const old = mkdtempSync(join(tmpdir(), 'cubebox-keys-old-'));
    try {
      const db = new Database(join(old, 'cubebox.db'));
      db.exec(`CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE api_keys (id TEXT PRIMARY KEY, name TEXT NOT NULL, prefix TEXT NOT NULL, hash TEXT NOT NULL UNIQUE, created_at BIGINT NOT NULL, last_used_at BIGINT, revoked_at BIGINT);
        CREATE TABLE sandboxes (id TEXT PRIMARY KEY, template_id TEXT NOT NULL, state TEXT NOT NULL, state_deadline BIGINT, runtime TEXT NOT NULL, uid_slot INTEGER UNIQUE, pid INTEGER, created_at BIGINT NOT NULL, started_at BIGINT, end_at BIGINT, spec TEXT NOT NULL, last_error TEXT, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at BIGINT);`);
      const key = 'e2b_' + 'ab'.repeat(20);
      db.prepare('INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, NULL, NULL)').run('key_old', 'old', key.slice(0, 12), hashApiKey(key), 1);
      db.prepare(
        "INSERT INTO sandboxes (id, template_id, state, runtime, created_at, spec) VALUES ('s1', 't', 'running', 'crun', 1, '{}'), ('s2', 't', 'pooled', 'crun', 1, '{}')",
      ).run();
      db.close();
      const s2 = new Store(join(old, 'cubebox.db'));
      try {
        const k2 = new ApiKeys(sqliteSharedStore(s2));
        assert.equal((await k2.verify(key))?.team, DEFAULT_TEAM_ID);
        assert.equal(s2.getSandbox('s1')?.team, DEFAULT_TEAM_ID);
        assert.equal(s2.getSandbox('s2')?.team, null);
        assert.equal((s2['db'].prepare("SELECT value FROM meta WHERE key = 'schema_version'").get() as { value: string }).value, String(SCHEMA_VERSION));
        migrateStore(s2['db']); // idempotent
      } finally {
        s2.close();
      }
    } finally {
      rmSync(old, { recursive: true, force: true });
    }
  });

  test('revoke by id, by prefix and by key; revoked keys fail verify', async () => {
    const a = await keys.create('a');
    const b = await keys.create('b');
    const c = await keys.create('c');
    assert.equal((await keys.revoke(a.info.id)).id, a.info.id);
    assert.equal(await keys.verify(a.key), undefined);
    const rb = await keys.revoke(b.key.slice(0, 10));
    assert.equal(rb.id, b.info.id);
    assert.ok(rb.revokedAt);
    assert.equal(await keys.verify(b.key), undefined);
    assert.equal((await keys.revoke(c.key)).id, c.info.id);
    assert.equal(await keys.verify(c.key), undefined);
    // Idempotent.
    assert.equal((await keys.revoke(a.info.id)).revokedAt, (await keys.list()).find((k) => k.id === a.info.id)?.revokedAt);
    const listed = (await keys.list()).find((k) => k.id === a.info.id);
    assert.ok(listed?.revokedAt);
  });

  test('revoke: unknown is not_found, ambiguous or too short is invalid_argument', async () => {
    const isKind = (kind: string) => (e: unknown) => e instanceof CubeboxError && e.kind === kind;
    await assert.rejects(async () => keys.revoke('key_nope'), isKind('not_found'));
    await assert.rejects(async () => keys.revoke('e2b_' + '0'.repeat(40)), isKind('not_found'));
    await assert.rejects(async () => keys.revoke(''), isKind('invalid_argument'));
    await assert.rejects(async () => keys.revoke('e2b_'), isKind('invalid_argument'));
    // Two keys sharing a display prefix (made so by hand) are ambiguous by prefix.
    const x = await keys.create('x');
    const y = await keys.create('y');
    store['db'].prepare('UPDATE api_keys SET prefix = ? WHERE id IN (?, ?)').run('e2b_ffffffff', x.info.id, y.info.id);
    await assert.rejects(async () => keys.revoke('e2b_ffff'), isKind('invalid_argument'));
    assert.equal((await keys.verify(x.key))?.id, x.info.id);
    assert.equal((await keys.revoke(x.info.id)).id, x.info.id);
  });

  test('a second connection (the CLI while serve runs) sees new and revoked keys at once', async () => {
    const other = new Store(join(dir, 'cubebox.db'));
    try {
      const cli = new ApiKeys(sqliteSharedStore(other));
      const { key, info } = await cli.create('from-cli');
      assert.equal((await keys.verify(key))?.id, info.id);
      await cli.revoke(info.id);
      assert.equal(await keys.verify(key), undefined);
    } finally {
      other.close();
    }
  });
});

describe('cubebox keys (CLI module)', () => {
  let dataDir: string;
  before(() => {
    dataDir = join(mkdtempSync(join(tmpdir(), 'cubebox-keys-cli-')), 'data');
  });
  after(() => rmSync(join(dataDir, '..'), { recursive: true, force: true }));

  // Runs the commands in a child process so that stdout/stderr/exit codes are real.
  function cli(args: string[]): { status: number; stdout: string; stderr: string } {
    const script = `
      import { Command } from ${JSON.stringify(import.meta.resolve('commander'))};
      import { registerKeysCommand } from ${JSON.stringify(join(PROJECT_ROOT, 'dist/src/cli/keys.js'))};
      import { CubeboxError } from ${JSON.stringify(join(PROJECT_ROOT, 'dist/src/util/errors.js'))};
      const program = new Command().option('--data-dir <dir>');
      registerKeysCommand(program, (cmd) => cmd.optsWithGlobals().dataDir);
      program.parseAsync(process.argv).catch((e) => {
        console.error('cubebox: ' + e.message);
        process.exit(e instanceof CubeboxError ? ({ invalid_argument: 2, not_found: 3 })[e.kind] ?? 1 : 1);
      });`;
    const file = join(dataDir, '..', 'cli.mjs');
    writeFileSync(file, script);
    const r = spawnSync(process.execPath, [file, '--data-dir', dataDir, ...args], { encoding: 'utf8' });
    return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
  }

  test('list on a missing data directory is not_found', async () => {
    const r = cli(['keys', 'list']);
    assert.equal(r.status, 3, r.stderr);
  });

  test('create prints the key alone on its last line; list and revoke', async () => {
    const c = cli(['keys', 'create', '--name', 'laptop']);
    assert.equal(c.status, 0, c.stderr);
    const lines = c.stdout.trimEnd().split('\n');
    const key = lines[lines.length - 1] as string;
    assert.match(key, KEY_RE);
    assert.match(c.stderr, /laptop/);

    const l = cli(['keys', 'list', '--json']);
    assert.equal(l.status, 0, l.stderr);
    const list = JSON.parse(l.stdout) as { id: string; name: string; prefix: string }[];
    assert.equal(list.length, 1);
    assert.equal(list[0]?.name, 'laptop');
    assert.equal(list[0]?.prefix, key.slice(0, 12));
    assert.equal(l.stdout.includes(key), false);
    const text = cli(['keys', 'list']);
    assert.match(text.stdout, /laptop/);

    const store = new Store(openPaths(dataDir, false).db);
    try {
      assert.equal((await new ApiKeys(sqliteSharedStore(store)).verify(key))?.name, 'laptop');
      const rv = cli(['keys', 'revoke', key.slice(0, 12)]);
      assert.equal(rv.status, 0, rv.stderr);
      assert.equal(rv.stdout.trim(), list[0]?.id);
      assert.equal(await new ApiKeys(sqliteSharedStore(store)).verify(key), undefined);
    } finally {
      store.close();
    }
    const unknown = cli(['keys', 'revoke', 'key_unknown']);
    assert.equal(unknown.status, 3);
  });

  test('registerKeysCommand adds create, list and revoke', async () => {
    const program = new Command();
    registerKeysCommand(program, () => dataDir);
    const keysCmd = program.commands.find((c) => c.name() === 'keys');
    assert.deepEqual(keysCmd?.commands.map((c) => c.name()).sort(), ['create', 'list', 'revoke']);
  });
});
