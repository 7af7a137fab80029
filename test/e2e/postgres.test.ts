// `cubebox serve --database postgres://...` against a real PostgreSQL started for the test, with
// the published SDK: a key made in PostgreSQL creates a sandbox that runs a command; a secret is
// stored there; while PostgreSQL is stopped, key-authenticated requests answer 503 with a
// Retry-After and the running sandbox's commands still work through the data plane; once it is
// back, everything answers again. The URL's password never reaches the log.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { Store } from '../../src/store/store.js';
import { openPaths } from '../../src/config.js';
import { cli, destroyInstance, newDataDir } from '../helpers/instance.js';
import { startPostgres, type TestPostgres } from '../helpers/postgres.js';
import { startService, type E2B, type Service } from '../helpers/service.js';

const PASSWORD = 'hunter2-not-logged';

describe('cubebox serve with PostgreSQL as the shared store', { timeout: 600_000 }, () => {
  let server: TestPostgres | undefined;
  let svc: Service | undefined;
  let dataDir: string;
  let url: string;
  let key: string;
  let e2b: E2B;
  let log = '';

  before(async () => {
    server = await startPostgres();
    // trust authentication ignores the password: it is there to be kept out of the log
    url = server.url.replace('postgres@', `postgres:${PASSWORD}@`);
    dataDir = newDataDir();
    svc = await startService(dataDir, { env: { CUBEBOX_POOL: '' }, args: ['--database', url] });
    svc.child.stdout!.on('data', (d: Buffer) => (log += d.toString()));
    const r = await cli(dataDir, ['keys', 'create', '--name', 'pg', '--team', 'pgteam'], { CUBEBOX_DATABASE: url });
    assert.equal(r.code, 0, r.stderr);
    key = r.stdout.trim().split('\n').pop()!.trim();
    process.env.E2B_API_KEY = key;
    process.env.E2B_API_URL = svc.url;
    process.env.E2B_SANDBOX_URL = svc.url;
    delete process.env.E2B_DEBUG;
    e2b = (await import('e2b')) as unknown as E2B;
  });

  after(async () => {
    await server?.start().catch(() => {}); // a failed test may have left it stopped
    await svc?.stop();
    await destroyInstance(undefined, dataDir);
    await server?.stop();
  });

  const api = async (path: string, init: { method?: string; body?: string } = {}) => {
    const r = await fetch(`${svc!.url}${path}`, {
      method: init.method ?? 'GET',
      headers: { 'X-API-KEY': key, ...(init.body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: init.body,
    });
    return { status: r.status, retryAfter: r.headers.get('retry-after'), text: await r.text() };
  };

  /** Polls until the request answers `status` (the service's copies of keys and teams last a few seconds). */
  const until = async (path: string, status: number) => {
    for (let i = 0; ; i++) {
      const r = await api(path);
      if (r.status === status) return r;
      if (i >= 100) assert.fail(`${path} still answers ${r.status} (${r.text}), not ${status}`);
      await new Promise((res) => setTimeout(res, 200));
    }
  };

  it('keeps keys and secrets in PostgreSQL, answers 503 while it is down with the data plane still working, and recovers', async () => {
    // the key is in PostgreSQL, not in the data directory's file
    const db = new pg.Client({ connectionString: url });
    await db.connect();
    try {
      const keys = await db.query<{ name: string }>("SELECT k.name FROM api_keys k JOIN teams t ON t.id = k.team_id WHERE t.name = 'pgteam'");
      assert.deepEqual(
        keys.rows.map((k) => k.name),
        ['pg'],
      );
    } finally {
      await db.end();
    }
    const store = new Store(openPaths(dataDir, false).db);
    try {
      assert.deepEqual(store.keys.list(), [], 'no key in the SQLite file');
    } finally {
      store.close();
    }

    const sbx = await e2b.Sandbox.create('base');
    try {
      assert.equal((await sbx.commands.run('echo hello')).stdout, 'hello\n');
      const made = await api('/secrets', { method: 'POST', body: JSON.stringify({ name: 'token', value: 'v' }) });
      assert.equal(made.status, 201, made.text);
      assert.equal((await api('/secrets', { method: 'POST', body: JSON.stringify({ name: 'token', value: 'w' }) })).status, 409);

      await server!.halt();
      const down = await until('/sandboxes', 503);
      assert.ok(Number(down.retryAfter) > 0, `Retry-After: ${down.retryAfter}`);
      assert.ok(!down.text.includes(PASSWORD) && !down.text.includes(server!.dir), down.text);
      await assert.rejects(e2b.Sandbox.create('base'), /503|unreachable/);
      assert.equal((await sbx.commands.run('echo still')).stdout, 'still\n', 'the data plane does not need the database');

      await server!.start();
      await until('/sandboxes', 200);
      const listed = await api('/secrets');
      assert.equal(listed.status, 200);
      assert.deepEqual(
        (JSON.parse(listed.text) as { name: string }[]).map((s) => s.name),
        ['token'],
      );
      assert.equal((await sbx.commands.run('echo back')).stdout, 'back\n');
    } finally {
      await sbx.kill();
    }
    assert.ok(!log.includes(PASSWORD), 'the password is not in the log');
  });

  it('refuses to start on a database it cannot reach, with an error that does not quote the password', async () => {
    const other = newDataDir();
    try {
      const bad = `postgresql://postgres:${PASSWORD}@/postgres?host=${other}/no-such-socket-dir`;
      const r = await cli(other, ['serve', '--host', '127.0.0.1', '--port', '0', '--no-base', '--database', bad], { CUBEBOX_LOG_LEVEL: 'info' });
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /database is unreachable/);
      assert.ok(!(r.stdout + r.stderr).includes(PASSWORD), r.stdout + r.stderr);
      const flag = await cli(other, ['serve', '--no-base', '--database', 'mysql://x'], {});
      assert.equal(flag.code, 2, flag.stderr);
      assert.match(flag.stderr, /takes a postgres:\/\/ or postgresql:\/\/ URL/);
    } finally {
      await destroyInstance(undefined, other);
    }
  });
});
