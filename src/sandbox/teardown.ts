import { lstatSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { CubeboxError, errorMessage, notFound } from '../util/errors.js';
import { SANDBOX_ID_RE } from '../util/ids.js';
import type { SandboxCore } from './core.js';
import { releaseResources } from './ledger.js';

/**
 * Teardown: one path for every state (rule 1), through the runtime's own force delete and
 * the cgroup kill (rules 2, 3), reclaiming every resource in the ledger (rule 7, ledger.ts). Delete, the
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
 * Reclaims everything a sandbox owns, then forgets it: the kinds of its resource ledger
 * (ledger.ts) released in the reverse of their acquisition order, each kind's ledger rows
 * removed once it is released. Call under the sandbox's lock. If a kind cannot be released
 * (processes that cannot be killed) the sandbox stays recorded, with the rest of its ledger,
 * for a retry. The release waits for a turn of the delete gate (a bound, first come first
 * served); the sandbox is already deleting and cut off from its clients while it waits.
 */
export async function teardown(core: SandboxCore, id: string): Promise<void> {
  if (core.store.getSandbox(id)) core.setState(id, 'deleting');
  core.events.emit('interrupt', id, 'killed'); // the proxy cuts the sandbox's open streams
  await core.deleteGate.run(() => releaseResources(core, id, core.ledger));
  core.store.deleteSandbox(id); // the row and the rest of its ledger, in one transaction
  core.events.emit('deleted', id);
  core.log.info({ sandbox: id }, 'sandbox deleted');
}

/**
 * Stops every process of a sandbox but keeps its filesystem (for a pause without memory): its
 * container and cgroup are released and stay in its ledger (the next boot makes them again).
 * What the boot left in the directory it shares with the host goes too, so that the next
 * boot starts clean: with a runtime whose file proxy creates host sockets, a stale envd socket
 * there makes envd's listen fail.
 */
export async function stopContainer(core: SandboxCore, id: string): Promise<void> {
  await releaseResources(
    core,
    id,
    core.ledger.filter((k) => k.kind === 'container' || k.kind === 'cgroup'),
    { forget: false },
  );
  clearSharedDir(join(core.sandboxDir(id), 'disk', 'run'));
}

/**
 * Empties the directory a sandbox shares with the host (envd's socket). Call only when nothing
 * runs in the sandbox (nothing can change it meanwhile). The directory is the host's own (the
 * sandbox cannot reach its parent); its entries are the sandbox's and are removed without
 * following any link in them.
 */
export function clearSharedDir(dir: string): void {
  let st;
  try {
    st = lstatSync(dir);
  } catch {
    return; // not made yet, or the disk is not mounted
  }
  if (!st.isDirectory()) throw new Error(`${dir} is not a directory`);
  for (const name of readdirSync(dir)) rmSync(join(dir, name), { recursive: true, force: true });
}
