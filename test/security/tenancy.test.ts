// Tenancy and quotas, attacked through the real service with the
// published SDK and raw HTTP: team B's key against team A's sandboxes, snapshots and
// templates on both planes; quotas at create (also 20 at once), at resume, for metadata and
// snapshots; a team whose last key is revoked; the logs API on a huge console log.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { request } from 'node:http';
import { after, before, describe, it } from 'node:test';
import { fileSignature } from '../../src/protocol/signature.js';
import { cli, destroyInstance } from '../helpers/instance.js';
import { sdkService, type E2B, type Service } from '../helpers/service.js';

let e2b: E2B;
let svc: Service;
let dataDir: string;
let admin: string;
const made = new Set<string>(); // every sandbox made here, killed in after()

async function teamKey(team: string | undefined, extra: string[] = []): Promise<{ key: string; id: string }> {
  const r = await cli(dataDir, ['keys', 'create', '--name', 'sec', ...(team ? ['--team', team] : []), ...extra]);
  assert.equal(r.code, 0, r.stderr);
  const key = r.stdout.trim().split('\n').pop()!.trim();
  const id = /created (?:admin )?API key (key_[a-z0-9]+)/.exec(r.stderr)?.[1];
  assert.ok(id, r.stderr);
  return { key, id };
}

async function setQuota(team: string, ...args: string[]): Promise<void> {
  const r = await cli(dataDir, ['teams', 'set-quota', team, ...args]);
  assert.equal(r.code, 0, r.stderr);
}

function api(key: string, path: string, init: { method?: string; body?: unknown } = {}) {
  return fetch(`${svc.url}${path}`, {
    method: init.method ?? 'GET',
    headers: { 'X-API-KEY': key, ...(init.body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: init.body === undefined ? undefined : JSON.stringify(init.body),
  });
}

async function create(key: string, body: Record<string, unknown> = {}): Promise<Response> {
  const r = await api(key, '/v2/sandboxes', { method: 'POST', body: { templateID: 'base', timeout: 600, ...body } });
  if (r.status === 201) {
    const j = (await r.clone().json()) as { sandboxID: string };
    made.add(j.sandboxID);
  }
  return r;
}

async function newSandbox(key: string, body: Record<string, unknown> = {}): Promise<{ id: string; token: string }> {
  const r = await create(key, body);
  assert.equal(r.status, 201, await r.clone().text());
  const j = (await r.json()) as { sandboxID: string; envdAccessToken: string };
  return { id: j.sandboxID, token: j.envdAccessToken };
}

/** A data-plane request (envd's Process/List over Connect JSON) routed by header or by Host. */
function dataPlane(sandboxId: string, token: string | undefined, how: 'header' | 'host' = 'header'): Promise<{ status: number; text: () => Promise<string> }> {
  const u = new URL(svc.url);
  const headers: Record<string, string> = { 'content-type': 'application/json', 'connect-protocol-version': '1' };
  if (token !== undefined) headers['x-access-token'] = token;
  if (how === 'header') headers['e2b-sandbox-id'] = sandboxId;
  else headers.host = `49983-${sandboxId}.localhost:${u.port}`;
  return new Promise((resolve, reject) => {
    const req = request({ host: u.hostname, port: u.port, method: 'POST', path: '/process.Process/List', headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text: async () => Buffer.concat(chunks).toString() }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end('{}');
  });
}

/** The service's resident memory high-water mark, bytes. */
function peakRss(): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${svc.child.pid}/status`, 'utf8'));
  return Number(m![1]) * 1024;
}

describe('tenancy and quotas', { timeout: 1_200_000 }, () => {
  let A: { key: string; id: string };
  let B: { key: string; id: string };

  before(async () => {
    ({ svc, dataDir, e2b } = await sdkService());
    admin = (await teamKey(undefined, ['--admin'])).key;
    A = await teamKey('alpha');
    B = await teamKey('beta');
  });
  after(async () => {
    for (const id of made) await api(admin, `/sandboxes/${id}`, { method: 'DELETE' }).catch(() => undefined);
    await svc.stop();
    await destroyInstance(undefined, dataDir);
  });

  it("team B's key cannot see or act on team A's sandbox (404, like an unknown id)", async () => {
    const a = await newSandbox(A.key);
    const b = await newSandbox(B.key);

    // list: B sees its own sandbox and not A's; the SDK's paginator says the same
    const listB = (await (await api(B.key, '/v2/sandboxes')).json()) as { sandboxID: string }[];
    assert.ok(listB.some((s) => s.sandboxID === b.id));
    assert.ok(!listB.some((s) => s.sandboxID === a.id), 'B lists A');
    const v1 = (await (await api(B.key, '/sandboxes')).json()) as { sandboxID: string }[];
    assert.ok(!v1.some((s) => s.sandboxID === a.id), 'B lists A (v1)');
    const sdkList = await e2b.Sandbox.list({ apiKey: B.key }).nextItems();
    assert.ok(!sdkList.some((s) => s.sandboxId === a.id));

    const attempts: [string, string, unknown?][] = [
      ['GET', `/sandboxes/${a.id}`],
      ['DELETE', `/sandboxes/${a.id}`],
      ['POST', `/sandboxes/${a.id}/pause`, {}],
      ['POST', `/sandboxes/${a.id}/resume`, {}],
      ['POST', `/v2/sandboxes/${a.id}/connect`, { timeout: 10 }],
      ['POST', `/sandboxes/${a.id}/connect`, { timeout: 10 }],
      ['POST', `/sandboxes/${a.id}/snapshots`, {}],
      ['POST', `/sandboxes/${a.id}/fork`, { count: 1 }],
      ['POST', `/sandboxes/${a.id}/timeout`, { timeout: 1 }],
      ['POST', `/sandboxes/${a.id}/refreshes`, { duration: 10 }],
      ['GET', `/sandboxes/${a.id}/logs`],
      ['GET', `/v2/sandboxes/${a.id}/logs`],
      ['GET', `/sandboxes/${a.id}/metrics`],
    ];
    for (const [method, path, body] of attempts) {
      const r = await api(B.key, path, { method, body });
      assert.equal(r.status, 404, `${method} ${path} with B's key: ${r.status} ${await r.clone().text()}`);
      const j = (await r.json()) as { code: number; message: string };
      assert.equal(j.code, 404);
      assert.ok(!JSON.stringify(j).includes(A.key) && !JSON.stringify(j).includes(a.token));
    }
    const bulk = (await (await api(B.key, `/sandboxes/metrics?sandbox_ids=${a.id}`)).json()) as { sandboxes: Record<string, unknown> };
    assert.deepEqual(Object.keys(bulk.sandboxes), []);

    // the SDK's view: kill answers false, connect and getInfo fail
    assert.equal(await e2b.Sandbox.kill(a.id, { apiKey: B.key }), false);
    await assert.rejects(e2b.Sandbox.getInfo(a.id, { apiKey: B.key }));
    await assert.rejects(e2b.Sandbox.connect(a.id, { apiKey: B.key }));
    await assert.rejects(e2b.Sandbox.setTimeout(a.id, 1000, { apiKey: B.key }));
    await assert.rejects(e2b.Sandbox.createSnapshot(a.id, { apiKey: B.key }));

    // A's sandbox is untouched, running, with its long timeout; A and the admin see it
    const infoA = await e2b.Sandbox.getInfo(a.id, { apiKey: A.key });
    assert.equal(infoA.state, 'running');
    assert.ok(infoA.endAt.getTime() - Date.now() > 60_000, 'B shortened A’s timeout');
    assert.equal((await api(admin, `/sandboxes/${a.id}`)).status, 200);
    const all = (await (await api(admin, '/v2/sandboxes')).json()) as { sandboxID: string }[];
    assert.ok(all.some((s) => s.sandboxID === a.id) && all.some((s) => s.sandboxID === b.id));

    // the data plane: A's id with B's own token (header and Host routing), with a signature made from B's token, and with none
    for (const how of ['header', 'host'] as const) {
      assert.equal((await dataPlane(a.id, b.token, how)).status, 401, `B's token reached A's envd by ${how}`);
      assert.equal((await dataPlane(a.id, undefined, how)).status, 401, `no token reached A's envd by ${how}`);
      assert.equal((await dataPlane(a.id, a.token, how)).status, 200, `A's own token by ${how}`);
    }
    const sig = fileSignature('/etc/hostname', 'read', 'user', b.token);
    const forged = await fetch(`${svc.url}/files?path=/etc/hostname&username=user&signature=${encodeURIComponent(sig)}`, {
      headers: { 'e2b-sandbox-id': a.id },
    });
    assert.equal(forged.status, 401, 'a signature made with B’s token read A’s file');
    await forged.arrayBuffer();

    // the data plane with the SDK: B connecting to A's id fails
    const sbxA = await e2b.Sandbox.connect(a.id, { apiKey: A.key });
    assert.equal((await sbxA.commands.run('echo ok')).stdout, 'ok\n');
  });

  it("team B cannot use, list or delete team A's snapshots, nor delete public templates", async () => {
    const a = await newSandbox(A.key);
    const snap = await e2b.Sandbox.createSnapshot(a.id, { apiKey: A.key });
    const snapId = snap.snapshotId;
    assert.ok(snapId);

    const listB = (await (await api(B.key, '/snapshots')).json()) as { snapshotID: string }[];
    assert.ok(!listB.some((s) => s.snapshotID === snapId), "B lists A's snapshot");
    const listA = (await (await api(A.key, '/snapshots')).json()) as { snapshotID: string }[];
    assert.ok(listA.some((s) => s.snapshotID === snapId));

    // B cannot start a sandbox from it, nor delete it
    const fromSnap = await create(B.key, { templateID: snapId });
    assert.equal(fromSnap.status, 404, await fromSnap.clone().text());
    assert.equal((await api(B.key, `/templates/${snapId}`, { method: 'DELETE' })).status, 404);
    assert.equal(await e2b.Sandbox.deleteSnapshot(snapId, { apiKey: B.key }), false);

    // public templates: everyone creates from them, only an admin deletes them
    const del = await api(B.key, '/templates/base', { method: 'DELETE' });
    assert.equal(del.status, 403, await del.clone().text());
    assert.equal((await api(A.key, '/templates/base', { method: 'DELETE' })).status, 403);

    // A starts from its snapshot and deletes it (after its sandbox is gone)
    const child = await newSandbox(A.key, { templateID: snapId });
    await e2b.Sandbox.kill(child.id, { apiKey: A.key });
    assert.equal(await e2b.Sandbox.deleteSnapshot(snapId, { apiKey: A.key }), true);
    await e2b.Sandbox.kill(a.id, { apiKey: A.key });
  });

  it('GET /teams answers the caller’s team in E2B’s shape; an admin key sees every team', async () => {
    const mine = (await (await api(A.key, '/teams')).json()) as { teamID: string; name: string; apiKey: string; isDefault: boolean }[];
    assert.equal(mine.length, 1);
    assert.equal(mine[0]!.name, 'alpha');
    assert.equal(mine[0]!.isDefault, true);
    assert.equal(typeof mine[0]!.teamID, 'string');
    assert.ok(!mine[0]!.apiKey.includes(A.key), 'the key is handed back whole');
    const all = (await (await api(admin, '/teams')).json()) as { name: string }[];
    assert.ok(['alpha', 'beta', 'default'].every((n) => all.some((t) => t.name === n)));
  });

  it('a quota of 5 sandboxes: 20 creates at once yield exactly 5, the next gets 429, and resume is held to it', async () => {
    const G = await teamKey('gamma');
    await setQuota('gamma', '--sandboxes', '5');
    const results = await Promise.all(Array.from({ length: 20 }, () => create(G.key)));
    const statuses = results.map((r) => r.status).sort();
    assert.equal(statuses.filter((s) => s === 201).length, 5, JSON.stringify(statuses));
    assert.equal(statuses.filter((s) => s === 429).length, 15, JSON.stringify(statuses));
    const refused = results.find((r) => r.status === 429)!;
    const body = (await refused.json()) as { code: number; message: string };
    assert.equal(body.code, 429);
    assert.match(body.message, /sandboxes/);
    const ids = await Promise.all(results.filter((r) => r.status === 201).map(async (r) => ((await r.json()) as { sandboxID: string }).sandboxID));

    // the sixth one, through the SDK
    await assert.rejects(e2b.Sandbox.create('base', { apiKey: G.key }));
    // other teams are not held to gamma's quota
    const other = await newSandbox(B.key);
    await e2b.Sandbox.kill(other.id, { apiKey: B.key });

    // a filesystem-only pause frees its place; resuming it while the team is full is refused
    assert.equal((await api(G.key, `/sandboxes/${ids[0]}/pause`, { method: 'POST', body: { memory: false } })).status, 204);
    const sixth = await newSandbox(G.key);
    const resume = await api(G.key, `/sandboxes/${ids[0]}/resume`, { method: 'POST', body: {} });
    assert.equal(resume.status, 429, await resume.clone().text());
    const connect = await api(G.key, `/v2/sandboxes/${ids[0]}/connect`, { method: 'POST', body: { timeout: 60 } });
    assert.equal(connect.status, 429, await connect.clone().text());
    assert.equal((await e2b.Sandbox.getInfo(ids[0]!, { apiKey: G.key })).state, 'paused');
    // killing one makes room again
    assert.equal(await e2b.Sandbox.kill(sixth.id, { apiKey: G.key }), true);
    assert.equal((await api(G.key, `/sandboxes/${ids[0]}/resume`, { method: 'POST', body: {} })).status, 201);
    for (const id of ids) await e2b.Sandbox.kill(id, { apiKey: G.key });
  });

  it('vCPU, metadata and snapshot quotas refuse with 429 naming the limit', async () => {
    const D = await teamKey('delta');
    // metadata: the default limit is 16 KiB
    const big = await create(D.key, { metadata: { blob: 'x'.repeat(17 * 1024) } });
    assert.ok(big.status === 429 || big.status === 400, `${big.status}`);
    assert.match(((await big.json()) as { message: string }).message, /metadata/);
    const list = (await (await api(D.key, '/v2/sandboxes')).json()) as unknown[];
    assert.equal(list.length, 0, 'an over-limit create left a sandbox');

    const one = await newSandbox(D.key);
    const { cpuCount } = (await (await api(D.key, `/sandboxes/${one.id}`)).json()) as { cpuCount: number };
    await setQuota('delta', '--vcpus', String(cpuCount), '--snapshots', '1');
    const two = await create(D.key);
    assert.equal(two.status, 429);
    assert.match(((await two.json()) as { message: string }).message, /vcpus/);

    const s1 = await api(D.key, `/sandboxes/${one.id}/snapshots`, { method: 'POST', body: {} });
    assert.equal(s1.status, 201, await s1.clone().text());
    const s2 = await api(D.key, `/sandboxes/${one.id}/snapshots`, { method: 'POST', body: {} });
    assert.equal(s2.status, 429, await s2.clone().text());
    assert.match(((await s2.json()) as { message: string }).message, /snapshots/);
    const snapId = ((await s1.json()) as { snapshotID: string }).snapshotID;
    await e2b.Sandbox.kill(one.id, { apiKey: D.key });
    assert.equal(await e2b.Sandbox.deleteSnapshot(snapId, { apiKey: D.key }), true);
  });

  it("revoking a key leaves its team's sandboxes alone; revoking the team's last key blocks them on both planes", async () => {
    const k1 = await teamKey('epsilon');
    const k2 = await teamKey('epsilon');
    const s = await newSandbox(k1.key);
    const sbx = await e2b.Sandbox.connect(s.id, { apiKey: k1.key });

    assert.equal((await cli(dataDir, ['keys', 'revoke', k1.id])).code, 0);
    assert.equal((await sbx.commands.run('echo still')).stdout, 'still\n');
    assert.equal((await api(k2.key, `/sandboxes/${s.id}`)).status, 200);
    assert.equal((await api(k1.key, `/sandboxes/${s.id}`)).status, 401);

    assert.equal((await cli(dataDir, ['keys', 'revoke', k2.id])).code, 0);
    // data plane: the sandbox answers like an unknown one, with its own valid token
    const dp = await dataPlane(s.id, s.token);
    assert.equal(dp.status, 502, await dp.text());
    await assert.rejects(sbx.commands.run('echo blocked'));
    // control plane: the admin still sees and may kill it, but cannot revive or use it
    assert.equal((await api(admin, `/sandboxes/${s.id}`)).status, 200);
    assert.equal((await api(admin, `/v2/sandboxes/${s.id}/connect`, { method: 'POST', body: {} })).status, 403);
    assert.equal((await api(admin, `/sandboxes/${s.id}/snapshots`, { method: 'POST', body: {} })).status, 403);

    // a new key for the team lifts the block
    const k3 = await teamKey('epsilon');
    assert.equal((await dataPlane(s.id, s.token)).status, 200);
    assert.equal(await e2b.Sandbox.kill(s.id, { apiKey: k3.key }), true);
  });

  it('a 50 MB console log read through the logs API stays bounded in response size and service memory', async () => {
    const s = await newSandbox(A.key);
    const sbx = await e2b.Sandbox.connect(s.id, { apiKey: A.key });
    // 50 lines of 1 MiB each straight into the console (PID 1's stdout)
    await sbx.commands.run(`for i in $(seq 50); do head -c 1048576 /dev/zero | tr '\\0' x; echo; done > /proc/1/fd/1`, { user: 'root', timeoutMs: 120_000 });
    const before = peakRss();
    for (const path of [`/sandboxes/${s.id}/logs?limit=10000`, `/v2/sandboxes/${s.id}/logs?limit=10000`, `/sandboxes/${s.id}/logs?start=0&limit=10000`]) {
      const r = await api(A.key, path);
      assert.equal(r.status, 200);
      const text = await r.text();
      assert.ok(text.length <= 6 * 1024 * 1024, `${path}: a ${text.length}-byte response`);
      const j = JSON.parse(text) as { logs: { line?: string; message?: string }[] };
      // v1 lines are JSON records (as E2B's), the console line their message; v2 entries carry it as message
      const lines = j.logs.map((l) => (l.line !== undefined ? (JSON.parse(l.line) as { message: string }).message : (l.message ?? '')));
      assert.ok(
        lines.some((l) => /^x{1000}/.test(l)),
        `${path}: the log's lines are missing`,
      );
    }
    const grew = peakRss() - before;
    assert.ok(grew < 100 * 1024 * 1024, `the service's peak memory grew by ${grew} bytes`);
    // the service still answers at once afterwards (no stall to wait out)
    assert.equal((await fetch(`${svc.url}/health`)).status, 200);
    await e2b.Sandbox.kill(s.id, { apiKey: A.key });
  });
});
