import { lstatSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { naming } from '../config.js';
import { CubeboxError, errorMessage, notFound } from '../util/errors.js';
import { SANDBOX_ID_RE } from '../util/ids.js';
import type { SandboxCore } from './core.js';
import type { SandboxState } from './states.js';
import type { StoredSpec } from './types.js';

/**
 * Teardown: one path for every state (rule 1), through the runtime's own force delete and
 * the cgroup kill (rules 2, 3), reclaiming every resource in the ledger (rule 7). Delete, the
 * reaper, the reconciler and a failed create all come here (rule 5).
 */

/** Deletes a sandbox from any state. Unknown ids (with no ledger left) are not found. */
export async function deleteSandbox(core: SandboxCore, id: string): Promise<void> {
  if (!SANDBOX_ID_RE.test(id)) throw notFound(`sandbox '${id}' not found`);
  await core.locks.run(id, async () => {
    const row = core.store.getSandbox(id);
    if (!row && core.store.resources(id).length === 0) throw notFound(`sandbox '${id}' not found`);
    try {
      await teardown(core, id);
    } catch (err) {
      // the sandbox stays recorded (state deleting, with the error) and the reconciler retries (rule 4)
      const remains = core.store.resources(id).map((r) => `${r.kind} ${r.name}`);
      if (core.store.getSandbox(id)) core.store.updateSandbox(id, { lastError: `delete: ${errorMessage(err)}`, nextAttemptAt: core.now() + 1000 });
      throw new CubeboxError(
        'internal',
        `deleting sandbox '${id}' did not finish: ${errorMessage(err)}${remains.length ? `; still held: ${remains.join(', ')}` : ''}; it stays listed as deleting and is retried`,
      );
    }
  });
}

/**
 * Reclaims everything a sandbox owns, in dependency order, then forgets it. Call under
 * the sandbox's lock. Teardown never asks anything inside the sandbox: the runtime's
 * force delete works on a frozen container, and the cgroup kill catches what it missed.
 * If processes cannot be killed the sandbox stays recorded (with the error) for a retry.
 */
export async function teardown(core: SandboxCore, id: string): Promise<void> {
  const { store, host } = core;
  const inst = core.deps.paths.instanceId;
  if (store.getSandbox(id)) core.setState(id, 'deleting');
  core.events.emit('interrupt', id, 'killed'); // the proxy cuts the sandbox's open streams
  const cid = core.containerId(id);
  const cg = core.cgroup(id);
  const dir = core.sandboxDir(id);

  // the sandbox's own runtime (rule 2); an orphan has no row: every runtime with state here
  const runtimes = store.getSandbox(id) ? [core.runtimeOf(id)] : core.deps.runtimes.all();
  let runtimeError: unknown;
  for (const rt of runtimes) {
    try {
      await rt.forceDelete(cid);
    } catch (err) {
      runtimeError = err;
    }
  }
  if (cg.pids().length) await cg.killAll();
  if (cg.pids().length) throw new Error(`processes of sandbox '${id}' survived the kill: ${cg.pids().join(', ')}`);
  if (runtimeError) for (const rt of runtimes) await rt.forceDelete(cid); // retry now that nothing runs; throws if it still fails
  store.forgetResource(id, 'container', cid);

  await cg.remove();
  store.forgetResource(id, 'cgroup', naming.cgroupPath(inst, id));
  await core.deps.net?.release(id); // nothing runs in its namespace any more

  const mounts = new Set([
    ...host.mountsUnder(dir),
    ...store
      .resources(id)
      .filter((r) => r.kind === 'mount')
      .map((r) => r.name),
  ]);
  // also anything carrying this sandbox's mount name, wherever it is mounted
  for (const m of host.mountTable()) if (m.source === naming.mountSource(inst, id)) mounts.add(m.mountPoint);
  // deepest first, and the disk (which holds the overlay's upper layer) after the overlay
  const isDisk = (p: string) => p === join(dir, 'disk');
  await host.unmount([...mounts].sort((a, b) => Number(isDisk(a)) - Number(isDisk(b)) || b.length - a.length));
  await host.releaseLoopDevices(dir);
  for (const m of mounts) store.forgetResource(id, 'mount', m);

  if (host.mountsUnder(dir).length) throw new Error(`mounts remain under ${dir}`);
  rmSync(dir, { recursive: true, force: true });
  store.deleteSandbox(id); // the row and the rest of its ledger, in one transaction
  core.events.emit('deleted', id);
  core.log.info({ sandbox: id }, 'sandbox deleted');
}

/**
 * Stops every process of a sandbox but keeps its filesystem (for a pause without memory).
 * What the boot left in the directory it shares with the host goes too, so that the next
 * boot starts clean: with a runtime whose file proxy creates host sockets, a stale envd socket
 * there makes envd's listen fail.
 */
export async function stopContainer(core: SandboxCore, id: string): Promise<void> {
  const cg = core.cgroup(id);
  await core.runtimeOf(id).forceDelete(core.containerId(id));
  if (cg.pids().length) await cg.killAll();
  if (cg.pids().length) throw new Error(`processes of sandbox '${id}' survived the kill`);
  await cg.remove();
  clearSharedDir(join(core.sandboxDir(id), 'disk', 'run'));
}

/**
 * Empties the directory a sandbox shares with the host (envd's socket). Call only when nothing
 * runs in the sandbox (nothing can change it meanwhile). The directory is the host's own (the
 * sandbox cannot reach its parent); its entries are the sandbox's and are removed without
 * following any link in them.
 */
function clearSharedDir(dir: string): void {
  let st;
  try {
    st = lstatSync(dir);
  } catch {
    return; // not made yet, or the disk is not mounted
  }
  if (!st.isDirectory()) throw new Error(`${dir} is not a directory`);
  for (const name of readdirSync(dir)) rmSync(join(dir, name), { recursive: true, force: true });
}

/** After a failed or interrupted operation: make the stored state what the host shows. */
export async function settleFromHost(core: SandboxCore, id: string, error?: string): Promise<void> {
  const row = core.store.getSandbox(id);
  if (!row) return;
  if ((JSON.parse(row.spec) as StoredSpec).coldPaused) {
    // A filesystem-only pause, or the boot of its resume, was cut short. The safe state is
    // paused, with its disk and no process: a half-booted sandbox may lack its /init.
    await stopContainer(core, id);
    core.setState(id, 'paused', error ? { lastError: error } : {});
    return;
  }
  let state: SandboxState = 'stopped';
  try {
    const st = await core.runtimeOf(id).state(core.containerId(id));
    if (st?.status === 'running') state = 'running';
    else if (st?.status === 'paused') state = 'paused';
  } catch (err) {
    state = 'failed';
    error = `${error ?? ''} state: ${errorMessage(err)}`.trim();
  }
  core.setState(id, state, error ? { lastError: error } : {});
}
