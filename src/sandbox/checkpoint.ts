import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { capabilitiesOf } from '../runtime/registry.js';
import { hasConntrack } from '../network/host.js';
import { errorMessage } from '../util/errors.js';
import { run } from '../util/exec.js';
import type { SandboxCore } from './core.js';
import { envdRequest, INIT_SECRET_HEADER, SUSPEND_SOCKET_PATH } from './envd-client.js';
import { connectNetwork } from './networking.js';
import { remountRootfs, waitForAgent } from './provision.js';
import { clearSharedDir, stopContainer } from './teardown.js';
import { mountVolumeViews } from '../volume/disk.js';
import type { StoredSpec } from './types.js';

/**
 * Pause to disk, for a runtime that checkpoints by itself (gVisor): the whole sandbox
 * (processes, memory, open files) is saved to an image in its directory and the container
 * goes, so a paused sandbox holds disk, not RAM; resume restores it from the image (after a
 * restart of the service or of the host too) with the same processes where they were.
 *
 * envd's socket is bound on the host, which a checkpoint cannot save: envd lets go of it first
 * (SUSPEND_SOCKET_PATH) and listens again when it gets SIGCONT after the restore.
 */

/** Where a sandbox's checkpoint image lives: in its directory on the host, beside its disk image. */
export const checkpointDir = (core: SandboxCore, id: string) => join(core.sandboxDir(id), 'checkpoint');
export const IMAGE_FILE = 'checkpoint.img';

/** Whether a sandbox's runtime can pause it to disk. */
export function canCheckpoint(core: SandboxCore, id: string): boolean {
  const rt = core.runtimeOf(id);
  return capabilitiesOf(rt.name).checkpoint === 'builtin' && rt.checkpoint !== undefined && rt.restore !== undefined;
}

/** Saves a running sandbox to disk and removes its container. Under the sandbox's lock. */
export async function checkpointSandbox(core: SandboxCore, id: string, spec: StoredSpec): Promise<void> {
  const rt = core.runtimeOf(id);
  const cid = core.containerId(id);
  const image = checkpointDir(core, id);
  rmSync(image, { recursive: true, force: true });
  mkdirSync(image, { mode: 0o700 });
  // recorded first: from here on, an interruption settles from what the host shows (settleCheckpoint)
  core.updateSpec(id, { checkpointed: true });
  if (spec.agent) await suspendEnvdSocket(core, id, spec);
  try {
    await rt.checkpoint!(cid, image);
  } catch (err) {
    // gVisor's refusals dump the whole object it could not save before saying why
    const why = errorMessage(err).replace(/encoding error at object [\s\S]*?: (save rejected)/, 'encoding error: $1');
    throw new Error(`checkpoint: ${why.length > 1000 ? `${why.slice(0, 500)} ... ${why.slice(-300)}` : why}`);
  }
  // The runtime stopped the container. envd's old socket file goes (envd binds it afresh after
  // the restore); the stopped container's state and empty cgroup stay until the resume or a
  // delete: the runtime's delete waits for the checkpointed sandbox process to be reaped, which
  // can take seconds, and is quick by then.
  clearSharedDir(join(core.sandboxDir(id), 'disk', 'run'));
}

/**
 * Saves a running sandbox to disk as checkpointSandbox does; where the runtime refused and left
 * it running, returns false with the sandbox as it was (envd listening again). A runtime whose
 * checkpoint cannot save TCP connections (gVisor) is not asked while the sandbox's link has one:
 * open, or closed less than a minute ago (in TIME_WAIT). Any other failure throws. Under the
 * sandbox's lock.
 */
export async function tryCheckpoint(core: SandboxCore, id: string, spec: StoredSpec): Promise<boolean> {
  const open = capabilitiesOf(core.runtimeOf(id).name).checkpointsTcp ? 0 : await linkConnections(core, id);
  if (open > 0) {
    core.log.info({ sandbox: id, connections: open }, 'TCP connections on the sandbox link, which gVisor cannot save: not saved to disk');
    return false;
  }
  try {
    await checkpointSandbox(core, id, spec);
    return true;
  } catch (err) {
    const rt = core.runtimeOf(id);
    const cid = core.containerId(id);
    if ((await rt.state(cid).catch(() => null))?.status !== 'running') throw err;
    await rt.signal?.(cid, 'CONT');
    if (spec.agent) await waitForAgent(core, id);
    core.updateSpec(id, { checkpointed: false });
    rmSync(checkpointDir(core, id), { recursive: true, force: true });
    core.log.warn({ sandbox: id, err: errorMessage(err) }, 'the runtime could not save the sandbox to disk; it runs on');
    return false;
  }
}

/**
 * The TCP connections through a sandbox's link the host tracks, but those ended by a reset.
 * gVisor cannot save one: open, or in TIME_WAIT for a minute after it closed; its checkpoint then
 * fails and takes the sandbox down with it, so none may be there. The host's tracking is the
 * cautious side (it keeps a closed connection for two minutes), and cannot be told by the sandbox.
 */
async function linkConnections(core: SandboxCore, id: string): Promise<number> {
  const address = core.deps.net?.lease(id)?.address;
  if (!address || !hasConntrack()) return 0;
  let n = 0;
  for (const dir of ['-s', '-d']) {
    const r = await run('conntrack', ['-L', '-p', 'tcp', dir, address], { timeoutMs: 5000 });
    // "tcp 6 <ttl> <state> src=..."
    for (const line of r.stdout.split('\n')) if (/^tcp\s+\d+\s+\d+\s+(?!CLOSE\s)[A-Z_]+\s/.test(line)) n++;
  }
  return n;
}

/** Starts a checkpointed sandbox again from its image; returns its PID. Under the sandbox's lock. */
export async function restoreSandbox(core: SandboxCore, id: string, spec: StoredSpec): Promise<number> {
  const rt = core.runtimeOf(id);
  const cid = core.containerId(id);
  const dir = core.sandboxDir(id);
  const image = checkpointDir(core, id);
  if (!existsSync(join(image, IMAGE_FILE))) throw new Error(`its checkpoint image is gone (${image})`);
  // after a host reboot its disk, views and network slot are made again, as they were
  await remountRootfs(core, id, spec);
  await mountVolumeViews(core.store, core.deps.paths, id, dir, spec.volumeMounts, core.idMapFor(core.requireRow(id).uidSlot));
  await connectNetwork(core, id, spec);
  await rt.forceDelete(cid); // the stopped container the checkpoint left (or a failed restore)
  const pid = await rt.restore!(cid, join(dir, 'bundle'), image, core.consoleLogPath(id));
  core.applyInstanceLimits();
  if (spec.agent) {
    await rt.signal!(cid, 'CONT'); // tini passes it to envd, which listens again
    await waitForAgent(core, id);
  }
  rmSync(image, { recursive: true, force: true });
  return pid;
}

/**
 * After a checkpoint or restore was cut short (a failure, a crash of the service): the state the
 * host shows. A container still running is running (envd told to listen again); a complete image
 * is a sandbox paused to disk; otherwise its memory is lost and it is paused without memory (its
 * files are kept and resume boots it again).
 */
export async function settleCheckpoint(core: SandboxCore, id: string, error?: string): Promise<void> {
  const rt = core.runtimeOf(id);
  const cid = core.containerId(id);
  const extra = error ? { lastError: error } : {};
  const st = await rt.state(cid).catch(() => null);
  if (st?.status === 'running') {
    await rt.signal?.(cid, 'CONT').catch(() => undefined);
    core.updateSpec(id, { checkpointed: false });
    rmSync(checkpointDir(core, id), { recursive: true, force: true });
    core.setState(id, 'running', extra);
    return;
  }
  await stopContainer(core, id);
  if (existsSync(join(checkpointDir(core, id), IMAGE_FILE))) {
    core.setState(id, 'paused', extra);
    return;
  }
  rmSync(checkpointDir(core, id), { recursive: true, force: true });
  core.updateSpec(id, { checkpointed: false, coldPaused: true });
  core.setState(id, 'paused', { lastError: `${error ?? 'interrupted'}; its memory was not saved: paused without memory` });
}

/**
 * Asks envd to let go of its host-bound socket: it stops listening and closes every other
 * connection before it answers, then closes this one.
 */
async function suspendEnvdSocket(core: SandboxCore, id: string, spec: StoredSpec): Promise<void> {
  const socket = core.envdEndpoint(id);
  if (!socket) throw new Error(`the disk of sandbox '${id}' is not mounted`);
  const secret: Record<string, string> = spec.initSecret ? { [INIT_SECRET_HEADER]: spec.initSecret } : {};
  const status = await envdRequest(socket, 'POST', SUSPEND_SOCKET_PATH, {}, secret, { untilClosed: true });
  if (status !== 204) throw new Error(`envd refused to let go of its socket (${status})`);
}
