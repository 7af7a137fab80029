// Templates across the nodes of a cluster: a real PostgreSQL, a real registry (Debian's
// docker-registry, plain HTTP on loopback), two nodes (`serve --role node --registry ...`) and
// an API replica. A team's template built through the replica (the published SDK's
// Template.build) lands on one node and is published; a create of it sent to the other node
// (straight to it, with the cluster secret) pulls it once however many creates ask at once, and
// the sandbox sees the built files; a delete through the replica removes it for the cluster:
// neither node resolves it any more, and the pulled copy goes from the other node's disk. At
// the end nothing is left (destroyInstance asserts it), no registry, no PostgreSQL.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { openPaths } from '../../src/config.js';
import { CLUSTER_SECRET_HEADER } from '../../src/cluster/secret.js';
import { cli, destroyInstance, newDataDir } from '../helpers/instance.js';
import { startPostgres, type TestPostgres } from '../helpers/postgres.js';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';
import { startService, type E2B, type Service } from '../helpers/service.js';

describe('templates across the nodes of a cluster', { timeout: 1_200_000 }, () => {
  let db: TestPostgres | undefined;
  let reg: TestRegistry | undefined;
  const secret = randomBytes(32).toString('hex');
  const secretDir = mkdtempSync(join(tmpdir(), 'cubebox-cluster-tpl-'));
  const secretFile = join(secretDir, 'secret');
  writeFileSync(secretFile, secret, { mode: 0o600 });
  const nodes: Array<{ svc: Service; dataDir: string; id: string }> = [];
  let replica: Service | undefined;
  const replicaDir = newDataDir();
  let key: string;
  let e2b: E2B;
  const sandboxes: Array<{ node: number; id: string }> = [];

  const query = async <R extends pg.QueryResultRow>(text: string, values: unknown[] = []): Promise<R[]> => {
    const c = new pg.Client({ connectionString: db!.url });
    await c.connect();
    try {
      return (await c.query<R>(text, values)).rows;
    } finally {
      await c.end();
    }
  };
  /** A request straight to a node, as a replica sends it. */
  const toNode = async (i: number, method: string, path: string, body?: unknown) => {
    const r = await fetch(`${nodes[i]!.svc.url}${path}`, {
      method,
      headers: { 'X-API-KEY': key, [CLUSTER_SECRET_HEADER]: secret, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: r.status, text: await r.text() };
  };
  const viaReplica = async (method: string, path: string, body?: unknown) => {
    const r = await fetch(`${replica!.url}${path}`, {
      method,
      headers: { 'X-API-KEY': key, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: r.status, text: await r.text() };
  };
  const until = async (what: string, check: () => Promise<boolean>) => {
    for (let i = 0; i < 300; i++) {
      if (await check()) return;
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.fail(`timed out waiting for ${what}`);
  };
  const cachedOn = async (i: number, ref: string) =>
    (await query<{ templates: string[] }>('SELECT templates FROM nodes WHERE id = $1', [nodes[i]!.id]))[0]!.templates.includes(ref);

  before(async () => {
    db = await startPostgres();
    reg = await startRegistry({ plainHttp: true });
    const cluster = ['--database', db.url, '--cluster-secret-file', secretFile];
    const third = Math.floor(Math.random() * 120);
    for (const subnet of [`10.${211 + Math.floor(Math.random() * 20)}.${2 * third}.0/24`, `10.${211 + Math.floor(Math.random() * 20)}.${2 * third + 1}.0/24`]) {
      const dataDir = newDataDir();
      const svc = await startService(dataDir, {
        env: { CUBEBOX_POOL: '', CUBEBOX_SUBNET: subnet },
        args: ['--role', 'node', '--no-base', '--registry', `http://${reg.host}/cubebox`, ...cluster],
      });
      nodes.push({ svc, dataDir, id: openPaths(dataDir, false).instanceId });
      // each node's own host-made template (not shared): what the build starts from
      const b = await cli(dataDir, ['template', 'build', 'busybox']);
      assert.equal(b.code, 0, b.stderr);
    }
    // the builder: template routes go to the live node of the lowest id
    nodes.sort((a, b) => (a.id < b.id ? -1 : 1));
    replica = await startService(replicaDir, { args: ['--role', 'api', ...cluster] });
    const r = await cli(nodes[0]!.dataDir, ['keys', 'create', '--name', 'tpl', '--team', 'tplteam'], { CUBEBOX_DATABASE: db.url });
    assert.equal(r.code, 0, r.stderr);
    key = r.stdout.trim().split('\n').pop()!.trim();
    process.env.E2B_API_KEY = key;
    process.env.E2B_API_URL = replica.url;
    process.env.E2B_SANDBOX_URL = replica.url;
    delete process.env.E2B_DEBUG;
    e2b = (await import('e2b')) as unknown as E2B;
  });

  after(async () => {
    for (const s of sandboxes) await toNode(s.node, 'DELETE', `/sandboxes/${s.id}`).catch(() => undefined);
    await replica?.stop();
    for (const n of nodes) await n.svc.stop();
    for (const n of nodes) await destroyInstance(undefined, n.dataDir);
    rmSync(replicaDir, { recursive: true, force: true });
    await reg?.stop();
    await db?.stop();
    rmSync(secretDir, { recursive: true, force: true });
  });

  let templateId: string;
  let layerDigests: string[];

  it('a build through the replica lands on one node and is published (registry and shared table)', async () => {
    const logs: string[] = [];
    const t0 = Date.now();
    const built = await e2b.Template.build(
      e2b.Template().fromTemplate('busybox').runCmd('mkdir -p /srv && echo built-on-one-node > /srv/built.txt'),
      'shared-tpl',
      { cpuCount: 1, memoryMB: 256, onBuildLogs: (l) => logs.push(l.message) },
    );
    templateId = built.templateId;
    const published = logs.find((l) => /published to the cluster's template registry in/.test(l));
    assert.ok(published, logs.join('\n'));
    console.log(`# build + publish ${Date.now() - t0} ms; ${published}`);
    const rows = await query<{ id: string; team: string; name: string; manifest: string; node_id: string; size: string }>('SELECT * FROM shared_templates');
    assert.equal(rows.length, 1);
    assert.equal(rows[0]!.id, templateId);
    assert.equal(rows[0]!.name, 'shared-tpl');
    assert.equal(rows[0]!.node_id, nodes[0]!.id);
    const manifest = (await (
      await fetch(`http://${reg!.host}/v2/cubebox/templates/manifests/${rows[0]!.manifest}`, {
        headers: { accept: 'application/vnd.oci.image.manifest.v1+json' },
      })
    ).json()) as { layers: { digest: string }[] };
    layerDigests = manifest.layers.map((l) => l.digest);
    assert.equal(layerDigests.length, 2, 'busybox and the build layer');
    await until('the builder to list it', () => cachedOn(0, 'shared-tpl'));
    assert.equal(await cachedOn(1, 'shared-tpl'), false, 'the other node has not got it');
    // ... but lists it and answers for it
    const listed = await toNode(1, 'GET', '/templates');
    assert.ok(
      (JSON.parse(listed.text) as { templateID: string }[]).some((t) => t.templateID === templateId),
      listed.text,
    );
    assert.equal((await toNode(1, 'GET', '/templates/shared-tpl')).status, 200);
  });

  it('creates on the other node pull it once (two at once), and the sandbox sees the built files', async () => {
    const before = reg!.requests().filter((r) => r.startsWith('GET /v2/cubebox/templates/blobs/'));
    const t0 = Date.now();
    const [a, b] = await Promise.all([
      toNode(1, 'POST', '/sandboxes', { templateID: 'shared-tpl' }),
      toNode(1, 'POST', '/sandboxes', { templateID: 'shared-tpl' }),
    ]);
    const firstMs = Date.now() - t0;
    for (const r of [a, b]) {
      assert.equal(r.status, 201, r.text);
      const info = JSON.parse(r.text) as { sandboxID: string; clientID: string; templateID: string };
      assert.equal(info.clientID, nodes[1]!.id);
      assert.equal(info.templateID, templateId);
      sandboxes.push({ node: 1, id: info.sandboxID });
    }
    const gets = reg!.requests().filter((r) => r.startsWith('GET /v2/cubebox/templates/blobs/') && !before.includes(r));
    for (const d of layerDigests) assert.equal(gets.filter((g) => g.includes(d)).length, 1, `layer ${d} fetched once: ${gets.join(', ')}`);
    // cached: a third create pulls nothing
    const t1 = Date.now();
    const c = await toNode(1, 'POST', '/sandboxes', { templateID: 'shared-tpl' });
    const cachedMs = Date.now() - t1;
    assert.equal(c.status, 201, c.text);
    sandboxes.push({ node: 1, id: (JSON.parse(c.text) as { sandboxID: string }).sandboxID });
    assert.equal(reg!.requests().filter((r) => r.startsWith('GET /v2/cubebox/templates/blobs/') && !before.includes(r)).length, gets.length);
    console.log(`# two first creates on the other node (pull included) ${firstMs} ms; a create once cached ${cachedMs} ms`);

    // the sandbox, reached through the replica once the node's heartbeat recorded it, sees the built file
    const id = sandboxes[0]!.id;
    await until('the replica to route the sandbox', async () => (await viaReplica('GET', `/sandboxes/${id}`)).status === 200);
    const sbx = await e2b.Sandbox.connect(id);
    assert.equal(await sbx.files.read('/srv/built.txt'), 'built-on-one-node\n');
    await until('the other node to list it', () => cachedOn(1, 'shared-tpl'));
  });

  let snapshotId: string;
  it("a team's snapshot taken on the other node is published too: the builder lists it", async () => {
    const snap = await viaReplica('POST', `/sandboxes/${sandboxes[0]!.id}/snapshots`, {});
    assert.equal(snap.status, 201, snap.text);
    snapshotId = (JSON.parse(snap.text) as { snapshotID: string }).snapshotID;
    const rows = await query<{ id: string; node_id: string }>('SELECT id, node_id FROM shared_templates WHERE id = $1', [snapshotId]);
    assert.deepEqual(rows, [{ id: snapshotId, node_id: nodes[1]!.id }]);
    const listed = await toNode(0, 'GET', '/snapshots');
    assert.ok(
      (JSON.parse(listed.text) as { snapshotID: string }[]).some((s) => s.snapshotID === snapshotId),
      listed.text,
    );
  });

  it('another team does not resolve it on a node that lacks it', async () => {
    const r = await cli(nodes[0]!.dataDir, ['keys', 'create', '--name', 'other', '--team', 'otherteam'], { CUBEBOX_DATABASE: db!.url });
    assert.equal(r.code, 0, r.stderr);
    const other = r.stdout.trim().split('\n').pop()!.trim();
    for (const ref of ['shared-tpl', templateId]) {
      const res = await fetch(`${nodes[1]!.svc.url}/sandboxes`, {
        method: 'POST',
        headers: { 'X-API-KEY': other, [CLUSTER_SECRET_HEADER]: secret, 'content-type': 'application/json' },
        body: JSON.stringify({ templateID: ref }),
      });
      assert.equal(res.status, 404, await res.text());
    }
  });

  it('a delete through the replica removes it from the cluster: neither node resolves it, nothing is left', async () => {
    for (const s of sandboxes.splice(0)) assert.equal((await toNode(s.node, 'DELETE', `/sandboxes/${s.id}`)).status, 204);
    // the snapshot, deleted through the node that does not have it (the one template routes go to)
    assert.equal((await viaReplica('DELETE', `/templates/${snapshotId}`)).status, 204);
    const del = await viaReplica('DELETE', `/templates/shared-tpl`);
    assert.equal(del.status, 204, del.text);
    assert.equal((await query('SELECT * FROM shared_templates')).length, 0);
    for (const i of [0, 1]) {
      const r = await toNode(i, 'POST', '/sandboxes', { templateID: 'shared-tpl' });
      assert.equal(r.status, 404, r.text);
      const byId = await toNode(i, 'POST', '/sandboxes', { templateID: templateId });
      assert.equal(byId.status, 404, byId.text);
    }
    assert.equal((await viaReplica('POST', '/sandboxes', { templateID: 'shared-tpl' })).status, 404);
    // the other node drops its copy at its next sync; its pulled layers go from its disk
    await until(
      'both nodes to drop it and the snapshot',
      async () => !(await cachedOn(0, 'shared-tpl')) && !(await cachedOn(1, 'shared-tpl')) && !(await cachedOn(1, snapshotId)),
    );
    for (const i of [0, 1]) assert.equal((await toNode(i, 'GET', '/templates/shared-tpl')).status, 404);
    const layers = join(nodes[1]!.dataDir, 'layers');
    for (const d of layerDigests) assert.equal(existsSync(join(layers, `sha256-${d.slice(7)}`)), false, `pulled layer ${d} removed`);
    assert.deepEqual(
      readdirSync(layers).filter((e) => e.startsWith('.tmp')),
      [],
    );
  });
});
