// A team's quotas across a cluster's nodes (src/cluster/team-usage.ts): two nodes (each its own
// manager and SQLite store, fake runtime and host) share a real PostgreSQL for teams, keys and
// the `team_usage` table. Creates racing on both nodes never pass the team's limit together;
// a freed place shows on the other node once its holder publishes; pauses count across nodes.
import assert from 'node:assert/strict';
import { after, afterEach, before, beforeEach, describe, it } from 'node:test';
import { ApiKeys } from '../../src/api/keys.js';
import { setTeamQuota, Tenancy, type Quota } from '../../src/api/tenancy.js';
import { ClusterQuota } from '../../src/cluster/team-usage.js';
import type { CreateRequest } from '../../src/sandbox/manager.js';
import { ClusterRegistry } from '../../src/store/pg/nodes.js';
import { openPgSharedStore } from '../../src/store/pg/store.js';
import type { SharedStore } from '../../src/store/shared.js';
import { startPostgres, type TestPostgres } from '../helpers/postgres.js';
import { rig, type Rig } from './fakes.js';

interface Node {
  r: Rig;
  tenancy: Tenancy;
  quota: ClusterQuota;
  shared: SharedStore;
}

describe("a team's quotas across two nodes", () => {
  let server: TestPostgres;
  let registry: ClusterRegistry;
  let a: Node;
  let b: Node;
  let team: string;

  before(async () => {
    server = await startPostgres();
    registry = await ClusterRegistry.open(server.url);
  });
  after(async () => {
    await registry.close();
    await server.stop();
  });

  const node = async (id: string): Promise<Node> => {
    const r = await rig();
    const shared = await openPgSharedStore(server.url);
    const tenancy = new Tenancy(r.store, r.m.templates, undefined, shared.directory);
    tenancy.attach(r.m);
    const quota = new ClusterQuota(registry, tenancy, id, 30_000);
    r.m.admitAcross = (x) => quota.admit(x);
    tenancy.elsewhere = (t) => quota.elsewhere(t);
    return { r, tenancy, quota, shared };
  };

  beforeEach(async () => {
    a = await node('node-a');
    b = await node('node-b');
    team = (await new ApiKeys(a.shared).create('', { team: `t${Date.now()}` })).info.team;
  });
  afterEach(async () => {
    for (const n of [a, b]) {
      await n.r.cleanup();
      await n.shared.close();
    }
  });

  /** The quota set through one node's store; both nodes read it fresh, as each request does. */
  const limit = async (q: Partial<Quota>) => {
    await setTeamQuota(a.shared, team, q);
    for (const n of [a, b]) {
      n.shared.directory.invalidate();
      await n.tenancy.fresh(team);
    }
  };
  const create = (n: Node, extra: Partial<CreateRequest> = {}) =>
    n.r.m.create({ template: 't', agent: false, command: ['/bin/sleep', 'infinity'], team, ...extra });
  const isQuota = (limitName: keyof Quota) => (e: Error & { status?: number }) => {
    assert.equal(e.status, 429, e.message);
    assert.match(e.message, new RegExp(`\\(${limitName}\\)`));
    return true;
  };

  it('creates racing on both nodes never pass the limit together; a freed place counts on the other node once published', async () => {
    await limit({ sandboxes: 3 });
    const results = await Promise.allSettled([...Array(4)].flatMap(() => [create(a), create(b)]));
    const made = results.filter((x) => x.status === 'fulfilled');
    const refused = results.filter((x): x is PromiseRejectedResult => x.status === 'rejected');
    assert.equal(made.length, 3, 'exactly the limit is admitted across both nodes');
    for (const x of refused) isQuota('sandboxes')(x.reason as Error);
    assert.ok(
      refused.some((x) => /across the cluster's nodes/.test((x.reason as Error).message)),
      'a node refused for what the other holds',
    );
    assert.equal(a.r.m.list().length + b.r.m.list().length, 3);
    // the quota route's usage counts both nodes, on either
    for (const n of [a, b]) assert.equal((await n.tenancy.usageEverywhere(team)).sandboxes, 3);

    // a place freed on one node: the other sees it once the holder has published (its next heartbeat)
    const holder = a.r.m.list().length ? a : b;
    const other = holder === a ? b : a;
    const fill = other.r.m.list().length < 3;
    assert.ok(fill);
    await holder.r.m.delete(holder.r.m.list()[0]!.id);
    await holder.quota.publish();
    await other.quota.publish();
    await create(other);
    await assert.rejects(create(holder), isQuota('sandboxes'));
  });

  it('counts vCPUs and memory across nodes, and paused sandboxes: a pause on one node is refused for those paused on the other', async () => {
    await limit({ vcpus: 3 });
    await create(a, { limits: { cpuCount: 2 } });
    await assert.rejects(create(b, { limits: { cpuCount: 2 } }), isQuota('vcpus'));
    await create(b, { limits: { cpuCount: 1 } });

    await limit({ vcpus: 100, pausedSandboxes: 1 });
    const [onA] = a.r.m.list();
    const [onB] = b.r.m.list();
    await a.r.m.pause(onA!.id);
    await assert.rejects(b.r.m.pause(onB!.id), isQuota('pausedSandboxes'));
    assert.equal(b.r.m.get(onB!.id).state, 'running', 'the refused pause left it running');
  });

  it('does not count the usage of a node unheard for longer than the lease', async () => {
    await limit({ sandboxes: 1 });
    await create(b);
    await assert.rejects(create(a), isQuota('sandboxes'));
    // the same node seen by a quota whose lease is already over for b's rows
    const shortLease = new ClusterQuota(registry, a.tenancy, 'node-a', 1);
    await new Promise((r) => setTimeout(r, 20));
    a.r.m.admitAcross = (x) => shortLease.admit(x);
    await create(a);
  });
});
