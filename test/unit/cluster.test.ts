// The cluster's pure parts: the roles' configuration, placement, and the node's secret check.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { serveConfig } from '../../src/app/serve.js';
import { place } from '../../src/cluster/placement.js';
import type { NodeRecord } from '../../src/store/pg/nodes.js';
import { admitted, CLUSTER_SECRET_HEADER } from '../../src/cluster/secret.js';
import { endToEnd } from '../../src/proxy/filter.js';

const SECRET = 'a'.repeat(40);
const dir = mkdtempSync(join(tmpdir(), 'cubebox-cluster-unit-'));
const secretFile = join(dir, 'secret');
writeFileSync(secretFile, `${SECRET}\n`);
const DB = 'postgres://db.example/cubebox';

after(() => rmSync(dir, { recursive: true, force: true }));

describe('cluster roles', () => {
  it('keeps the default a single process, with no cluster settings', () => {
    const c = serveConfig({ dataDir: '/tmp/d' }, {});
    assert.equal(c.role, 'all');
    assert.equal(c.cluster, undefined);
  });
  it('reads the role, the secret file and the node URL', () => {
    const c = serveConfig({ dataDir: '/tmp/d', role: 'node', database: DB, nodeUrl: 'http://10.0.0.5:3000/' }, { CUBEBOX_CLUSTER_SECRET_FILE: secretFile });
    assert.deepEqual([c.role, c.cluster], ['node', { secret: SECRET, nodeUrl: 'http://10.0.0.5:3000', leaseMs: 30_000 }]);
    assert.equal(serveConfig({ dataDir: '/tmp/d', clusterSecretFile: secretFile }, { CUBEBOX_ROLE: 'api', CUBEBOX_DATABASE: DB }).role, 'api');
  });
  it("reads the node lease: whole seconds, at least a live node's heartbeat age", () => {
    const api = (nodeLease: string | undefined, env = {}) =>
      serveConfig({ dataDir: '/tmp/d', role: 'api', database: DB, clusterSecretFile: secretFile, nodeLease }, env);
    assert.equal(api('45').cluster?.leaseMs, 45_000);
    assert.equal(api(undefined, { CUBEBOX_NODE_LEASE: '12' }).cluster?.leaseMs, 12_000);
    for (const bad of ['5', '1.5', '-1', 'soon', '100000']) assert.throws(() => api(bad), /bad --node-lease/);
  });
  it('refuses a role without its database or secret, a short secret and a bad role', () => {
    assert.throws(
      () => serveConfig({ dataDir: '/tmp/d', role: 'api', clusterSecretFile: secretFile }, {}),
      /--role api needs the cluster's PostgreSQL database/,
    );
    assert.throws(() => serveConfig({ dataDir: '/tmp/d', role: 'node', database: DB }, {}), /--role node needs the cluster secret/);
    assert.throws(
      () => serveConfig({ dataDir: '/tmp/d', role: 'node', database: DB, clusterSecretFile: join(dir, 'none') }, {}),
      /cannot read the cluster secret file .*ENOENT/,
    );
    const short = join(dir, 'short');
    writeFileSync(short, 'abc');
    assert.throws(() => serveConfig({ dataDir: '/tmp/d', role: 'node', database: DB, clusterSecretFile: short }, {}), /too short/);
    assert.throws(() => serveConfig({ dataDir: '/tmp/d', role: 'leader' }, {}), /bad --role 'leader'/);
    assert.throws(() => serveConfig({ dataDir: '/tmp/d', role: 'node', database: DB, clusterSecretFile: secretFile, host: '0.0.0.0' }, {}), /needs --node-url/);
    assert.throws(
      () => serveConfig({ dataDir: '/tmp/d', role: 'node', database: DB, clusterSecretFile: secretFile, nodeUrl: 'ftp://x' }, {}),
      /bad --node-url/,
    );
  });
});

const node = (id: string, over: Partial<NodeRecord> = {}): NodeRecord => ({
  id,
  address: `http://127.0.0.1:${id.length}`,
  runtimes: ['crun'],
  cpus: 2,
  memoryMB: 1000,
  freeSlots: 10,
  sandboxes: 0,
  templates: ['base'],
  pooled: [],
  startedAt: 0,
  heartbeatAt: 0,
  ...over,
});

describe('placement', () => {
  it('takes the runtime asked for and a free slot, or none', () => {
    const nodes = [node('a', { runtimes: ['crun'] }), node('b', { runtimes: ['crun', 'runsc'], sandboxes: 9 })];
    assert.equal(place(nodes, { template: 'base', runtime: 'runsc' })?.id, 'b');
    assert.equal(place(nodes, { template: 'base', runtime: 'kata' }), undefined);
    assert.equal(place([node('a', { freeSlots: 0 })], { template: 'base' }), undefined);
    assert.equal(
      place([node('a', { freeSlots: 2 })], { template: 'base' }, () => 2),
      undefined,
      'creates already sent count against the slots',
    );
    assert.equal(place([], { template: 'base' }), undefined);
  });
  it('prefers a ready pooled sandbox, then the template cached, then the least loaded', () => {
    const a = node('a', { sandboxes: 5 });
    const b = node('b', { sandboxes: 1, templates: [] });
    const c = node('c', { sandboxes: 8, pooled: ['base'] });
    assert.equal(place([a, b, c], { template: 'base' })?.id, 'c');
    assert.equal(place([a, b], { template: 'base:v2' })?.id, 'a', 'a tag is its template');
    assert.equal(place([a, b], { template: 'other' })?.id, 'b');
    assert.equal(place([node('x', { sandboxes: 4, cpus: 4 }), node('y', { sandboxes: 3, cpus: 2 })], { template: 'base' })?.id, 'x', 'load is per CPU');
  });
  it('spreads creates made between two heartbeats', () => {
    const nodes = [node('a'), node('b')];
    const sent = new Map<string, number>();
    const picks: string[] = [];
    for (let i = 0; i < 6; i++) {
      const n = place(nodes, { template: 'base' }, (id) => sent.get(id) ?? 0)!;
      sent.set(n.id, (sent.get(n.id) ?? 0) + 1);
      picks.push(n.id);
    }
    assert.deepEqual(picks.sort(), ['a', 'a', 'a', 'b', 'b', 'b']);
  });
});

describe('the cluster secret', () => {
  const request = (raw: string[]): IncomingMessage => {
    const headers: Record<string, string> = {};
    for (let i = 0; i < raw.length; i += 2) headers[raw[i]!.toLowerCase()] = raw[i + 1]!;
    return { headers, rawHeaders: [...raw] } as unknown as IncomingMessage;
  };
  it('admits the secret only, and removes the header either way', () => {
    for (const [raw, ok] of [
      [['X-Cubebox-Cluster-Secret', SECRET, 'Host', 'h'], true],
      [['x-cubebox-cluster-secret', `${SECRET}x`], false],
      [['x-cubebox-cluster-secret', SECRET.slice(1)], false],
      [['x-cubebox-cluster-secret', ''], false],
      [['Host', 'h'], false],
    ] as const) {
      const req = request([...raw]);
      assert.equal(admitted(req, SECRET), ok, JSON.stringify(raw));
      assert.equal(req.headers[CLUSTER_SECRET_HEADER], undefined);
      assert.ok(!req.rawHeaders.some((h) => h.toLowerCase() === CLUSTER_SECRET_HEADER));
    }
  });
  it('never passes the data plane to a sandbox', () => {
    assert.deepEqual(endToEnd(['X-Cubebox-Cluster-Secret', SECRET, 'Accept', '*/*']), ['Accept', '*/*']);
  });
});
