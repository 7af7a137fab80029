import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { openPaths } from '../../src/config.js';
import { assertNoSandboxLeaks, destroyInstance, instanceLeaks } from '../helpers/instance.js';
import { sdkService, startService, testRuntime, type E2B, type Service } from '../helpers/service.js';

let e2b: E2B;
let svc: Service;
let dataDir: string;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const created: string[] = [];

async function newSandbox(opts: Parameters<E2B['Sandbox']['create']>[1] = {}) {
  const sbx = await e2b.Sandbox.create('base', opts);
  created.push(sbx.sandboxId);
  return sbx;
}

describe('cubebox serve with the e2b SDK', { timeout: 900_000 }, () => {
  before(async () => {
    ({ svc, dataDir, e2b } = await sdkService());
  });

  after(async () => {
    for (const id of created) await e2b.Sandbox.kill(id).catch(() => undefined);
    await svc.stop();
    await destroyInstance(undefined, dataDir);
  });

  it('creates a sandbox with metadata and envVars, runs commands, reads and writes files', async () => {
    const sbx = await newSandbox({ metadata: { suite: 'basic' }, envs: { GREETING: 'hello from envVars' } });
    assert.match(sbx.sandboxId, /^[a-z0-9]{20}$/);
    const r = await sbx.commands.run('echo "$GREETING"; whoami; pwd');
    assert.equal(r.stdout, 'hello from envVars\nuser\n/home/user\n');
    assert.equal(r.exitCode, 0);
    await assert.rejects(sbx.commands.run('exit 3'), (err: Error & { exitCode?: number }) => err.exitCode === 3);
    await sbx.files.write('/home/user/notes/a.txt', 'written through the proxy');
    assert.equal(await sbx.files.read('/home/user/notes/a.txt'), 'written through the proxy');
    assert.equal((await sbx.commands.run('cat ~/notes/a.txt')).stdout, 'written through the proxy');
    const info = await sbx.getInfo();
    assert.equal(info.sandboxId, sbx.sandboxId);
    assert.equal(info.state, 'running');
    assert.deepEqual(info.metadata, { suite: 'basic' });
    assert.ok(info.endAt.getTime() > info.startedAt.getTime());
    assert.equal(await sbx.kill(), true);
    assert.equal(await e2b.Sandbox.kill(sbx.sandboxId), false, 'a second kill returns false');
    assertNoSandboxLeaks(openPaths(dataDir, false), sbx.sandboxId);
  });

  it("a create chooses its runtime with the 'cubebox.runtime' metadata key; an unknown one is a 400", async () => {
    const other = testRuntime === 'runsc' ? 'crun' : 'runsc';
    const sbx = await newSandbox({ metadata: { 'cubebox.runtime': other } });
    const kernel = (await sbx.commands.run('uname -r')).stdout;
    // gVisor reports its own kernel (4.4.0); the host's is newer
    assert.equal(kernel.startsWith('4.4.0'), other === 'runsc', kernel);
    assert.equal((await sbx.getInfo()).metadata['cubebox.runtime'], other);
    await sbx.kill();
    assertNoSandboxLeaks(openPaths(dataDir, false), sbx.sandboxId);
    await assert.rejects(newSandbox({ metadata: { 'cubebox.runtime': 'nope' } }), /unknown runtime 'nope'/);
  });

  it('lists with metadata filters and pagination, newest first', async () => {
    const tag = `list-${Date.now()}`;
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) ids.push((await newSandbox({ metadata: { suite: tag, n: String(i) } })).sandboxId);
    const pager = e2b.Sandbox.list({ query: { metadata: { suite: tag } }, limit: 2 });
    const page1 = await pager.nextItems();
    assert.deepEqual(
      page1.map((s) => s.sandboxId),
      [ids[2], ids[1]],
    );
    assert.equal(pager.hasNext, true);
    const page2 = await pager.nextItems();
    assert.deepEqual(
      page2.map((s) => s.sandboxId),
      [ids[0]],
    );
    assert.equal(pager.hasNext, false);
    const one = await e2b.Sandbox.list({ query: { metadata: { suite: tag, n: '1' } } }).nextItems();
    assert.deepEqual(
      one.map((s) => s.sandboxId),
      [ids[1]],
    );
    await e2b.Sandbox.pause(ids[0]!);
    const paused = await e2b.Sandbox.list({ query: { metadata: { suite: tag }, state: ['paused'] } }).nextItems();
    assert.deepEqual(
      paused.map((s) => s.sandboxId),
      [ids[0]],
    );
    for (const id of ids) assert.equal(await e2b.Sandbox.kill(id), true);
  });

  it('pause -> not running -> connect -> a background sleep keeps its PID and is connectable -> kill', async () => {
    const sbx = await newSandbox();
    const bg = await sbx.commands.run('sleep 600', { background: true });
    const pid = bg.pid;
    assert.equal(await sbx.pause(), true);
    assert.equal(await sbx.isRunning(), false);
    assert.equal(await sbx.pause(), false, 'pausing twice returns false');
    const again = await e2b.Sandbox.connect(sbx.sandboxId);
    assert.equal(await again.isRunning(), true);
    const procs = await again.commands.list();
    assert.ok(
      procs.some((p) => p.pid === pid),
      `pid ${pid} should survive the pause`,
    );
    assert.equal((await again.commands.run(`kill -0 ${pid} && echo alive`)).stdout, 'alive\n');
    const handle = await again.commands.connect(pid);
    assert.equal(handle.pid, pid);
    assert.equal(await again.commands.kill(pid), true);
    await assert.rejects(handle.wait());
    assert.equal(await again.kill(), true);
  });

  it('kills a paused sandbox and everything it owned', async () => {
    const sbx = await newSandbox();
    await sbx.commands.run('echo data > ~/f');
    assert.equal(await sbx.pause(), true);
    assert.equal(await e2b.Sandbox.kill(sbx.sandboxId), true);
    assertNoSandboxLeaks(openPaths(dataDir, false), sbx.sandboxId);
    assert.equal(await e2b.Sandbox.kill(sbx.sandboxId), false);
    await assert.rejects(e2b.Sandbox.connect(sbx.sandboxId), (err: Error) => err instanceof e2b.SandboxNotFoundError || /not found/i.test(err.message));
  });

  it('setTimeout(5000): the sandbox is gone at 6 s', async () => {
    const sbx = await newSandbox();
    await sbx.setTimeout(5000);
    await sleep(6000);
    assert.equal(await e2b.Sandbox.kill(sbx.sandboxId), false, 'the reaper should have killed it');
    assertNoSandboxLeaks(openPaths(dataDir, false), sbx.sandboxId);
  });

  it("lifecycle onTimeout 'pause' auto-pauses, and connect resumes it", async () => {
    const sbx = await newSandbox({ timeoutMs: 3000, lifecycle: { onTimeout: 'pause' } });
    await sbx.commands.run('echo kept > ~/state');
    await sleep(4500);
    const info = await e2b.Sandbox.getInfo(sbx.sandboxId);
    assert.equal(info.state, 'paused');
    const back = await e2b.Sandbox.connect(sbx.sandboxId, { timeoutMs: 60_000 });
    assert.equal((await back.commands.run('cat ~/state')).stdout, 'kept\n');
    assert.equal((await back.getInfo()).state, 'running');
    await back.kill();
  });

  it('pause with keepMemory false keeps files and loses processes', async () => {
    const sbx = await newSandbox();
    await sbx.commands.run('echo on-disk > ~/cold');
    const bg = await sbx.commands.run('sleep 600', { background: true });
    const bootBefore = (await sbx.commands.run('cat /proc/sys/kernel/random/boot_id; cat /proc/1/stat | cut -d" " -f22')).stdout;
    assert.equal(await sbx.pause({ keepMemory: false }), true);
    const back = await e2b.Sandbox.connect(sbx.sandboxId);
    assert.equal((await back.commands.run('cat ~/cold')).stdout, 'on-disk\n');
    const procs = await back.commands.list();
    assert.ok(!procs.some((p) => p.pid === bg.pid && p.cmd === 'sleep'), 'processes must not survive a pause without memory');
    const bootAfter = (await back.commands.run('cat /proc/sys/kernel/random/boot_id; cat /proc/1/stat | cut -d" " -f22')).stdout;
    assert.notEqual(bootAfter, bootBefore, 'the sandbox booted again (PID 1 started anew)');
    await back.kill();
  });

  it('signed download and upload URLs work with plain fetch', async () => {
    const sbx = await newSandbox({ secure: true });
    await sbx.files.write('/home/user/signed.txt', 'signed content');
    const down = await sbx.downloadUrl('/home/user/signed.txt', { useSignatureExpiration: 60_000 });
    assert.ok(!down.includes('X-Access-Token'));
    const r = await fetch(down);
    assert.equal(r.status, 200);
    assert.equal(await r.text(), 'signed content');
    const up = await sbx.uploadUrl('/home/user/uploaded.txt', { useSignatureExpiration: 60_000 });
    const form = new FormData();
    form.append('file', new Blob(['via upload url']), 'uploaded.txt');
    const u = await fetch(up, { method: 'POST', body: form });
    assert.equal(u.status, 200, await u.clone().text());
    assert.equal(await sbx.files.read('/home/user/uploaded.txt'), 'via upload url');
    const bad = await fetch(down.replace(/signature=[^&]+/, 'signature=v1_wrong'));
    assert.equal(bad.status, 401, 'a signature that matches no sandbox is refused');
    await sbx.kill();
  });

  it("a command in flight when the sandbox is killed ends with the SDK's killed TimeoutError", async () => {
    const sbx = await newSandbox();
    const outcome = sbx.commands.run('sleep 120').then(
      () => new Error('the command should not finish'),
      (err: Error) => err,
    );
    await sleep(1000);
    await e2b.Sandbox.kill(sbx.sandboxId);
    const err = await outcome;
    assert.ok(err instanceof e2b.TimeoutError, `expected TimeoutError, got ${err.name}: ${err.message}`);
    assert.match(err.message, /killed|end of life/i);
  });

  it('the data plane answers 502 with the exact body for unknown sandboxes', async () => {
    const r = await fetch(`${svc.url}/health`, { headers: { 'E2b-Sandbox-Id': 'nosuchsandbox', 'E2b-Sandbox-Port': '49983' } });
    assert.equal(r.status, 502);
    assert.equal(r.headers.get('content-type')?.split(';')[0], 'application/json');
    assert.equal(await r.text(), '{"sandboxId":"nosuchsandbox","message":"The sandbox was not found","code":502}');
  });

  it('control-plane errors have E2B shape and change nothing', async () => {
    const key = process.env.E2B_API_KEY!;
    const post = (path: string, body: string) =>
      fetch(`${svc.url}${path}`, { method: 'POST', headers: { 'X-API-KEY': key, 'content-type': 'application/json' }, body });
    const bad = await post('/v2/sandboxes', '{"templateID": ');
    assert.equal(bad.status, 400);
    assert.equal(((await bad.json()) as { code: number }).code, 400);
    const unknownTemplate = await post('/v2/sandboxes', '{"templateID":"no-such-template"}');
    assert.equal(unknownTemplate.status, 404);
    const tooLong = await post('/v2/sandboxes', '{"templateID":"base","timeout":999999}');
    assert.equal(tooLong.status, 400);
    const noKey = await fetch(`${svc.url}/v2/sandboxes`);
    assert.equal(noKey.status, 401);
    assert.equal(((await noKey.json()) as { code: number }).code, 401);
    const missing = await fetch(`${svc.url}/sandboxes/doesnotexist`, { headers: { 'X-API-KEY': key } });
    assert.equal(missing.status, 404);
    assert.deepEqual(Object.keys((await missing.json()) as object).sort(), ['code', 'message']);
    const listed = await e2b.Sandbox.list().nextItems();
    assert.equal(listed.filter((s) => !created.includes(s.sandboxId)).length, 0, 'failed requests created nothing');
  });

  it('restarting the service (even after SIGKILL) keeps running and paused sandboxes usable', async () => {
    const running = await newSandbox();
    const paused = await newSandbox();
    const bg = await running.commands.run('sleep 600', { background: true });
    await paused.commands.run('echo still-here > ~/p');
    await paused.pause();
    await svc.crash();
    svc = await startService(dataDir, { port: svc.port });
    const r = await e2b.Sandbox.connect(running.sandboxId);
    assert.equal((await r.commands.run(`kill -0 ${bg.pid} && echo ok`)).stdout, 'ok\n');
    const p = await e2b.Sandbox.connect(paused.sandboxId);
    assert.equal((await p.commands.run('cat ~/p')).stdout, 'still-here\n');
    await svc.stop();
    svc = await startService(dataDir, { port: svc.port });
    assert.equal((await r.commands.run('echo after-graceful-restart')).stdout, 'after-graceful-restart\n');
    await r.kill();
    await p.kill();
    assert.deepEqual(
      instanceLeaks(openPaths(dataDir, false)).filter((l) => l.sandbox === running.sandboxId || l.sandbox === paused.sandboxId),
      [],
    );
  });
});
