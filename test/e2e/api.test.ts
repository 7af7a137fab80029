import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { cli, destroyInstance } from '../helpers/instance.js';
import { createKey, sdkService, type E2B, type Service } from '../helpers/service.js';

let e2b: E2B;
let svc: Service;
let dataDir: string;
let key: string;

const api = (path: string, init: RequestInit = {}) =>
  fetch(`${svc.url}${path}`, { ...init, headers: { 'X-API-KEY': key, 'content-type': 'application/json', ...(init.headers ?? {}) } });

describe('control-plane details and concurrency', { timeout: 900_000 }, () => {
  before(async () => {
    ({ svc, dataDir, key, e2b } = await sdkService({ CUBEBOX_DATA_PORT: '0' }));
  });
  after(async () => {
    await svc.stop();
    await destroyInstance(undefined, dataDir);
  });

  it('serves many SDK clients at once', async () => {
    const sandboxes = await Promise.all(Array.from({ length: 6 }, () => e2b.Sandbox.create('base')));
    const outputs = await Promise.all(sandboxes.flatMap((s, i) => [0, 1, 2].map((j) => s.commands.run(`echo ${i}-${j}`))));
    assert.deepEqual(
      outputs.map((o) => o.stdout.trim()),
      sandboxes.flatMap((_, i) => [0, 1, 2].map((j) => `${i}-${j}`)),
    );
    assert.equal(new Set(sandboxes.map((s) => s.sandboxId)).size, 6);
    await Promise.all(sandboxes.map((s) => s.kill()));
  });

  it('data-plane traffic wakes an auto-resuming paused sandbox', async () => {
    const sbx = await e2b.Sandbox.create('base', { lifecycle: { onTimeout: 'pause', autoResume: true } });
    await sbx.commands.run('echo before > ~/x');
    assert.equal(await sbx.pause(), true);
    assert.equal((await sbx.getInfo()).state, 'paused');
    assert.equal((await sbx.commands.run('cat ~/x')).stdout, 'before\n');
    assert.equal((await sbx.getInfo()).state, 'running');
    await sbx.kill();
  });

  it('reports metrics and logs, v1 list, resume and refresh semantics', async () => {
    const sbx = await e2b.Sandbox.create('base');
    await sbx.commands.run('head -c 20000000 /dev/urandom > ~/blob');
    const metrics = await sbx.getMetrics();
    assert.ok(metrics.length >= 1);
    const m = metrics[metrics.length - 1]!;
    assert.ok(m.memUsed > 0 && m.memTotal >= m.memUsed, JSON.stringify(m));
    assert.ok(m.diskUsed >= 20_000_000 && m.diskTotal > m.diskUsed, JSON.stringify(m));
    assert.ok(m.cpuCount > 0);

    const v1 = (await (await api('/sandboxes')).json()) as { sandboxID: string; state: string }[];
    assert.ok(v1.some((s) => s.sandboxID === sbx.sandboxId && s.state === 'running'));
    const logs = await api(`/sandboxes/${sbx.sandboxId}/logs`);
    assert.equal(logs.status, 200);
    assert.ok(Array.isArray(((await logs.json()) as { logs: unknown[] }).logs));

    const resumeRunning = await api(`/sandboxes/${sbx.sandboxId}/resume`, { method: 'POST', body: '{}' });
    assert.equal(resumeRunning.status, 409);
    assert.equal(((await resumeRunning.json()) as { code: number }).code, 409);

    const before = (await sbx.getInfo()).endAt.getTime();
    assert.equal((await api(`/sandboxes/${sbx.sandboxId}/refreshes`, { method: 'POST', body: '{"duration": 3600}' })).status, 204);
    assert.ok((await sbx.getInfo()).endAt.getTime() > before, 'refresh extends endAt');
    // connect never shortens a running sandbox's endAt
    const extended = (await sbx.getInfo()).endAt.getTime();
    await e2b.Sandbox.connect(sbx.sandboxId, { timeoutMs: 10_000 });
    assert.equal((await sbx.getInfo()).endAt.getTime(), extended);
    // setTimeout may shorten it
    await sbx.setTimeout(60_000);
    assert.ok((await sbx.getInfo()).endAt.getTime() < extended);

    await sbx.pause();
    const resumed = await api(`/sandboxes/${sbx.sandboxId}/resume`, { method: 'POST', body: '{}' });
    assert.equal(resumed.status, 201);
    const body = (await resumed.json()) as { sandboxID: string; envdVersion: string; envdAccessToken?: string };
    assert.equal(body.sandboxID, sbx.sandboxId);
    assert.equal(body.envdVersion, '0.6.13');
    assert.equal((await sbx.commands.run('ls -l ~/blob | wc -l')).stdout, '1\n', 'the same envd access token still works');
    await sbx.kill();
  });

  it('serves Prometheus metrics and an optional data-plane-only port', async () => {
    const sbx = await e2b.Sandbox.create('base');
    const m = await fetch(`${svc.url}/metrics`);
    assert.equal(m.status, 200);
    const text = await m.text();
    assert.match(text, /cubebox_sandboxes\{state="running"\} [1-9]/);
    assert.match(text, /cubebox_operation_seconds_count\{op="create"\} [1-9]/);
    assert.ok(!text.includes(sbx.sandboxId), 'metrics carry no sandbox ids');
    assert.ok(svc.dataUrl, 'the data port is announced');
    const viaDataPort = await e2b.Sandbox.connect(sbx.sandboxId, { sandboxUrl: svc.dataUrl });
    assert.equal((await viaDataPort.commands.run('echo via-data-port')).stdout, 'via-data-port\n');
    const control = await fetch(`${svc.dataUrl}/v2/sandboxes`, { headers: { 'X-API-KEY': key } });
    assert.equal(control.status, 404, 'the data port serves no control plane');
    await sbx.kill();
  });

  it('accepts <id>-<clientID> ids and refuses revoked keys', async () => {
    const sbx = await e2b.Sandbox.create('base');
    const info = (await (await api(`/sandboxes/${sbx.sandboxId}`)).json()) as { clientID: string };
    const suffixed = await api(`/sandboxes/${sbx.sandboxId}-${info.clientID}`);
    assert.equal(suffixed.status, 200);
    await sbx.kill();
    const extra = await createKey(dataDir);
    const ok = await fetch(`${svc.url}/v2/sandboxes`, { headers: { 'X-API-KEY': extra } });
    assert.equal(ok.status, 200);
    const revoke = await cli(dataDir, ['keys', 'revoke', extra.slice(0, 12)]);
    assert.equal(revoke.code, 0, revoke.stderr);
    const refused = await fetch(`${svc.url}/v2/sandboxes`, { headers: { 'X-API-KEY': extra } });
    assert.equal(refused.status, 401);
  });
});
