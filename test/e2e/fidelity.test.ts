// E2B fidelity through the published SDK: the list's startedAfter is inclusive, fork's count is
// checked before the sandbox, file metadata lives in user.e2b.* extended attributes, writes
// anywhere make their missing parents, base has E2B's tools, metrics of several sandboxes and
// of a team, and templates (list, one, tags, Template.exists, delete).
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { cli, destroyInstance } from '../helpers/instance.js';
import { sdkService, testCapabilities, type E2B, type Service } from '../helpers/service.js';

let e2b: E2B;
let svc: Service;
let dataDir: string;
let key: string;
let otherKey: string;
const made: { kill(): Promise<unknown> }[] = [];

/** The SDK's own typed REST client, as the E2B CLI uses it. */
const client = (apiKey = key) => new e2b.ApiClient(new e2b.ConnectionConfig({ apiKey })).api;
const newSandbox = async (template = 'base') => {
  const s = await e2b.Sandbox.create(template);
  made.push(s);
  return s;
};

describe('E2B fidelity through the SDK', { timeout: 900_000 }, () => {
  before(async () => {
    ({ svc, dataDir, key, e2b } = await sdkService({ CUBEBOX_POOL: '' }));
    const r = await cli(dataDir, ['keys', 'create', '--team', 'fidelity-other']);
    assert.equal(r.code, 0, r.stderr);
    otherKey = r.stdout.trim().split('\n').pop()!.trim();
  });
  after(async () => {
    for (const s of made) await s.kill().catch(() => {});
    await svc.stop();
    await destroyInstance(undefined, dataDir);
  });

  it('Sandbox.list startedAfter is inclusive of the very startedAt the SDK got', async () => {
    const sbx = await newSandbox();
    const info = await sbx.getInfo();
    const at = await e2b.Sandbox.list({ query: { startedAfter: info.startedAt } }).nextItems();
    assert.ok(
      at.some((s) => s.sandboxId === sbx.sandboxId),
      'a sandbox that started exactly at startedAfter is listed',
    );
    const later = await e2b.Sandbox.list({ query: { startedAfter: new Date(info.startedAt.getTime() + 1) } }).nextItems();
    assert.ok(!later.some((s) => s.sandboxId === sbx.sandboxId), 'one millisecond later it is not');
  });

  // (SDK 2.51 turns a control-plane 400 into a SandboxError with statusCode 400; InvalidArgumentError is envd's)
  it('fork with count 0 is a 400, checked before the sandbox is looked up', async () => {
    const sbx = await newSandbox();
    const is400 = (e: unknown) => e instanceof e2b.SandboxError && (e as { statusCode?: number }).statusCode === 400 && /between 1 and 16/.test(e.message);
    await assert.rejects(e2b.Sandbox.fork(sbx.sandboxId, { count: 0 }), is400);
    await assert.rejects(e2b.Sandbox.fork('nosuchsandbox0000000', { count: 0 }), is400);
    await assert.rejects(e2b.Sandbox.fork(sbx.sandboxId, { count: 17 }), is400);
    await assert.rejects(e2b.Sandbox.fork('nosuchsandbox0000000', { count: 1 }), e2b.SandboxNotFoundError);
  });

  it('file metadata: given on write, set inside the sandbox, replaced on overwrite, bounded', async () => {
    const sbx = await newSandbox();
    const w = await sbx.files.write('meta.txt', 'one', { metadata: { Author: 'alice', kind: 'draft' } });
    assert.deepEqual(w.metadata, { author: 'alice', kind: 'draft' });
    assert.deepEqual((await sbx.files.getInfo('meta.txt')).metadata, { author: 'alice', kind: 'draft' });
    // the metadata is the file's user.e2b.* attributes: visible inside, and set from inside (a
    // runtime whose root keeps no attributes keeps it beside the file: the API sees it, not setfattr)
    const py = (code: string) => sbx.commands.run(`python3 -c "${code}"`);
    const xattrs = testCapabilities.rootXattrs;
    if (xattrs) {
      assert.equal((await py("import os; print(os.getxattr('meta.txt', 'user.e2b.author').decode())")).stdout, 'alice\n');
      await py("import os; os.setxattr('meta.txt', 'user.e2b.reviewer', b'bob'); os.setxattr('meta.txt', 'user.other', b'not ours')");
    } else {
      await sbx.files.write('meta.txt', 'one', { metadata: { author: 'alice', kind: 'draft', reviewer: 'bob' } });
    }
    assert.deepEqual((await sbx.files.getInfo('meta.txt')).metadata, { author: 'alice', kind: 'draft', reviewer: 'bob' });
    const listed = (await sbx.files.list('.')).find((e) => e.name === 'meta.txt');
    assert.deepEqual(listed?.metadata, { author: 'alice', kind: 'draft', reviewer: 'bob' });
    // an overwrite sets exactly what it is given (the other attributes stay)
    await sbx.files.write('meta.txt', 'two', { metadata: { only: 'this' } });
    assert.deepEqual((await sbx.files.getInfo('meta.txt')).metadata, { only: 'this' });
    if (xattrs) assert.equal((await py("import os; print(os.getxattr('meta.txt', 'user.other').decode())")).stdout, 'not ours\n');
    await sbx.files.write('meta.txt', 'three');
    assert.equal((await sbx.files.getInfo('meta.txt')).metadata, undefined);
    // a symlink has none of its own (never followed); a write through it tags the target
    await sbx.commands.run('ln -s meta.txt link.txt');
    await sbx.files.write('link.txt', 'four', { metadata: { via: 'link' } });
    assert.equal((await sbx.files.getInfo('link.txt')).metadata, undefined);
    assert.deepEqual((await sbx.files.getInfo('meta.txt')).metadata, { via: 'link' });
    // root's files too (envd's own helper), and the limits
    await sbx.files.write('/root/r.txt', 'r', { user: 'root', metadata: { owner: 'root' } });
    assert.deepEqual((await sbx.files.getInfo('/root/r.txt', { user: 'root' })).metadata, { owner: 'root' });
    await assert.rejects(sbx.files.write('big.txt', 'x', { metadata: { big: 'v'.repeat(2000) } }), e2b.InvalidArgumentError);
  });

  it("files.write as the default user anywhere: missing parents are made and are the user's, as in E2B", async () => {
    const sbx = await newSandbox();
    const w = await sbx.files.write('/0/x.txt', 'zero');
    assert.equal(w.path, '/0/x.txt');
    assert.equal(await sbx.files.read('/0/x.txt'), 'zero');
    assert.equal((await sbx.files.getInfo('/0')).owner, 'user');
    assert.equal((await sbx.files.getInfo('/0/x.txt')).owner, 'user');
    assert.equal(await sbx.files.makeDir('/opt/made/here'), true);
    // (python's stat: coreutils' statx flags are refused by gVisor's 2022 kernel)
    const owners = "import os, pwd; [print(pwd.getpwuid(os.stat(p).st_uid).pw_name) for p in ('/opt/made', '/opt/made/here')]";
    assert.equal((await sbx.commands.run(`python3 -c "${owners}"`)).stdout, 'user\nuser\n');
    // what exists keeps its owner's permissions: root's files stay closed to the user
    await assert.rejects(sbx.files.write('/etc/passwd', 'no'), /permission denied/);
    assert.match((await sbx.commands.run('head -1 /etc/passwd')).stdout, /^root:/);
  });

  it("base has what E2B's base gives agents: python, pip, venv; `python -m http.server` serves through the proxy", async () => {
    const sbx = await newSandbox();
    const v = await sbx.commands.run(
      'python --version; pip --version; python -m venv --without-pip /tmp/venv && /tmp/venv/bin/python -c "import sys; print(sys.prefix)"',
    );
    assert.match(v.stdout, /^Python 3\.\d+\.\d+\npip \d+[^\n]*\n\/tmp\/venv\n$/);
    // pip installs as the user (into ~/.local), not refused as an "externally managed" Python
    await sbx.files.write('/tmp/p/hello/__init__.py', 'X = 41\n');
    await sbx.files.write('/tmp/p/setup.py', "from setuptools import setup\nsetup(name='hello', version='1', packages=['hello'])\n");
    await sbx.commands.run('pip install -q --no-index --no-build-isolation /tmp/p');
    assert.equal((await sbx.commands.run('cd / && python -c "import hello; print(hello.X + 1)"')).stdout, '42\n');
    assert.equal((await sbx.commands.run('command -v wget unzip xz bzip2 file gpg ssh patch | wc -l')).stdout, '8\n');
    await sbx.commands.run('cd /tmp && echo served > index.txt && python -m http.server 8000 >/dev/null 2>&1', { background: true });
    await sbx.commands.run('for i in $(seq 100); do (echo > /dev/tcp/127.0.0.1/8000) 2>/dev/null && exit 0; sleep 0.1; done; exit 1');
    const r = await fetch(`${svc.url}/index.txt`, { headers: { 'E2b-Sandbox-Id': sbx.sandboxId, 'E2b-Sandbox-Port': '8000' } });
    assert.equal(r.status, 200);
    assert.equal(await r.text(), 'served\n');
  });

  it('metrics of several sandboxes at once, and of the team (another team is 404)', async () => {
    const [a, b] = [await newSandbox(), await newSandbox()];
    const res = await client().GET('/sandboxes/metrics', { params: { query: { sandbox_ids: [a.sandboxId, b.sandboxId, 'nosuchsandbox0000000'] } } });
    assert.equal(res.response.status, 200);
    assert.deepEqual(Object.keys(res.data!.sandboxes).sort(), [a.sandboxId, b.sandboxId].sort());
    for (const m of Object.values(res.data!.sandboxes)) {
      assert.ok(m.memTotal > 0 && m.diskTotal > 0 && m.cpuCount > 0 && typeof m.timestampUnix === 'number', JSON.stringify(m));
    }
    assert.equal((await client().GET('/sandboxes/metrics', { params: { query: { sandbox_ids: [] } } })).response.status, 400);
    assert.deepEqual(
      Object.keys((await client(otherKey).GET('/sandboxes/metrics', { params: { query: { sandbox_ids: [a.sandboxId] } } })).data!.sandboxes),
      [],
    );

    const teams = (await client().GET('/teams')).data!;
    assert.equal(teams.length, 1);
    const teamID = teams[0]!.teamID;
    const series = await client().GET('/teams/{teamID}/metrics', { params: { path: { teamID } } });
    assert.equal(series.response.status, 200);
    const last = series.data![series.data!.length - 1]!;
    assert.ok(last.concurrentSandboxes >= 2, JSON.stringify(series.data));
    assert.ok(Math.abs(last.timestampUnix * 1000 - Date.now()) < 60_000);
    const max = await client().GET('/teams/{teamID}/metrics/max', { params: { path: { teamID }, query: { metric: 'concurrent_sandboxes' } } });
    assert.ok(max.data!.value >= 2, JSON.stringify(max.data));
    const bad = await fetch(`${svc.url}/teams/${teamID}/metrics/max`, { headers: { 'X-API-KEY': key } });
    assert.equal(bad.status, 400);
    assert.equal((await client(otherKey).GET('/teams/{teamID}/metrics', { params: { path: { teamID } } })).response.status, 404);
    assert.equal(
      (await client(otherKey).GET('/teams/{teamID}/metrics/max', { params: { path: { teamID }, query: { metric: 'sandbox_start_rate' } } })).response.status,
      404,
    );
  });

  it('templates: list, one, Template.exists, tags, delete by the owning team only', async () => {
    const list = (await client().GET('/templates')).data!;
    const base = list.find((t) => t.names.includes('base'));
    assert.ok(base && base.public && base.buildStatus === 'ready' && base.envdVersion === '0.6.13', JSON.stringify(list));
    const one = (await client().GET('/templates/{templateID}', { params: { path: { templateID: 'base' } } })).data!;
    assert.equal(one.templateID, base.templateID);
    assert.equal(one.builds[0]?.buildID, base.buildID);
    assert.equal(await e2b.Template.exists('base'), true);
    assert.equal(await e2b.Template.exists('no-such-template-here'), false);

    // a team's own template: a snapshot, which it may tag and delete; another team cannot see it
    const src = await newSandbox();
    await src.commands.run('echo tagged > ~/t');
    const snap = await src.createSnapshot({ name: 'fidelity-snap' });
    assert.equal(await e2b.Template.exists('fidelity-snap'), true);
    assert.equal(await e2b.Template.exists('fidelity-snap', { apiKey: otherKey }), false);
    const tagged = await e2b.Template.assignTags('fidelity-snap', ['v1', 'stable']);
    assert.deepEqual(tagged.tags, ['v1', 'stable']);
    assert.deepEqual((await e2b.Template.getTags('fidelity-snap')).map((t) => t.tag).sort(), ['default', 'stable', 'v1']);
    const fromTag = await newSandbox('fidelity-snap:v1');
    assert.equal((await fromTag.commands.run('cat ~/t')).stdout, 'tagged\n');
    await e2b.Template.removeTags('fidelity-snap', 'stable');
    assert.deepEqual((await e2b.Template.getTags('fidelity-snap')).map((t) => t.tag).sort(), ['default', 'v1']);
    await assert.rejects(e2b.Template.removeTags('fidelity-snap', 'stable'), /no tag/);
    await assert.rejects(e2b.Template.assignTags('fidelity-snap', 'x', { apiKey: otherKey }), /not found/);

    // public templates belong to the host: a team key may not tag or delete them
    await assert.rejects(e2b.Template.assignTags('base', 'mine'), /admin/);
    const del = await client().DELETE('/templates/{templateID}', { params: { path: { templateID: 'base' } } });
    assert.equal(del.response.status, 403);
    assert.equal((await client(otherKey).DELETE('/templates/{templateID}', { params: { path: { templateID: snap.snapshotId } } })).response.status, 404);
    await fromTag.kill();
    assert.equal((await client().DELETE('/templates/{templateID}', { params: { path: { templateID: snap.snapshotId } } })).response.status, 204);
    assert.equal(await e2b.Template.exists('fidelity-snap'), false);
  });
});
