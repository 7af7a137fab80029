// The shared store's contract (teams and quotas, API keys, secrets), one test body run against
// both implementations: the node's SQLite file and a real PostgreSQL started for the test.
// Races go through two separate stores (two connections to the file, two pools to the server):
// exactly one maker of a name wins, and no quota change or secret count is lost.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { ApiKeys } from '../../src/api/keys.js';
import { DEFAULT_QUOTA, parseQuota, setTeamQuota, Tenancy } from '../../src/api/tenancy.js';
import { PG_SCHEMA_VERSION } from '../../src/store/pg/migrations.js';
import { ClusterRegistry, heartbeatCounts, type NodeRecord } from '../../src/store/pg/nodes.js';
import { dbStatements } from '../../src/store/pg/pool.js';
import { openPgSharedStore } from '../../src/store/pg/store.js';
import { redactUrl, type SecretRow, type SharedStore } from '../../src/store/shared.js';
import { sqliteSharedStore } from '../../src/store/shared-sqlite.js';
import { DEFAULT_TEAM_ID, Store } from '../../src/store/store.js';
import { CubeboxError } from '../../src/util/errors.js';
import { startPostgres, type TestPostgres } from '../helpers/postgres.js';

interface Backend {
  name: string;
  setUp(): Promise<void>;
  /** A new store on the same data (another connection or pool), closed by tearDown. */
  open(): Promise<SharedStore>;
  tearDown(): Promise<void>;
}

function sqliteBackend(): Backend {
  let dir = '';
  const stores: Store[] = [];
  return {
    name: 'SQLite',
    async setUp() {
      dir = mkdtempSync(join(tmpdir(), 'cubebox-shared-'));
    },
    async open() {
      const s = new Store(join(dir, 'cubebox.db'));
      stores.push(s);
      return sqliteSharedStore(s);
    },
    async tearDown() {
      for (const s of stores) s.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

function postgresBackend(): Backend {
  let server: TestPostgres | undefined;
  const stores: SharedStore[] = [];
  return {
    name: 'PostgreSQL',
    async setUp() {
      server = await startPostgres();
    },
    async open() {
      const s = await openPgSharedStore(server!.url);
      stores.push(s);
      return s;
    },
    async tearDown() {
      for (const s of stores) await s.close();
      await server?.stop();
    },
  };
}

const isKind = (kind: string) => (e: unknown) => e instanceof CubeboxError && e.kind === kind;

const secret = (team: string, name: string, over: Partial<SecretRow> = {}): SecretRow => ({
  id: `sec_${name.replace(/[^a-z0-9]/g, '')}${Math.random().toString(16).slice(2, 10)}`,
  team,
  name,
  version: 1,
  sealed: 'v1:sealed',
  metadata: { k: 'v' },
  createdAt: 1000,
  updatedAt: 1000,
  ...over,
});

for (const backend of [sqliteBackend(), postgresBackend()]) {
  describe(`the shared store on ${backend.name}`, () => {
    let a: SharedStore;
    let b: SharedStore;
    before(async () => {
      await backend.setUp();
      a = await backend.open();
      b = await backend.open();
    });
    after(() => backend.tearDown());

    it('creates, lists, verifies and revokes keys; a team is made on first use and blocked without a live key', async () => {
      const keys = new ApiKeys(a);
      const made = await keys.create('ci', { team: 'alpha' });
      assert.match(made.key, /^e2b_[0-9a-f]{40}$/);
      const team = await keys.team('alpha');
      assert.equal(made.info.team, team?.id);
      assert.equal((await new ApiKeys(b).verify(made.key))?.id, made.info.id, 'seen through the other store');
      const second = await keys.create('ci2', { team: 'alpha', admin: true });
      assert.equal(second.info.admin, true);
      assert.deepEqual(
        (await keys.list())
          .filter((k) => k.team === team?.id)
          .map((k) => k.name)
          .sort(),
        ['ci', 'ci2'],
      );
      assert.equal((await keys.create('d')).info.team, DEFAULT_TEAM_ID);
      await assert.rejects(keys.create('bad', { team: 'Bad Name!' }), isKind('invalid_argument'));

      assert.equal(await a.keys.teamHasLiveKey(team!.id), true);
      assert.equal((await keys.verify(made.key))?.id, made.info.id); // now in this process's copy of verified keys
      await keys.revoke(made.key.slice(0, 12));
      assert.equal(await keys.verify(made.key), undefined, 'revoked: refused at once in this process');
      const again = await keys.revoke(made.info.id);
      assert.equal(again.revokedAt, (await a.keys.get(made.info.id))?.revokedAt, 'revoking twice changes nothing');
      await keys.revoke(second.info.id);
      assert.equal(await b.keys.teamHasLiveKey(team!.id), false);
      assert.equal((await b.teams.withLiveKeys()).has(team!.id), false);
      b.directory.invalidate(); // another replica's copy, once older than its TTL
      await b.directory.fresh();
      const tenancy = new Tenancy(undefined as never, undefined, undefined, b.directory);
      assert.equal(tenancy.blocked(team!.id), true, 'a team without a live key is blocked');
      await assert.rejects(keys.revoke('key_nope'), isKind('not_found'));
    });

    it('renames a key, seen through the other store; an unknown key or a long name is refused', async () => {
      const keys = new ApiKeys(a);
      const made = await keys.create('before', { team: 'renamed' });
      assert.equal((await keys.rename(made.info.id, 'after')).name, 'after');
      assert.equal((await new ApiKeys(b).get(made.info.id))?.name, 'after');
      assert.equal((await keys.verify(made.key))?.name, 'after', 'the key still works');
      await assert.rejects(keys.rename('key_nope', 'x'), isKind('not_found'));
      await assert.rejects(keys.rename(made.info.id, 'x'.repeat(201)), isKind('invalid_argument'));
      assert.equal((await keys.get(made.info.id))?.name, 'after');
    });

    it('changes a quota under the team lock, resets a limit to its default, and refuses bad changes', async () => {
      const keys = new ApiKeys(a);
      await keys.ensureTeam('beta');
      assert.equal((await setTeamQuota(a, 'beta', { sandboxes: 3, secrets: 2 })).sandboxes, 3);
      b.directory.invalidate(); // another replica's copy, once older than its TTL
      await b.directory.fresh();
      const tenancy = new Tenancy(undefined as never, undefined, undefined, b.directory);
      assert.equal(tenancy.quota((await b.teams.get('beta'))!.id).secrets, 2, "the other store's directory sees it");
      const reset = await setTeamQuota(b, 'beta', { sandboxes: null });
      assert.equal(reset.sandboxes, DEFAULT_QUOTA.sandboxes);
      assert.equal(reset.secrets, 2);
      await assert.rejects(setTeamQuota(a, 'beta', { nope: 1 } as never), isKind('invalid_argument'));
      await assert.rejects(setTeamQuota(a, 'beta', { vcpus: -1 }), isKind('invalid_argument'));
      await assert.rejects(setTeamQuota(a, 'nobody', { vcpus: 1 }), isKind('not_found'));
      assert.deepEqual(parseQuota((await a.teams.get('beta'))!.quota), { secrets: 2 }, 'a refused change changed nothing');
    });

    it('stores secrets by team: find by id or name, pages in name order, update, delete, and a taken name is a conflict', async () => {
      const team = (await new ApiKeys(a).ensureTeam('gamma')).id;
      const admit = () => {};
      for (const name of ['b.two', 'a-one', 'c_three', 'B2']) await a.secrets.insert(secret(team, name.toLowerCase()), admit);
      await assert.rejects(b.secrets.insert(secret(team, 'a-one'), admit), isKind('conflict'));
      await b.secrets.insert(secret('other-team', 'a-one'), admit); // names are unique per team only
      const one = await b.secrets.find(team, 'A-ONE');
      assert.equal(one?.name, 'a-one');
      assert.deepEqual(one?.metadata, { k: 'v' });
      assert.equal((await b.secrets.find(team, one!.id))?.name, 'a-one');
      assert.equal(await b.secrets.find('other', one!.id), undefined, "another team's id is not found");
      const page1 = await b.secrets.list(team, undefined, 2);
      const page2 = await b.secrets.list(team, page1[1]!.name, 10);
      assert.deepEqual(
        [...page1, ...page2].map((s) => s.name),
        ['a-one', 'b.two', 'b2', 'c_three'],
      );
      assert.equal(await b.secrets.count(team), 4);
      await a.secrets.update({ id: one!.id, team, version: 2, sealed: 'v1:new', metadata: {}, updatedAt: 2000 });
      const updated = await b.secrets.find(team, one!.id);
      assert.deepEqual([updated?.version, updated?.sealed, updated?.metadata, updated?.updatedAt], [2, 'v1:new', {}, 2000]);
      assert.equal(await a.secrets.delete('other', one!.id), false);
      assert.equal(await a.secrets.delete(team, one!.id), true);
      assert.equal(await b.secrets.count(team), 3);
      await assert.rejects(
        a.secrets.insert(secret(team, 'refused'), () => {
          throw new CubeboxError('busy', 'over the limit');
        }),
        isKind('busy'),
      );
      assert.equal(await b.secrets.find(team, 'refused'), undefined, 'a refused insert leaves nothing');
    });

    it('races through two stores: one maker of a name wins, a limit is never passed, no quota change is lost', async () => {
      // one team name made by many at once: one team
      const teams = await Promise.all(Array.from({ length: 10 }, (_, i) => new ApiKeys(i % 2 ? a : b).create(`k${i}`, { team: 'delta' })));
      assert.equal(new Set(teams.map((t) => t.info.team)).size, 1);
      const team = teams[0]!.info.team;

      // one secret name inserted by many at once: one row, the others a conflict
      const same = await Promise.allSettled(Array.from({ length: 10 }, (_, i) => (i % 2 ? a : b).secrets.insert(secret(team, 'same'), () => {})));
      assert.equal(same.filter((r) => r.status === 'fulfilled').length, 1);
      for (const r of same) if (r.status === 'rejected') assert.ok(isKind('conflict')(r.reason), String(r.reason));

      // distinct names against a limit of 5 secrets: exactly 5 in all
      const limit = (n: number) => {
        if (n + 1 > 5) throw new CubeboxError('busy', 'quota exceeded');
      };
      const many = await Promise.allSettled(Array.from({ length: 12 }, (_, i) => (i % 2 ? a : b).secrets.insert(secret(team, `n${i}`), limit)));
      assert.equal(many.filter((r) => r.status === 'fulfilled').length, 4, '4 besides "same"');
      assert.equal(await a.secrets.count(team), 5);

      // a read-modify-write of one quota by many at once: every increment counts
      const bump = (q: string) => JSON.stringify({ ...parseQuota(q), snapshots: (parseQuota(q).snapshots ?? 0) + 1 });
      await Promise.all(Array.from({ length: 20 }, (_, i) => (i % 2 ? a : b).teams.changeQuota('delta', bump)));
      assert.equal(parseQuota((await a.teams.get(team))!.quota).snapshots, 20);
    });
  });
}

describe('the shared store on PostgreSQL: migrations, an unreachable server, and the URL in logs', () => {
  let server: TestPostgres;
  before(async () => {
    server = await startPostgres();
  });
  after(() => server.stop());

  it('two processes opening a new database at once migrate it once', async () => {
    const admin = new pg.Client({ connectionString: server.url });
    await admin.connect();
    await admin.query('CREATE DATABASE fresh');
    await admin.end();
    const url = server.url.replace('/postgres?', '/fresh?');
    const stores = await Promise.all([openPgSharedStore(url), openPgSharedStore(url), openPgSharedStore(url)]);
    try {
      const c = new pg.Client({ connectionString: url });
      await c.connect();
      const versions = (await c.query<{ version: number }>('SELECT version FROM schema_version ORDER BY version')).rows.map((r) => r.version);
      const teams = (await c.query<{ id: string }>('SELECT id FROM teams')).rows.map((r) => r.id);
      await c.end();
      assert.deepEqual(
        versions,
        Array.from({ length: PG_SCHEMA_VERSION }, (_, i) => i + 1),
      );
      assert.deepEqual(teams, [DEFAULT_TEAM_ID]);
    } finally {
      for (const s of stores) await s.close();
    }
  });

  it('answers unavailable with a retry time while the server is down, and works again once it is back', async () => {
    const store = await openPgSharedStore(server.url);
    try {
      const keys = new ApiKeys(store);
      const { key } = await keys.create('outage');
      await server.halt();
      for (const op of [() => store.keys.byHash('x'), () => store.teams.changeQuota(DEFAULT_TEAM_ID, (q) => q), () => keys.create('during')]) {
        await assert.rejects(op(), (e: unknown) => {
          assert.ok(e instanceof CubeboxError && e.kind === 'unavailable' && e.retryAfterSec! > 0, String(e));
          assert.ok(!e.message.includes(server.dir), 'the message does not quote the URL');
          return true;
        });
      }
      await assert.rejects(store.directory.fresh('team_unknown'), isKind('unavailable'));
      await server.start();
      assert.equal((await new ApiKeys(store).verify(key))?.name, 'outage', 'the pool reconnects by itself');
    } finally {
      await store.close();
    }
  });

  it('never shows a password of the URL', () => {
    assert.equal(redactUrl('postgres://cube:s3cr3t@db.example:5432/cubebox'), 'postgres://cube:***@db.example:5432/cubebox');
    assert.equal(redactUrl('postgresql://cube:p@ss@db/x?sslmode=require'), 'postgresql://cube:***@db/x?sslmode=require');
    assert.equal(redactUrl('postgresql:///x?host=/run&password=hunter2'), 'postgresql:///x?host=/run&password=***');
    assert.equal(redactUrl('postgres://db/x'), 'postgres://db/x');
  });
});

describe("a cluster's nodes and sandbox routes in PostgreSQL", () => {
  let server: TestPostgres;
  let registry: ClusterRegistry;
  before(async () => {
    server = await startPostgres();
    registry = await ClusterRegistry.open(server.url);
  });
  after(async () => {
    await registry.close();
    await server.stop();
  });

  const node = (id: string, heartbeatAt: number): NodeRecord => ({
    ...{ id, address: `http://127.0.0.1:1${id.length}`, runtimes: ['crun'], cpus: 2, memoryMB: 512, freeSlots: 4, sandboxes: 0 },
    ...{ templates: ['base'], pooled: [], startedAt: 1, heartbeatAt },
  });

  it('keeps each node as its last heartbeat says, and which node holds each sandbox', async () => {
    const t = Date.now();
    await registry.heartbeat(node('a', t), ['s1', 's2']);
    await registry.heartbeat({ ...node('b', t - 60_000) }, []);
    assert.deepEqual(
      (await registry.live(10_000)).map((n) => n.id),
      ['a'],
      'a node whose heartbeat is old takes nothing',
    );
    assert.equal(await registry.nodeOf('s1'), 'a');
    // a create recorded after the node listed its sandboxes survives that heartbeat; a sandbox gone from the list does not
    await registry.place('s3', 'a');
    await registry.heartbeat(node('a', t + 1), ['s1']);
    assert.deepEqual([await registry.nodeOf('s1'), await registry.nodeOf('s2'), await registry.nodeOf('s3')], ['a', undefined, 'a']);
    await registry.forget('s3');
    assert.equal(await registry.nodeOf('s3'), undefined);
    await registry.leave('a');
    assert.equal(await registry.node('a'), undefined);
    assert.equal(await registry.nodeOf('s1'), 'a', 'a node that leaves keeps its sandboxes routed (they keep running)');
  });

  it("keeps a delete made while a node was lost for the node's return, which then no longer routes it", async () => {
    const t = Date.now();
    await registry.heartbeat(node('c', t), ['s4', 's5']);
    await registry.bury('s4', 'c');
    assert.equal(await registry.nodeOf('s4'), undefined, 'a buried sandbox is found through no replica');
    // the node is heard from again, still holding it: told to delete it, and it is not routed again
    assert.deepEqual(await registry.heartbeat(node('c', t + 1), ['s4', 's5']), ['s4']);
    assert.equal(await registry.nodeOf('s4'), undefined);
    assert.equal(await registry.nodeOf('s5'), 'c');
    // once deleted there, the tombstone goes; an id used again later is routed as any
    assert.deepEqual(await registry.heartbeat(node('c', t + 2), ['s5']), []);
    assert.deepEqual(await registry.heartbeat(node('c', t + 3), ['s4', 's5']), []);
    assert.equal(await registry.nodeOf('s4'), 'c');
  });

  it("keeps which node holds each volume: recorded at its create, brought in line by the node's heartbeats, found by team and name", async () => {
    const t = Date.now();
    await registry.placeVolume({ id: 'vol_a', team: 'team1', name: 'data' }, 'd');
    assert.equal(await registry.nodeOfVolume('vol_a'), 'd');
    // a heartbeat listed before the create does not drop it; the node's own list then adds the others it holds
    await registry.heartbeat(node('d', t - 1000), [], [{ id: 'vol_b', team: 'team2', name: 'data' }]);
    assert.equal(await registry.nodeOfVolume('vol_a'), 'd');
    await registry.heartbeat(node('e', t), [], [{ id: 'vol_c', team: 'team1', name: 'logs' }]);
    assert.deepEqual([...(await registry.nodesOfVolumes('team1', ['data', 'logs', 'none']))].sort(), [
      ['data', 'd'],
      ['logs', 'e'],
    ]);
    assert.deepEqual([...(await registry.nodesOfVolumes('team2', ['data', 'logs']))], [['data', 'd']], "another team's names are its own");
    // a later heartbeat without it: deleted on the node, routed no more
    await registry.heartbeat(node('d', Date.now() + 1), [], [{ id: 'vol_b', team: 'team2', name: 'data' }]);
    assert.equal(await registry.nodeOfVolume('vol_a'), undefined);
    await registry.forgetVolume('vol_b');
    assert.equal(await registry.nodeOfVolume('vol_b'), undefined);
  });

  it('counts the statements it sends (a heartbeat is one transaction of eight) and the heartbeats written and failed', async () => {
    const sent = () => dbStatements.get('cluster') ?? 0;
    const { written, failed, statements } = heartbeatCounts;
    let at = sent();
    await registry.heartbeat(node('f', Date.now()), ['s6']);
    assert.equal(sent() - at, 8, 'BEGIN, the node row, two deletes, the tombstones read, the volumes delete, the routes, COMMIT');
    assert.equal(heartbeatCounts.statements, statements + 8, 'a heartbeat counts its own statements');
    at = sent();
    await registry.nodeOf('s6');
    assert.equal(sent() - at, 1);
    assert.equal(heartbeatCounts.written, written + 1);
    await server.halt();
    try {
      await assert.rejects(registry.heartbeat(node('f', Date.now()), ['s6']), (err: unknown) => err instanceof CubeboxError && err.kind === 'unavailable');
      assert.equal(heartbeatCounts.failed, failed + 1);
    } finally {
      await server.start();
    }
    await registry.heartbeat(node('f', Date.now()), []);
    assert.equal(heartbeatCounts.written, written + 2, 'heartbeats are written again once the server is back');
  });
});
