// Template names per team, attacked through the real service with raw HTTP and the published
// SDK: team B squatting public names (built-in, built on demand, host-published), and team B
// probing team A's names through the answer to a create (409 or 201).
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { cli, destroyInstance } from '../helpers/instance.js';
import { sdkService, type E2B, type Service } from '../helpers/service.js';

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

function api(key: string, path: string, init: { method?: string; body?: unknown } = {}) {
  return fetch(`${svc.url}${path}`, {
    method: init.method ?? 'GET',
    headers: { 'X-API-KEY': key, ...(init.body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: init.body === undefined ? undefined : JSON.stringify(init.body),
  });
}

async function newSandbox(key: string, templateID = 'base'): Promise<string> {
  const r = await api(key, '/v2/sandboxes', { method: 'POST', body: { templateID, timeout: 600 } });
  assert.equal(r.status, 201, await r.clone().text());
  const id = ((await r.json()) as { sandboxID: string }).sandboxID;
  made.add(id);
  return id;
}

/** Kills every sandbox made so far (a delete on a loaded host may finish later: the service retries it). */
async function killMade(): Promise<void> {
  for (const id of made) await api(admin, `/sandboxes/${id}`, { method: 'DELETE' }).catch(() => undefined);
  made.clear();
}

/** deleteSnapshot once no sandbox uses the snapshot any more (deletes still finishing answer 409 meanwhile). */
async function deleteSnapshot(id: string, key: string): Promise<boolean> {
  for (let i = 0; ; i++) {
    try {
      return await e2b.Sandbox.deleteSnapshot(id, { apiKey: key });
    } catch (err) {
      if (i >= 120 || !/used by/.test(String(err))) throw err;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

const snapshot = (key: string, sandboxId: string, name: string) => api(key, `/sandboxes/${sandboxId}/snapshots`, { method: 'POST', body: { name } });

describe('template names per team', { timeout: 900_000 }, () => {
  let A: string;
  let B: string;

  before(async () => {
    ({ svc, dataDir, e2b } = await sdkService({ CUBEBOX_POOL: '' }));
    admin = await teamKey(undefined, ['--admin']);
    A = await teamKey('alpha');
    B = await teamKey('beta');
  });
  after(async () => {
    await killMade();
    await svc.stop();
    await destroyInstance(undefined, dataDir);
  });

  it("no team takes a public template's name: built-in, built on demand, or published on the host", async () => {
    // the host publishes a template: the CLI's templates are public
    const pub = await cli(dataDir, ['template', 'build', 'busybox', '--name', 'tools']);
    assert.equal(pub.code, 0, pub.stderr);
    const b = await newSandbox(B);
    for (const name of ['code-interpreter-v1', 'busybox', 'desktop', 'base', 'tools']) {
      const r = await snapshot(B, b, name);
      assert.equal(r.status, 409, `B took '${name}': ${r.status} ${await r.clone().text()}`);
      assert.match(((await r.json()) as { message: string }).message, /public template/);
    }
    assert.deepEqual(await e2b.Sandbox.listSnapshots({ apiKey: B }).nextItems(), [], 'a refused snapshot was kept');
    // A still gets the public templates by their names
    assert.equal(((await (await api(A, '/templates/aliases/tools')).json()) as { public: boolean }).public, true);
    const t = await e2b.Sandbox.create('tools', { apiKey: A });
    made.add(t.sandboxId);
    assert.equal((await t.commands.run('echo public')).stdout, 'public\n');
    await killMade();
  });

  it("each team names its snapshots as it likes: the same name in two teams is two snapshots, and B learns nothing of A's", async () => {
    const a = await e2b.Sandbox.create('base', { apiKey: A });
    made.add(a.sandboxId);
    await a.commands.run('echo from-a > ~/who');
    const snapA = await a.createSnapshot({ name: 'nightly' });

    // B's create of a name A uses answers exactly as for a fresh name: 201 in B's namespace
    const b = await e2b.Sandbox.create('base', { apiKey: B });
    made.add(b.sandboxId);
    await b.commands.run('echo from-b > ~/who');
    const r = await snapshot(B, b.sandboxId, 'nightly');
    assert.equal(r.status, 201, await r.clone().text());
    const snapB = ((await r.json()) as { snapshotID: string; names: string[] }).snapshotID;
    assert.notEqual(snapB, snapA.snapshotId);
    // within one team a name stays one template
    assert.equal((await snapshot(B, b.sandboxId, 'nightly')).status, 409);

    // each team's name resolves to its own: create, Template.exists, the alias check, listSnapshots by name
    for (const [key, who, id] of [
      [A, 'from-a', snapA.snapshotId],
      [B, 'from-b', snapB],
    ] as const) {
      const s = await e2b.Sandbox.create('nightly', { apiKey: key });
      made.add(s.sandboxId);
      assert.equal((await s.commands.run('cat ~/who')).stdout, `${who}\n`);
      assert.equal(await e2b.Template.exists('nightly', { apiKey: key }), true);
      assert.equal(((await (await api(key, '/templates/aliases/nightly')).json()) as { templateID: string }).templateID, id);
      const listed = await e2b.Sandbox.listSnapshots({ apiKey: key, name: 'nightly' }).nextItems();
      assert.deepEqual(
        listed.map((x) => x.snapshotId),
        [id],
      );
    }

    // tags and name:tag stay in the team too
    await e2b.Template.assignTags('nightly', 'v1', { apiKey: A });
    const v1 = await api(A, '/v2/sandboxes', { method: 'POST', body: { templateID: 'nightly:v1', timeout: 60 } });
    assert.equal(v1.status, 201, await v1.clone().text());
    made.add(((await v1.json()) as { sandboxID: string }).sandboxID);
    const bV1 = await api(B, '/v2/sandboxes', { method: 'POST', body: { templateID: 'nightly:v1', timeout: 60 } });
    assert.equal(bV1.status, 404, await bV1.clone().text());
    assert.deepEqual(
      (await e2b.Template.getTags('nightly', { apiKey: B })).map((t) => t.tag),
      ['default'],
    );

    await killMade();
    assert.equal(await deleteSnapshot(snapB, B), true);
    assert.equal(await deleteSnapshot(snapA.snapshotId, B), false, "B deleted A's snapshot");
    assert.equal(await deleteSnapshot(snapA.snapshotId, A), true);
  });
});
