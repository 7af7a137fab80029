import { existsSync, linkSync, mkdirSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { checkpointImageDir, type Template, type TemplateConfig } from '../template/store.js';
import { CubeboxError, errorMessage } from '../util/errors.js';
import { randomId } from '../util/ids.js';
import { SANDBOX_SUPPORT } from '../runtime/support.js';
import { canCheckpoint, checkpointDir, IMAGE_FILE, restoreSandbox, tryCheckpoint } from './checkpoint.js';
import type { SandboxCore } from './core.js';
import { settleFromHost } from './settle.js';
import type { StoredSpec } from './types.js';

/**
 * Memory snapshots, for a runtime that checkpoints by itself (gVisor): the snapshot keeps a
 * checkpoint image of the sandbox's processes and memory beside its filesystem layer, and every
 * sandbox made from it restores that image into a root made of that layer, continuing the same
 * processes with an identity of its own (envd's secret and token, network slot, hostname).
 *
 * The image is taken with no process running: the sandbox is checkpointed (as a pause to disk
 * does), its writable layer is copied while nothing can change it, and it is restored again
 * from the same image. Restores only read the image, so any number may share it at once.
 */

/**
 * Whether a snapshot of this sandbox keeps its memory: its runtime checkpoints by itself, it runs
 * envd (its sandboxes are made with one), it has no volume (a volume's files are not in the
 * snapshot), and it runs or is paused to disk.
 */
export function keepsMemory(core: SandboxCore, id: string, state: string, spec: StoredSpec): boolean {
  if (!canCheckpoint(core, id) || !spec.agent || spec.volumeMounts?.length) return false;
  return state === 'running' || (state === 'paused' && spec.checkpointed === true);
}

/**
 * Takes a memory snapshot: commit() makes the template from the sandbox's writable layer (called
 * with no process running, with the settings that mark it a memory snapshot); the checkpoint
 * image is kept with it. A running sandbox is restored afterwards whatever happened. Undefined,
 * the sandbox running as before, where the runtime could not save it (see tryCheckpoint): the
 * caller then takes its files only. Under the sandbox's lock.
 */
export async function withMemory(
  core: SandboxCore,
  id: string,
  spec: StoredSpec,
  commit: (config: Partial<TemplateConfig>) => Promise<Template>,
): Promise<Template | undefined> {
  const wasRunning = core.requireRow(id).state === 'running';
  if (wasRunning) {
    core.setState(id, 'pausing');
    let saved: boolean;
    try {
      saved = await tryCheckpoint(core, id, spec);
    } catch (err) {
      await settleFromHost(core, id, `snapshot: ${errorMessage(err)}`);
      throw new CubeboxError('internal', `snapshotting sandbox '${id}' failed: ${errorMessage(err)}`);
    }
    if (!saved) {
      core.setState(id, 'running');
      return undefined;
    }
  }
  const paths = core.deps.paths;
  const tmp = checkpointImageDir(paths, `.tmp-${randomId(12)}`);
  let made: Template | undefined;
  let failure: unknown;
  try {
    shareImage(checkpointDir(core, id), tmp);
    made = await commit({ runtime: core.runtimeOf(id).name, checkpoint: true });
    renameSync(tmp, checkpointImageDir(paths, made.id));
  } catch (err) {
    failure = err;
    rmSync(tmp, { recursive: true, force: true });
  }
  if (wasRunning) await restoreRunning(core, id, spec);
  if (failure !== undefined) throw failure;
  return made!;
}

/** Links (or copies) the files of a checkpoint image into a new directory: the same blocks, read-only input from now on. */
function shareImage(from: string, to: string): void {
  if (!existsSync(join(from, IMAGE_FILE))) throw new Error(`no checkpoint image in ${from}`);
  mkdirSync(join(to, '..'), { recursive: true, mode: 0o700 });
  mkdirSync(to, { mode: 0o700 });
  for (const f of readdirSync(from)) linkSync(join(from, f), join(to, f));
}

/** The snapshotted sandbox goes on from its image, as a resume does (still 'pausing' until then). */
async function restoreRunning(core: SandboxCore, id: string, spec: StoredSpec): Promise<void> {
  try {
    const pid = await restoreSandbox(core, id, spec);
    core.updateSpec(id, { checkpointed: false });
    core.store.updateSandbox(id, { pid });
    core.setState(id, 'running');
  } catch (err) {
    await settleFromHost(core, id, `restore after a snapshot: ${errorMessage(err)}`);
    throw new CubeboxError('internal', `sandbox '${id}' was snapshotted but not restored: ${errorMessage(err)}`);
  }
}

/**
 * Starts a new sandbox from a memory snapshot's image (instead of a run): its bundle, disk and
 * network slot are its own; envd, told to listen again, takes the new /init secret the host put
 * in its run directory. Returns its PID.
 */
export async function restoreFromSnapshot(core: SandboxCore, id: string, templateId: string): Promise<number> {
  const image = checkpointImageDir(core.deps.paths, templateId);
  if (!existsSync(join(image, IMAGE_FILE))) throw new Error(`the snapshot's checkpoint image is gone (${image})`);
  const rt = core.runtimeOf(id);
  const cid = core.containerId(id);
  const pid = await rt.restore!(cid, join(core.sandboxDir(id), 'bundle'), image, core.consoleLogPath(id));
  await rt.signal!(cid, 'CONT'); // tini passes it to envd
  await rename(core, id);
  return pid;
}

/**
 * Gives a restored sandbox its own host name: its kernel restored the snapshotted sandbox's.
 * The sandbox's root cannot (no CAP_SYS_ADMIN), so the host runs envd's helper with it.
 */
async function rename(core: SandboxCore, id: string): Promise<void> {
  const p = core.runtimeOf(id).exec(core.containerId(id), [`${SANDBOX_SUPPORT}/envd/envd-exec`, '--hostname', id], {
    caps: ['CAP_SYS_ADMIN'],
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  p.stderr?.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-500)));
  const code = await new Promise<number>((r) => p.on('close', (c) => r(c ?? 1)));
  if (code !== 0) throw new Error(`setting its host name failed (exit ${code}): ${err.trim()}`);
}
