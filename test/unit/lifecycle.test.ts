import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, it } from 'node:test';
import type { SandboxManager } from '../../src/sandbox/manager.js';
import { SANDBOX_STATES, STATE_DEADLINE_MS, type SandboxState } from '../../src/sandbox/states.js';
import { CubeboxError } from '../../src/util/errors.js';
import { randomId } from '../../src/util/ids.js';
import { rig, type Rig } from './fakes.js';

/**
 * The lifecycle rules (../shared/docs/lifecycle-invariants.md), each test named after the
 * rule it proves, on a fake runtime and fake host operations with the real store. The same
 * rules are proven on real processes by test/integration/lifecycle*.test.ts and crash.test.ts.
 */

const NO_AGENT = { template: 't', agent: false, command: ['/bin/sleep', 'infinity'] };

let r: Rig;
let m: SandboxManager;
beforeEach(async () => {
  r = await rig();
  m = r.m;
});
afterEach(async () => r.cleanup());

const cid = (id: string) => m.containerId(id);
const cg = (id: string) => `/cubebox-${r.paths.instanceId}/${id}`;

/** Nothing of the sandbox remains: row, ledger, container, cgroup, mounts, directory. */
function assertGone(id: string): void {
  assert.equal(r.store.getSandbox(id), undefined, 'row');
  assert.deepEqual(r.store.resources(id), [], 'ledger');
  assert.equal(r.runtime.containers.has(cid(id)), false, 'container');
  assert.equal(r.host.cgroups.has(cg(id)), false, 'cgroup');
  assert.deepEqual(r.host.mountsUnder(m.sandboxDir(id)), [], 'mounts');
  assert.equal(existsSync(m.sandboxDir(id)), false, 'directory');
}

/** A running sandbox forced into a stored state, as an operation interrupted there leaves it. */
async function inState(state: SandboxState): Promise<string> {
  const s = await m.create(NO_AGENT);
  if (state === 'paused') await m.pause(s.id);
  else if (state !== 'running') r.store.updateSandbox(s.id, { state, stateDeadline: r.clock.now() + 1000 });
  return s.id;
}

describe('lifecycle rules (fake runtime and host, real store)', () => {
  it('rule 1: delete works from every state and leaves nothing', async () => {
    for (const state of SANDBOX_STATES) {
      const id = await inState(state);
      await m.delete(id);
      assertGone(id);
    }
  });

  it('rule 1: delete works on a cold-paused sandbox (no container by design)', async () => {
    const s = await m.create(NO_AGENT);
    await m.pause(s.id, { memory: false });
    assert.equal(r.runtime.containers.has(cid(s.id)), false);
    await m.delete(s.id);
    assertGone(s.id);
  });

  it('rule 1: delete works on a half-created sandbox (ledger rows without a row) and refuses unknown ids', async () => {
    const id = randomId(20);
    const dir = m.sandboxDir(id);
    r.store.recordResource(id, 'dir', dir);
    r.store.recordResource(id, 'mount', join(dir, 'disk'));
    r.host.mounts.set(join(dir, 'disk'), `cubebox-${r.paths.instanceId}-${id}`);
    await m.delete(id);
    assertGone(id);
    await assert.rejects(m.delete(id), (e: unknown) => e instanceof CubeboxError && e.kind === 'not_found');
    await assert.rejects(m.delete('../etc'), (e: unknown) => e instanceof CubeboxError && e.kind === 'not_found');
  });

  it('rule 1: delete does not depend on the sandbox answering (a frozen container whose pause hangs elsewhere)', async () => {
    const s = await m.create(NO_AGENT);
    await m.pause(s.id);
    r.runtime.failing.set('resume', new Error('frozen guest does not answer'));
    await m.delete(s.id);
    assertGone(s.id);
    assert.ok(!r.runtime.calls.includes(`resume ${cid(s.id)}`), 'teardown never resumes');
  });

  it("rule 2: teardown uses the runtime's force delete; an orphan goes through every runtime", async () => {
    const s = await m.create(NO_AGENT);
    await m.delete(s.id);
    assert.ok(r.runtime.calls.includes(`forceDelete ${cid(s.id)}`));
    const orphan = randomId(20);
    r.runtime.containers.set(cid(orphan), { status: 'running', pid: r.host.spawnIn(cg(orphan)) });
    const report = await m.reconcile();
    assert.deepEqual(report.orphansRemoved, [orphan]);
    assert.ok(r.runtime.calls.includes(`forceDelete ${cid(orphan)}`));
    assertGone(orphan);
  });

  it('rule 3: a stale stored PID is never signalled; kills go by cgroup only', async () => {
    const innocent = process.pid; // what a recycled PID would be: some other process
    const signalled: number[] = [];
    const realKill = process.kill;
    process.kill = ((pid: number, sig?: string | number) => {
      signalled.push(pid);
      return realKill.call(process, pid, sig);
    }) as typeof process.kill;
    try {
      for (const state of ['running', 'paused', 'stopped', 'deleting'] as const) {
        const id = await inState(state);
        r.store.updateSandbox(id, { pid: innocent });
        r.host.runtimeMisses.add(cg(id)); // a process the runtime's delete misses: the cgroup kill takes it
        await m.delete(id);
        assertGone(id);
      }
      const s = await m.create(NO_AGENT);
      r.store.updateSandbox(s.id, { pid: innocent });
      await m.pause(s.id, { memory: false }); // the cold pause stops processes too
      await m.delete(s.id);
      assertGone(s.id);
    } finally {
      process.kill = realKill;
    }
    assert.deepEqual(signalled, []);
    assert.ok(r.host.kills.length >= 4, 'the cgroup kill did the work');
    for (const k of r.host.kills) assert.match(k, /^cgroup \/cubebox-/);
  });

  it('rule 4: a failed kill is not a delete: the sandbox stays recorded with its error, and a retry finishes', async () => {
    const s = await m.create(NO_AGENT);
    r.host.unkillable.add(cg(s.id));
    await assert.rejects(m.delete(s.id), /survived the kill[\s\S]*still held[\s\S]*retried/);
    const row = r.store.getSandbox(s.id)!;
    assert.equal(row.state, 'deleting');
    assert.match(row.lastError ?? '', /^delete: processes of sandbox .* survived the kill/);
    assert.ok(r.store.resources(s.id).length > 0, 'its resources stay in the ledger');
    assert.equal(m.get(s.id).state, 'deleting');
    r.host.unkillable.delete(cg(s.id));
    await m.delete(s.id);
    assertGone(s.id);
  });

  it('rule 4: a create whose teardown fails leaves the sandbox failed with both errors', async () => {
    r.host.failMountRootfs = new Error('overlay refused');
    r.host.unmount = async () => {
      throw new Error('busy');
    };
    await assert.rejects(m.create(NO_AGENT), /overlay refused/);
    const [row] = r.store.listSandboxes();
    assert.equal(row?.state, 'failed');
    assert.match(row?.lastError ?? '', /create: overlay refused; teardown: busy/);
  });

  it('rule 5: garbage collection takes the delete path and converges with backoff instead of looping', async () => {
    const s = await m.create(NO_AGENT);
    r.host.unkillable.add(cg(s.id));
    await assert.rejects(m.delete(s.id));
    const calls = () => r.runtime.calls.filter((c) => c === `forceDelete ${cid(s.id)}`).length;
    r.clock.advance(2000);
    let report = await m.reconcile();
    assert.equal(report.errors.length, 1);
    const row = r.store.getSandbox(s.id)!;
    assert.equal(row.attempts, 1);
    assert.ok(row.nextAttemptAt! > r.clock.now());
    const before = calls();
    report = await m.reconcile(); // before its next attempt: left alone, not retried in a loop
    assert.equal(calls(), before);
    r.host.unkillable.delete(cg(s.id));
    r.clock.advance(300_000);
    report = await m.reconcile();
    assert.deepEqual(report.tornDown, [s.id]);
    assertGone(s.id);
  });

  it('rule 6: concurrent pause, resume and delete on one sandbox run one at a time', async () => {
    const s = await m.create(NO_AGENT);
    const release = r.runtime.gate('pause');
    const order: string[] = [];
    const pause = m.pause(s.id).then(() => order.push('pause'));
    const resume = m.resume(s.id).then(() => order.push('resume'));
    const del = m.delete(s.id).then(() => order.push('delete'));
    await new Promise((res) => setTimeout(res, 5));
    assert.equal(r.store.getSandbox(s.id)?.state, 'pausing');
    assert.deepEqual(
      r.runtime.calls.filter((c) => c.startsWith('resume') || c.startsWith('forceDelete')),
      [],
      'nothing slips in',
    );
    release();
    await Promise.all([pause, resume, del]);
    assert.deepEqual(order, ['pause', 'resume', 'delete']);
    assertGone(s.id);
  });

  it('rule 6: the reconciler and the reaper skip a busy sandbox instead of waiting', async () => {
    const s = await m.create({ ...NO_AGENT, timeoutSec: 1 });
    const release = r.runtime.gate('pause');
    const pause = m.pause(s.id);
    r.clock.advance(STATE_DEADLINE_MS.pausing! + 1);
    const report = await m.reconcile();
    assert.deepEqual(report.skipped, [s.id]);
    assert.deepEqual(await m.reap(), []);
    release();
    await pause;
    assert.equal(m.get(s.id).state, 'paused');
  });

  it('rule 7: every resource is in the ledger before it is made, and a failed create reclaims all of it', async () => {
    const seen: string[] = [];
    r.host.onCreate = (what, path) => {
      const id = path.split('/sandboxes/')[1]!.split('/')[0]!;
      assert.ok(
        r.store.resources(id).some((x) => x.kind === what && x.name === path),
        `${path} recorded first`,
      );
      seen.push(path);
    };
    r.runtime.failing.set('run', new Error('runtime refused'));
    await assert.rejects(m.create(NO_AGENT), /runtime refused/);
    assert.ok(seen.length >= 2);
    assert.deepEqual(r.store.listSandboxes(), []);
    assert.deepEqual(r.host.mountTable(), []);
    assert.deepEqual(r.store.orphanLedgerIds(), []);
  });

  it('rule 8: start-up reconciles each interrupted operation and removes orphans', async () => {
    const healthy = await inState('running');
    const creating = await inState('creating');
    const deleting = await inState('deleting');
    const pausing = await inState('pausing'); // the runtime froze it before the crash
    await r.runtime.pause(cid(pausing));
    const resuming = await inState('paused');
    r.store.updateSandbox(resuming, { state: 'resuming' }); // the runtime thawed it before the crash
    await r.runtime.resume(cid(resuming));
    const cold = await inState('running'); // a cold pause cut short: recorded, processes half stopped
    r.store.updateSandbox(cold, { state: 'pausing', spec: JSON.stringify({ ...JSON.parse(r.store.getSandbox(cold)!.spec), coldPaused: true }) });
    const died = await inState('running');
    r.runtime.containers.delete(cid(died)); // its main process exited while we were down
    const orphan = randomId(20);
    r.runtime.containers.set(cid(orphan), { status: 'running', pid: r.host.spawnIn(cg(orphan)) });

    const next = await r.restart();
    r = next;
    m = next.m;
    for (const id of [creating, deleting, orphan]) assertGone(id);
    assert.equal(m.get(healthy).state, 'running');
    assert.equal(m.get(pausing).state, 'paused');
    assert.equal(m.get(resuming).state, 'running');
    assert.equal(m.get(cold).state, 'paused');
    assert.deepEqual(r.host.cgroups.get(cg(cold)) ?? [], [], 'a cold-paused sandbox runs nothing');
    assert.equal(m.get(died).state, 'stopped');
    assert.match(m.get(died).lastError ?? '', /stopped/);
  });

  it('rule 9: the reconciler enforces each deadline by the injected clock; the reaper acts at endAt', async () => {
    const pausing = await inState('running');
    await r.runtime.pause(cid(pausing));
    r.store.updateSandbox(pausing, { state: 'pausing', stateDeadline: r.clock.now() + STATE_DEADLINE_MS.pausing! });
    const creating = await inState('creating');
    r.store.updateSandbox(creating, { stateDeadline: r.clock.now() + STATE_DEADLINE_MS.creating! });
    await m.reconcile();
    assert.equal(m.get(pausing).state, 'pausing', 'within its deadline');
    assert.equal(m.get(creating).state, 'creating');
    r.clock.advance(STATE_DEADLINE_MS.pausing! + 1);
    await m.reconcile();
    assert.equal(m.get(pausing).state, 'paused');
    r.clock.advance(STATE_DEADLINE_MS.creating!);
    await m.reconcile();
    assertGone(creating);

    const ttl = await m.create({ ...NO_AGENT, timeoutSec: 60 });
    const toPause = await m.create({ ...NO_AGENT, timeoutSec: 60, lifecycle: { onTimeout: 'pause' } });
    assert.deepEqual(await m.reap(), []);
    r.clock.advance(60_000);
    assert.deepEqual((await m.reap()).sort(), [ttl.id, toPause.id].sort());
    assertGone(ttl.id);
    assert.equal(m.get(toPause.id).state, 'paused');
  });

  it('rule 10: PID 1 of every sandbox is tini, which reaps zombies', async () => {
    const s = await m.create(NO_AGENT);
    const config = JSON.parse(readFileSync(join(m.sandboxDir(s.id), 'bundle', 'config.json'), 'utf8')) as { process: { args: string[] } };
    assert.match(config.process.args[0]!, /\/tini$/);
    assert.deepEqual(config.process.args.slice(-2), ['/bin/sleep', 'infinity']);
  });

  it('rule 11: many create/pause/resume/delete cycles leave nothing behind (real processes: test/integration)', async () => {
    for (let i = 0; i < 50; i++) {
      const s = await m.create(NO_AGENT);
      await m.pause(s.id, { memory: i % 2 === 0 });
      if (i % 3 === 0) await m.resume(s.id);
      await m.delete(s.id);
    }
    assert.deepEqual(r.store.listSandboxes(), []);
    assert.deepEqual(r.store.orphanLedgerIds(), []);
    assert.deepEqual(r.host.mountTable(), []);
    assert.deepEqual([...r.host.cgroups.keys()], []);
    assert.deepEqual([...r.runtime.containers.keys()], []);
  });

  it("a create's runtime: the template's, else the one asked for, else the node's; a conflict or an unknown name makes nothing", async () => {
    const s = await m.create({ ...NO_AGENT, runtime: 'crun' });
    assert.equal(m.get(s.id).runtime, 'crun');
    await m.delete(s.id);
    await assert.rejects(m.create({ ...NO_AGENT, runtime: 'nope' }), /unknown runtime 'nope'/);
    const t = m.templates.addDerived('needs-other', m.templates.get('t'), { runtime: 'runsc' });
    await assert.rejects(m.create({ ...NO_AGENT, template: t.name, runtime: 'crun' }), /runs under runsc only/);
    assert.deepEqual(r.store.listSandboxes(), []);
    assert.deepEqual(r.store.orphanLedgerIds(), []);
  });

  it('operations refused by the state table keep their conflict messages', async () => {
    const s = await m.create(NO_AGENT);
    await assert.rejects(m.resume(s.id), /is already running/);
    await m.pause(s.id);
    await assert.rejects(m.pause(s.id), /is already paused/);
    await assert.rejects(m.exec(s.id, ['true']), /resume it before running commands/);
    await assert.rejects(m.refresh(s.id, 10), (e: unknown) => e instanceof CubeboxError && e.kind === 'conflict');
    assert.equal((await m.connect(s.id, 10)).resumed, true);
  });
});
