// The API key, quota and host routes through the real service: a team key manages its own
// team's keys only (never another team's, never an admin key), never sees a hash or a whole key
// but once at creation, and may revoke the key it calls with; quota changes and the host's
// status answer admin keys only, with the checks of `cubebox teams set-quota`.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { cli, destroyInstance, newDataDir } from '../helpers/instance.js';
import { startService, type Service } from '../helpers/service.js';

let svc: Service;
let dataDir: string;
let a: { key: string; id: string };
let a2: { key: string; id: string };
let b: { key: string; id: string };
let admin: { key: string; id: string };
let teamA: string;
let teamB: string;

async function newKey(team: string | undefined, extra: string[] = []): Promise<{ key: string; id: string }> {
  const r = await cli(dataDir, ['keys', 'create', '--name', 'sec', ...(team ? ['--team', team] : []), ...extra]);
  assert.equal(r.code, 0, r.stderr);
  const id = /created (?:admin )?API key (key_[a-z0-9]+)/.exec(r.stderr)?.[1];
  assert.ok(id, r.stderr);
  return { key: r.stdout.trim().split('\n').pop()!.trim(), id };
}

function api(key: string, path: string, init: { method?: string; body?: unknown } = {}) {
  return fetch(`${svc.url}${path}`, {
    method: init.method ?? 'GET',
    headers: { 'X-API-KEY': key, ...(init.body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: init.body === undefined ? undefined : JSON.stringify(init.body),
  });
}

interface Listed {
  id: string;
  name: string;
  teamID: string;
  admin: boolean;
  mask: { prefix: string; maskedValuePrefix: string };
  lastUsed: string | null;
}
const list = async (key: string, query = ''): Promise<Listed[]> => {
  const r = await api(key, `/api-keys${query}`);
  assert.equal(r.status, 200, await r.clone().text());
  return (await r.json()) as Listed[];
};
const teamIdOf = async (key: string): Promise<string> => ((await (await api(key, '/teams')).json()) as { teamID: string }[])[0]!.teamID;

describe('API keys, quotas and the host over the API', { timeout: 120_000 }, () => {
  before(async () => {
    dataDir = newDataDir();
    svc = await startService(dataDir);
    a = await newKey('keys-a');
    a2 = await newKey('keys-a');
    b = await newKey('keys-b');
    admin = await newKey(undefined, ['--admin']);
    await newKey('keys-a', ['--admin']); // an admin key that belongs to team A's directory entry
    teamA = await teamIdOf(a.key);
    teamB = await teamIdOf(b.key);
  });

  after(async () => {
    await svc?.stop();
    await destroyInstance(undefined, dataDir);
  });

  it("a team key lists its own team's keys only, without hashes, whole keys or admin keys", async () => {
    const mine = await list(a.key);
    assert.deepEqual(mine.map((k) => k.id).sort(), [a.id, a2.id].sort());
    for (const k of mine) {
      assert.equal(k.teamID, teamA);
      assert.equal(k.admin, false);
      assert.equal(k.mask.prefix, 'e2b_');
      assert.equal(k.mask.maskedValuePrefix.length, 8);
    }
    const text = JSON.stringify(mine);
    assert.doesNotMatch(text, /[0-9a-f]{40}/, 'no hash and no whole key');
    assert.ok(!text.includes(a.key.slice(12)), 'nothing past the stored prefix of a key');
    assert.ok(!text.includes(b.id), "not another team's key");
    assert.ok(mine.find((k) => k.id === a.id)?.lastUsed, 'the key in use shows when it was last used');
    // another team named in the filter is not found, like an unknown one
    assert.equal((await api(a.key, `/api-keys?teamID=${teamB}`)).status, 404);
    assert.equal((await api(a.key, `/api-keys?teamID=${teamA}`)).status, 200);
  });

  it("a team key can neither rename nor revoke another team's key, nor make one for another team", async () => {
    const rename = await api(a.key, `/api-keys/${b.id}`, { method: 'PATCH', body: { name: 'mine now' } });
    assert.equal(rename.status, 404);
    const revoke = await api(a.key, `/api-keys/${b.id}`, { method: 'DELETE' });
    assert.equal(revoke.status, 404);
    assert.equal((await api(b.key, '/teams')).status, 200, "team B's key still works");
    assert.equal((await list(b.key)).find((k) => k.id === b.id)?.name, 'sec', 'and keeps its name');
    const made = await api(a.key, '/api-keys', { method: 'POST', body: { name: 'for b', teamID: teamB } });
    assert.equal(made.status, 404);
    const asked = await api(a.key, '/api-keys', { method: 'POST', body: { name: 'x', admin: true } });
    assert.equal(asked.status, 201, 'an unknown field is ignored');
    const notAdmin = (await asked.json()) as Listed & { key: string };
    assert.equal(notAdmin.admin, false, 'no field makes an admin key');
    assert.equal((await api(notAdmin.key, '/admin/host')).status, 403);
    assert.equal((await api(a.key, `/api-keys/${notAdmin.id}`, { method: 'DELETE' })).status, 204);
    assert.equal((await list(b.key)).length, 1, 'team B has its one key');
  });

  it('a new key is shown once, works at once, can be renamed, and revoking the calling key refuses its next request', async () => {
    const r = await api(a.key, '/api-keys', { method: 'POST', body: { name: 'from the API' } });
    assert.equal(r.status, 201, await r.clone().text());
    const made = (await r.json()) as Listed & { key: string };
    assert.match(made.key, /^e2b_[0-9a-f]{40}$/);
    assert.equal(made.teamID, teamA);
    assert.equal(made.admin, false);
    assert.equal(made.mask.maskedValuePrefix, made.key.slice(4, 12));
    assert.equal(await teamIdOf(made.key), teamA, 'the new key is a key of the same team');
    assert.equal((await api(made.key, '/admin/host')).status, 403, 'and not an admin key');
    const listed = await list(a.key);
    assert.ok(listed.some((k) => k.id === made.id));
    assert.ok(!JSON.stringify(listed).includes(made.key.slice(12)), 'the list never shows it again');

    const renamed = await api(made.key, `/api-keys/${made.id}`, { method: 'PATCH', body: { name: 'renamed' } });
    assert.equal(renamed.status, 200);
    assert.equal((await list(a.key)).find((k) => k.id === made.id)?.name, 'renamed');
    assert.equal((await api(made.key, `/api-keys/${made.id}`, { method: 'PATCH', body: { name: 7 } })).status, 400);

    const del = await api(made.key, `/api-keys/${made.id}`, { method: 'DELETE' });
    assert.equal(del.status, 204);
    assert.equal((await api(made.key, '/teams')).status, 401, 'the revoked key is refused');
    assert.ok(!(await list(a.key)).some((k) => k.id === made.id), 'a revoked key is not listed');
    assert.equal((await api(a.key, `/api-keys/${made.id}`, { method: 'DELETE' })).status, 404, 'and is gone');
  });

  it("an admin key lists every team's keys, filters by team, and revokes another team's key", async () => {
    const all = await list(admin.key);
    for (const id of [a.id, a2.id, b.id, admin.id])
      assert.ok(
        all.some((k) => k.id === id),
        id,
      );
    assert.ok(all.some((k) => k.admin));
    assert.doesNotMatch(JSON.stringify(all), /[0-9a-f]{40}/);
    const onlyB = await list(admin.key, `?teamID=${teamB}`);
    assert.deepEqual(
      onlyB.map((k) => k.id),
      [b.id],
    );
    assert.equal((await api(admin.key, '/api-keys?teamID=team_nope')).status, 404);
    const made = await api(admin.key, '/api-keys', { method: 'POST', body: { name: 'for a', teamID: teamA } });
    assert.equal(made.status, 201);
    const k = (await made.json()) as Listed & { key: string };
    assert.equal(k.teamID, teamA);
    assert.equal(k.admin, false, 'keys made through the API are never admin keys');
    assert.equal((await api(admin.key, `/api-keys/${k.id}`, { method: 'DELETE' })).status, 204);
    assert.equal((await api(admin.key, `/api-keys/${a2.id}`, { method: 'DELETE' })).status, 204);
    assert.equal((await api(a2.key, '/teams')).status, 401);
    assert.equal((await api(a.key, '/teams')).status, 200, 'the team keeps its other key');
  });

  it('a team key cannot change a quota, even its own, nor read the host', async () => {
    const before = await (await api(a.key, `/teams/${teamA}/quota`)).json();
    for (const team of [teamA, teamB]) {
      const r = await api(a.key, `/teams/${team}/quota`, { method: 'PATCH', body: { sandboxes: 1000 } });
      assert.equal(r.status, 403, team);
    }
    assert.deepEqual(await (await api(a.key, `/teams/${teamA}/quota`)).json(), before, 'nothing changed');
    assert.equal((await api(a.key, '/admin/host')).status, 403);
    assert.equal((await api(b.key, '/admin/host')).status, 403);
  });

  it("an admin key changes a team's quota with the checks of the CLI, and resets a limit with null", async () => {
    const patch = (body: unknown, team = teamB) => api(admin.key, `/teams/${team}/quota`, { method: 'PATCH', body });
    for (const [body, msg] of [
      [{ sandboxes: -1 }, /non-negative integer/],
      [{ vcpus: 1.5 }, /non-negative integer/],
      [{ memoryMB: '100' }, /non-negative integer/],
      [{ nope: 1 }, /unknown quota 'nope'/],
      [{}, /at least one limit/],
      [[1], /JSON object/],
    ] as const) {
      const r = await patch(body);
      assert.equal(r.status, 400, JSON.stringify(body));
      assert.match(((await r.json()) as { message: string }).message, msg);
    }
    assert.equal((await patch({ sandboxes: 3 }, 'team_nope')).status, 404);
    const r = await patch({ sandboxes: 3, vcpus: 7 });
    assert.equal(r.status, 200, await r.clone().text());
    const set = (await r.json()) as { quota: Record<string, number> };
    assert.equal(set.quota.sandboxes, 3);
    const seen = (await (await api(b.key, `/teams/${teamB}/quota`)).json()) as { quota: Record<string, number> };
    assert.equal(seen.quota.sandboxes, 3, "the team's own key sees the new quota");
    assert.equal(seen.quota.vcpus, 7);
    const cliList = await cli(dataDir, ['teams', 'list', '--json']);
    assert.match(cliList.stdout + cliList.stderr, /"sandboxes":\s*3/, 'the CLI sees it too');
    const reset = (await (await patch({ sandboxes: null })).json()) as { quota: Record<string, number> };
    assert.equal(reset.quota.sandboxes, 20, 'null is the default again');
    assert.equal(reset.quota.vcpus, 7, 'other limits stay');
  });

  it("an admin key reads the host's capacity, runtimes and the doctor's findings", async () => {
    type Host = {
      cpus: { count: number };
      memory: { totalMB: number };
      disk: { path: string; totalMB: number };
      doctor: Record<string, unknown>;
      runtimes: unknown[];
    };
    let host: Host | undefined;
    for (let i = 0; i < 300; i++) {
      const r = await api(admin.key, '/admin/host');
      assert.equal(r.status, 200);
      host = (await r.json()) as Host;
      if (!('probing' in host.doctor)) break;
      await new Promise((res) => setTimeout(res, 100));
    }
    assert.ok(host!.cpus.count >= 1);
    assert.ok(host!.memory.totalMB > 0);
    assert.equal(host!.disk.path, dataDir);
    assert.ok(host!.disk.totalMB > 0);
    assert.ok(Array.isArray(host!.doctor.checks), JSON.stringify(host!.doctor));
    assert.ok(host!.runtimes.length >= 1);
  });

  it('the OpenAPI document describes the new routes', async () => {
    const doc = (await (await fetch(`${svc.url}/openapi.json`)).json()) as { paths: Record<string, Record<string, unknown>> };
    assert.deepEqual(Object.keys(doc.paths['/api-keys'] ?? {}).sort(), ['get', 'post']);
    assert.deepEqual(Object.keys(doc.paths['/api-keys/{apiKeyID}'] ?? {}).sort(), ['delete', 'patch']);
    assert.ok(doc.paths['/teams/{teamID}/quota']?.patch);
    assert.ok(doc.paths['/admin/host']?.get);
  });
});
