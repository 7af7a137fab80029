import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { healthy } from '../../src/sandbox/envd-client.js';
import { processesInCgroup } from '../../src/sandbox/leaks.js';
import { assertNoSandboxLeaks, destroyInstance, execIn, newInstance, openManager } from '../helpers/instance.js';
import type { SandboxManager } from '../../src/sandbox/manager.js';

/**
 * Pause to disk with gVisor: a memory pause of a runsc sandbox saves its processes and memory
 * to an image and removes the container; resume restores them where they were, also after the
 * service restarted. crun and runc keep freezing (covered by the lifecycle suites).
 */

const COUNTER = 'i=0; while true; do i=$((i+1)); echo $i > /tmp/n; sleep 0.05; done';

/** Whether a process is a zombie (exited, not yet reaped) or gone. */
function zombie(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) === 'Z';
  } catch {
    return true;
  }
}

/**
 * Deletes a sandbox. A host process holding a private copy of the host's mounts (another
 * runtime call on a loaded host) can keep its disk busy for a while: the delete then says the
 * sandbox stays deleting and is retried, and the reconciler's retries finish it.
 */
async function deleteConverging(m: SandboxManager, id: string): Promise<void> {
  try {
    await m.delete(id);
    return;
  } catch (err) {
    assert.match((err as Error).message, /stays listed as deleting and is retried/);
  }
  for (let i = 0; i < 60 && m.list().some((s) => s.id === id); i++) {
    await new Promise((r) => setTimeout(r, 1000));
    await m.reconcile();
  }
  assert.equal(
    m.list().some((s) => s.id === id),
    false,
    'the reconciler finished the delete',
  );
}

async function counter(m: SandboxManager, id: string): Promise<number> {
  const r = await execIn(m, id, ['cat', '/tmp/n']);
  return Number(r.stdout.trim());
}

/** The PID (inside the sandbox) of the counting shell. */
async function counterPid(m: SandboxManager, id: string): Promise<string> {
  // the pattern's backslash keeps this shell's own command line from matching it
  const r = await execIn(m, id, ['sh', '-c', "for p in /proc/[0-9]*; do grep -q 'i=\\$((i+1))' $p/cmdline 2>/dev/null && basename $p; done"]);
  return r.stdout.trim().split('\n')[0] ?? '';
}

describe('gVisor sandboxes and the host mounts', { skip: !existsSync('/usr/bin/runsc') && 'runsc is not installed' }, () => {
  it("a running or restored runsc sandbox holds no copy of other sandboxes' disks: those delete cleanly meanwhile", async () => {
    const crun = await newInstance();
    const gvisor = await newInstance({ runtime: 'runsc' });
    try {
      const first = await crun.create({ template: 'busybox' });
      const g = await gvisor.create({ template: 'busybox' });
      const second = await crun.create({ template: 'busybox' });
      await crun.delete(first.id); // its disk was mounted when the runsc sandbox started
      assertNoSandboxLeaks(crun.paths, first.id);
      await gvisor.pause(g.id);
      await gvisor.resume(g.id);
      await crun.delete(second.id); // and this one's when it was restored
      assertNoSandboxLeaks(crun.paths, second.id);
    } finally {
      await destroyInstance(gvisor);
      await destroyInstance(crun);
    }
  });
});

describe('runtimes side by side on one node', { skip: !existsSync('/usr/bin/runsc') && 'runsc is not installed' }, () => {
  it('a create may name its runtime, a template may require one; both kinds live together and delete cleanly', async () => {
    const m = await newInstance(); // the node's default runtime
    try {
      const plain = await m.create({ template: 'busybox' });
      const chosen = await m.create({ template: 'busybox', runtime: 'runsc' });
      m.templates.addDerived('gvisor-only', m.templates.get('busybox'), { runtime: 'runsc' });
      const required = await m.create({ template: 'gvisor-only' });
      assert.equal(plain.runtime, m.runtime.name);
      assert.equal(chosen.runtime, 'runsc');
      assert.equal(required.runtime, 'runsc');
      for (const s of [chosen, required]) assert.match((await execIn(m, s.id, ['uname', '-r'])).stdout, /^4\.4\.0/, 'gVisor reports its own kernel');
      await assert.rejects(m.create({ template: 'gvisor-only', runtime: 'crun' }), /runs under runsc only/);
      await m.pause(chosen.id); // to disk, beside a sandbox of the default runtime
      await m.resume(chosen.id);
      for (const s of [plain, chosen, required]) {
        await m.delete(s.id);
        assertNoSandboxLeaks(m.paths, s.id);
      }
    } finally {
      await destroyInstance(m);
    }
  });
});

describe('pause to disk (runsc)', { skip: !existsSync('/usr/bin/runsc') && 'runsc is not installed' }, () => {
  it('a memory pause saves the sandbox to disk and frees its processes; resume continues them where they were, after a restart too; delete removes the image', async () => {
    let m = await newInstance({ runtime: 'runsc' });
    const dataDir = m.paths.dataDir;
    try {
      const sbx = await m.create({ template: 'busybox' });
      // backgrounded by the shell: gVisor's `exec --detach` is unusable (see the runtime's detachedExec)
      const started = await m.exec(sbx.id, ['sh', '-c', `(${COUNTER}) </dev/null >/dev/null 2>&1 &`], { stdio: 'ignore' });
      await new Promise((r) => started.on('close', r));
      await new Promise((r) => setTimeout(r, 500));
      const pid = await counterPid(m, sbx.id);
      assert.match(pid, /^\d+$/);

      await m.pause(sbx.id);
      const image = join(m.sandboxDir(sbx.id), 'checkpoint');
      assert.ok(readdirSync(image).length > 0, 'the image is on disk');
      // nothing runs while paused (the stopped container's record goes at the resume or delete)
      const st = await m.runtime.state(m.containerId(sbx.id));
      assert.ok(st === null || st.status === 'stopped', `container ${st?.status}`);
      // gVisor's processes end just after the checkpoint returns, and may linger as zombies until
      // reaped (holding no memory)
      const live = () => processesInCgroup(`/cubebox-${m.paths.instanceId}/${sbx.id}`).filter((pid) => !zombie(pid));
      for (let i = 0; i < 200 && live().length; i++) await new Promise((r) => setTimeout(r, 50));
      assert.deepEqual(live(), [], 'no live process while paused');
      assert.equal(m.get(sbx.id).state, 'paused');

      // the service restarts while the sandbox is paused to disk
      await m.close();
      m = await openManager(dataDir, { runtime: 'runsc' });
      assert.equal(m.get(sbx.id).state, 'paused', 'the reconciler keeps a sandbox paused to disk');
      const report = await m.reconcile();
      assert.deepEqual(report.errors, []);

      await m.resume(sbx.id);
      assert.equal(existsSync(image), false, 'the image goes once restored');
      assert.ok(await healthy(m.envdEndpoint(sbx.id)!), 'envd answers on its socket again');
      assert.equal(await counterPid(m, sbx.id), pid, 'the same process');
      const before = await counter(m, sbx.id);
      await new Promise((r) => setTimeout(r, 300));
      const after = await counter(m, sbx.id);
      assert.ok(after > before, `the loop carries on (${before} -> ${after})`);

      // paused to disk again, then deleted while paused: nothing stays
      await m.pause(sbx.id);
      assert.ok(existsSync(image));
      await deleteConverging(m, sbx.id);
      assertNoSandboxLeaks(m.paths, sbx.id);
    } finally {
      await destroyInstance(m);
    }
  });
});
