// Quotas a team could once walk around, attacked through the real service with raw HTTP and
// the published SDK: paused sandboxes (create -> pause loops, with and without memory), a
// paused sandbox kept forever, and snapshots and forks filling the host's disk outside the
// team's disk quota.
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { cli, destroyInstance } from '../helpers/instance.js';
import { sdkService, startService, type E2B, type Service } from '../helpers/service.js';

let e2b: E2B;
let svc: Service;
let dataDir: string;
let admin: string;
const made = new Set<string>(); // every sandbox made here, killed in after()

async function teamKey(team: string | undefined, extra: string[] = []): Promise<string> {
  const r = await cli(dataDir, ['keys', 'create', '--name', 'sec', ...(team ? ['--team', team] : []), ...extra]);
  assert.equal(r.code, 0, r.stderr);
  return r.stdout.trim().split('\n').pop()!.trim();
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

async function create(key: string): Promise<Response> {
  const r = await api(key, '/v2/sandboxes', { method: 'POST', body: { templateID: 'base', timeout: 600 } });
  if (r.status === 201) made.add(((await r.clone().json()) as { sandboxID: string }).sandboxID);
  return r;
}

async function newSandbox(key: string): Promise<string> {
  const r = await create(key);
  assert.equal(r.status, 201, await r.clone().text());
  return ((await r.json()) as { sandboxID: string }).sandboxID;
}

const pause = (key: string, id: string, memory = true) => api(key, `/sandboxes/${id}/pause`, { method: 'POST', body: memory ? {} : { memory: false } });

/** A 429 whose message names the limit. */
async function assertRefused(r: Response, limit: string): Promise<void> {
  const text = await r.text();
  assert.equal(r.status, 429, text);
  assert.match((JSON.parse(text) as { message: string }).message, new RegExp(`\\(${limit}\\)`), text);
}

async function kill(key: string, id: string): Promise<void> {
  assert.equal((await api(key, `/sandboxes/${id}`, { method: 'DELETE' })).status, 204);
  made.delete(id);
}

const state = async (key: string, id: string) => ((await (await api(key, `/sandboxes/${id}`)).json()) as { state: string }).state;

describe('quotas count paused sandboxes, snapshots and forks', { timeout: 900_000 }, () => {
  before(async () => {
    ({ svc, dataDir, e2b } = await sdkService());
    admin = await teamKey(undefined, ['--admin']);
  });
  after(async () => {
    for (const id of made) await api(admin, `/sandboxes/${id}`, { method: 'DELETE' }).catch(() => undefined);
    await svc.stop();
    await destroyInstance(undefined, dataDir);
  });

  it('a team limited to 3 sandboxes cannot hold more than 3 by looping create -> pause', async () => {
    const key = await teamKey('loop');
    await setQuota('loop', '--sandboxes', '3');
    const held: string[] = [];
    let refusal: Response | undefined;
    for (let i = 0; i < 6 && !refusal; i++) {
      const r = await create(key);
      if (r.status !== 201) {
        refusal = r;
        break;
      }
      const id = ((await r.json()) as { sandboxID: string }).sandboxID;
      assert.equal(await e2b.Sandbox.pause(id, { apiKey: key }), true);
      held.push(id);
    }
    assert.equal(held.length, 3, 'a paused sandbox gave up its place while keeping its memory');
    await assertRefused(refusal!, 'sandboxes');
    // a sandbox paused with its memory kept its place: resuming it at the limit is admitted
    assert.equal((await api(key, `/sandboxes/${held[0]}/resume`, { method: 'POST', body: {} })).status, 201);
    for (const id of held) await kill(key, id);
  });

  it('a filesystem-only pause frees the place but not the paused limit; a resume at the running limit is a 429 that leaves the sandbox paused and intact', async () => {
    const key = await teamKey('cold');
    await setQuota('cold', '--sandboxes', '2', '--paused-sandboxes', '2');
    const a = await newSandbox(key);
    const sbx = await e2b.Sandbox.connect(a, { apiKey: key });
    await sbx.files.write('/home/user/kept.txt', 'still here');
    assert.equal((await pause(key, a, false)).status, 204);
    const b = await newSandbox(key);
    assert.equal((await pause(key, b, false)).status, 204);
    // two paused: a third pause is refused and its sandbox keeps running
    const c = await newSandbox(key);
    await assertRefused(await pause(key, c, false), 'pausedSandboxes');
    await assertRefused(await pause(key, c), 'pausedSandboxes');
    assert.equal(await state(key, c), 'running');
    // two running (c, d): resuming a would pass the running limit
    const d = await newSandbox(key);
    await assertRefused(await api(key, `/sandboxes/${a}/resume`, { method: 'POST', body: {} }), 'sandboxes');
    await assertRefused(await api(key, `/v2/sandboxes/${a}/connect`, { method: 'POST', body: { timeout: 60 } }), 'sandboxes');
    assert.equal(await state(key, a), 'paused');
    await kill(key, d);
    const resumed = await e2b.Sandbox.connect(a, { apiKey: key });
    assert.equal(await resumed.files.read('/home/user/kept.txt'), 'still here');
    for (const id of [a, b, c]) await kill(key, id);
  });

  it("a snapshot or fork that would pass the team's disk quota is refused with 429 and leaves no layer behind", async () => {
    const key = await teamKey('disky');
    const id = await newSandbox(key);
    const { diskSizeMB } = (await (await api(key, `/sandboxes/${id}`)).json()) as { diskSizeMB: number };
    const sbx = await e2b.Sandbox.connect(id, { apiKey: key });
    await sbx.commands.run('head -c 150M /dev/urandom > /home/user/blob && sync', { timeoutMs: 120_000 });
    // room for the sandbox's own disk and 100 MiB more: a snapshot of 150 MB does not fit
    await setQuota('disky', '--disk-mb', String(diskSizeMB + 100));
    const layers = () => readdirSync(join(dataDir, 'layers')).sort();
    const before = layers();
    await assertRefused(await api(key, `/sandboxes/${id}/snapshots`, { method: 'POST', body: {} }), 'diskMB');
    await assertRefused(await api(key, `/sandboxes/${id}/fork`, { method: 'POST', body: { count: 1 } }), 'diskMB');
    assert.deepEqual(layers(), before, 'a refused snapshot left its layer');
    assert.deepEqual(await (await api(key, '/snapshots')).json(), []);
    assert.equal((await api(key, '/v2/sandboxes')).ok, true);
    // with room it is taken, and from then on it counts: the same quota refuses a second sandbox
    await setQuota('disky', '--disk-mb', String(2 * diskSizeMB + 100));
    const snap = await api(key, `/sandboxes/${id}/snapshots`, { method: 'POST', body: {} });
    assert.equal(snap.status, 201, await snap.clone().text());
    await assertRefused(await create(key), 'diskMB');
    await kill(key, id);
    await setQuota('disky', '--disk-mb', String(diskSizeMB + 100));
    await assertRefused(await create(key), 'diskMB'); // the snapshot alone outlives its sandbox
    assert.equal(await e2b.Sandbox.deleteSnapshot(((await snap.json()) as { snapshotID: string }).snapshotID, { apiKey: key }), true);
    const last = await create(key);
    assert.equal(last.status, 201, 'a deleted snapshot still counts');
    await kill(key, ((await last.json()) as { sandboxID: string }).sandboxID);
  });

  it('a paused sandbox is deleted once its paused lifetime (CUBEBOX_PAUSED_LIFETIME) ends', async () => {
    await svc.stop();
    svc = await startService(dataDir, { env: { CUBEBOX_PAUSED_LIFETIME: '2s' } });
    process.env.E2B_API_URL = svc.url;
    process.env.E2B_SANDBOX_URL = svc.url;
    const key = await teamKey('expiry');
    const warm = await newSandbox(key);
    const cold = await newSandbox(key);
    assert.equal((await pause(key, warm)).status, 204);
    assert.equal((await pause(key, cold, false)).status, 204);
    for (let i = 0; i < 120 && [warm, cold].some((id) => made.has(id)); i++) {
      await new Promise((r) => setTimeout(r, 250));
      for (const id of [warm, cold]) if ((await api(key, `/sandboxes/${id}`)).status === 404) made.delete(id);
    }
    assert.ok(!made.has(warm) && !made.has(cold), 'a paused sandbox outlived its paused lifetime');
    for (const id of [warm, cold]) assert.equal(existsSync(join(dataDir, 'sandboxes', id)), false);
  });
});
