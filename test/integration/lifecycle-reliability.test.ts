import assert from 'node:assert/strict';
import { type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { normalizeLifecycle, type SandboxManager } from '../../src/sandbox/manager.js';
import { assertNoSandboxLeaks, destroyInstance, execIn, instanceLeaks, newDataDir, newInstance, openManager } from '../helpers/instance.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(what: string, cond: () => boolean | Promise<boolean>, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await cond()) return;
    await sleep(50);
  }
  assert.fail(`timed out after ${timeoutMs} ms waiting for: ${what}`);
}

/** An agent-less sandbox: its main process only keeps it alive (fast to create). */
const plain = { template: 'busybox', agent: false } as const;

describe('a filesystem-only (cold) pause keeps the sandbox and its disk', () => {
  let m: SandboxManager | undefined;
  after(async () => destroyInstance(m));

  it('survives reconciler passes, resumes with its files and a new boot id', async () => {
    m = await newInstance();
    const s = await m.create({ template: 'busybox' });
    assert.equal((await execIn(m, s.id, ['sh', '-c', 'echo kept > /data.txt'])).code, 0);
    const boot1 = (await execIn(m, s.id, ['cat', '/proc/sys/kernel/random/boot_id'])).stdout.trim();
    assert.match(boot1, /^[0-9a-f-]{36}$/);
    assert.notEqual(boot1, readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim(), 'the sandbox has a boot id of its own');

    await m.pause(s.id, { memory: false });
    assert.equal(m.get(s.id).state, 'paused');
    assert.equal(m.get(s.id).coldPaused, true);
    for (let i = 0; i < 3; i++) {
      const r = await m.reconcile();
      assert.deepEqual(r.errors, []);
    }
    const info = m.get(s.id);
    assert.equal(info.state, 'paused', `after reconciling: ${info.state} (${info.lastError})`);
    assert.equal(m.cgroup(s.id).pids().length, 0, 'no process runs while cold-paused');

    // a manager restart adopts it as it is
    const dataDir = m.paths.dataDir;
    await m.close();
    m = await openManager(dataDir);
    assert.equal(m.get(s.id).state, 'paused');

    await m.resume(s.id);
    assert.equal(m.get(s.id).state, 'running');
    assert.equal((await execIn(m, s.id, ['cat', '/data.txt'])).stdout, 'kept\n');
    const boot2 = (await execIn(m, s.id, ['cat', '/proc/sys/kernel/random/boot_id'])).stdout.trim();
    assert.match(boot2, /^[0-9a-f-]{36}$/);
    assert.notEqual(boot2, boot1, 'a cold resume is a new boot');
    await m.delete(s.id);
    assertNoSandboxLeaks(m.paths, s.id);
  });

  it("the SDK's object form onTimeout { action: 'pause', keepMemory: false } cold-pauses at the end of life", async () => {
    assert.deepEqual(normalizeLifecycle({ onTimeout: { action: 'pause', keepMemory: false } }), { onTimeout: 'pause', autoResume: false, keepMemory: false });
    assert.deepEqual(normalizeLifecycle({ onTimeout: 'pause' }), { onTimeout: 'pause', autoResume: false, keepMemory: true });
    assert.deepEqual(normalizeLifecycle({ onTimeout: { action: 'kill' } }), { onTimeout: 'kill', autoResume: false, keepMemory: true });
    assert.throws(() => normalizeLifecycle({ onTimeout: { action: 'pause', keepMemory: false }, autoResume: true }), /autoResume/);
    assert.throws(() => normalizeLifecycle({ onTimeout: 'stop' as 'kill' }), /onTimeout/);

    const s = await m!.create({ template: 'busybox', timeoutSec: 1, lifecycle: { onTimeout: { action: 'pause', keepMemory: false } } });
    assert.equal((await execIn(m!, s.id, ['sh', '-c', 'echo ttl > /ttl.txt'])).code, 0);
    await until(
      'the reaper pauses it',
      async () => {
        await m!.reap();
        return m!.get(s.id).state === 'paused';
      },
      10_000,
    );
    assert.equal(m!.get(s.id).coldPaused, true);
    await m!.reconcile();
    assert.equal(m!.get(s.id).state, 'paused');
    await m!.resume(s.id, { timeoutSec: 300 });
    assert.equal((await execIn(m!, s.id, ['cat', '/ttl.txt'])).stdout, 'ttl\n');
    await m!.delete(s.id);
  });
});

describe('long execs in some sandboxes do not block deleting others', () => {
  let m: SandboxManager | undefined;
  after(async () => destroyInstance(m));

  it('5 long execs run while 20 other sandboxes are deleted: every delete succeeds, nothing leaks', async () => {
    m = await newInstance();
    const busy: string[] = [];
    const others: string[] = [];
    for (let i = 0; i < 5; i++) busy.push((await m.create(plain)).id);
    for (let i = 0; i < 20; i++) others.push((await m.create(plain)).id);
    const execs: ChildProcess[] = [];
    for (const id of busy) execs.push(await m.exec(id, ['sleep', '30'], { stdio: 'ignore' }));
    await sleep(300); // the runtime's exec calls are up
    for (const c of execs) assert.equal(c.exitCode, null, 'the long exec runs');
    const results = await Promise.allSettled(others.map((id) => m!.delete(id)));
    const failed = results.flatMap((r, i) => (r.status === 'rejected' ? [`${others[i]}: ${(r.reason as Error).message}`] : []));
    assert.deepEqual(failed, []);
    for (const id of others) assertNoSandboxLeaks(m.paths, id);
    for (const c of execs) assert.equal(c.exitCode, null, 'the long execs still run');
    const exits = execs.map((c) => new Promise((r) => c.once('close', r)));
    for (const id of busy) await m.delete(id); // ends the execs with their sandboxes
    await Promise.all(exits);
    for (const id of busy) assertNoSandboxLeaks(m.paths, id);
  });
});

describe('a hung runtime call does not stall the node', () => {
  let m: SandboxManager | undefined;
  const dir = newDataDir();
  const wrapper = join(dir, 'crun-wrapper');
  const hangFlag = join(dir, 'hang-pause');
  after(async () => {
    delete process.env.CUBEBOX_CRUN_BIN;
    rmSync(hangFlag, { force: true });
    await destroyInstance(m);
    rmSync(dir, { recursive: true, force: true });
  });

  it('a pause whose runtime call hangs leaves pausing by its deadline, and the reconciler handles another sandbox meanwhile', async () => {
    // the real crun behind a shim that freezes itself on `pause` while the flag file exists
    writeFileSync(wrapper, `#!/bin/sh\ncase " $* " in *" pause "*) [ -e '${hangFlag}' ] && kill -STOP $$ ;; esac\nexec /usr/bin/crun "$@"\n`);
    chmodSync(wrapper, 0o755);
    process.env.CUBEBOX_CRUN_BIN = wrapper;
    m = await newInstance({ reconcileIntervalMs: 300 });
    if (m.runtime.name !== 'crun') return; // the shim wraps crun
    const a = (await m.create(plain)).id;
    const b = (await m.create(plain)).id;
    writeFileSync(hangFlag, '');

    const started = Date.now();
    const pausing = m.pause(a).then(
      () => 'paused',
      (e: Error) => e.message,
    );
    await until('A is pausing', () => m!.get(a).state === 'pausing', 5000);
    const deadline = m.store.getSandbox(a)!.stateDeadline!;

    // B's init dies (a process this test started through the manager): the reconciler must see it now
    const st = await m.runtimeOf(b).state(m.containerId(b));
    assert.ok(st && st.pid > 0);
    process.kill(st.pid, 'SIGKILL');
    await until('the reconciler marks B stopped', () => m!.get(b).state === 'stopped', 10_000);
    assert.equal(m.get(a).state, 'pausing', 'A is still in its hung pause while B was handled');

    const outcome = await pausing;
    assert.match(outcome, /did not finish/);
    const info = m.get(a);
    assert.notEqual(info.state, 'pausing');
    assert.equal(info.state, 'running', 'settled from the host: the container was never paused');
    assert.ok(Date.now() <= deadline + 2000, `left pausing ${Date.now() - deadline} ms after its deadline (took ${Date.now() - started} ms)`);
    rmSync(hangFlag);
    await m.pause(a); // the runtime works again
    assert.equal(m.get(a).state, 'paused');
  });
});

describe('every operation uses the sandbox’s own runtime', () => {
  it('a sandbox made with runsc is torn down with runsc by a crun manager', async () => {
    if (!existsSync('/usr/bin/runsc')) return;
    const dataDir = newDataDir();
    let m = await openManager(dataDir, { runtime: 'runsc' });
    await m.templates.addBusybox('busybox');
    const id = (await m.create(plain)).id;
    assert.equal(m.get(id).runtime, 'runsc');
    await m.close();

    m = await openManager(dataDir, { runtime: 'crun' });
    assert.equal(m.get(id).state, 'running', 'the crun manager sees the runsc sandbox as it is');
    await m.delete(id);
    const runscRoot = join(m.paths.runRoot, 'runsc');
    const left = existsSync(runscRoot) ? readdirSync(runscRoot).filter((e) => e.includes(id)) : [];
    assert.deepEqual(left, [], "runsc's state of the sandbox is gone");
    assert.deepEqual(instanceLeaks(m.paths), []);
    await destroyInstance(m);
  });
});
