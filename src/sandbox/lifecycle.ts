import type { ChildProcess, StdioOptions } from 'node:child_process';
import { CubeboxError, errorMessage, invalid } from '../util/errors.js';
import type { SandboxCore } from './core.js';
import type { NetworkSettings } from '../network/policy.js';
import { applyPolicy } from './networking.js';
import { bootAgain } from './provision.js';
import { assertOperation } from './states.js';
import { canCheckpoint, restoreSandbox, tryCheckpoint } from './checkpoint.js';
import { settleFromHost } from './settle.js';
import { stopContainer } from './teardown.js';
import { BASE_ENV, type Admission, type SandboxInfo, type StoredSpec } from './types.js';

/**
 * The operations on a living sandbox: exec, pause (with or without memory), resume, connect
 * and its timeouts. Each reads the state and acts under the sandbox's lock (rule 6); the
 * "...Locked" forms are for callers that already hold it (the reaper, connect).
 */

export interface ExecOpts {
  stdio?: StdioOptions;
  env?: Record<string, string>;
  cwd?: string;
  tty?: boolean;
  detach?: boolean;
}

/** Runs a command inside a running sandbox through the runtime; the caller owns the process. */
export async function exec(core: SandboxCore, id: string, args: string[], opts: ExecOpts = {}): Promise<ChildProcess> {
  if (!args.length) throw invalid('exec needs a command');
  return core.locks.run(id, async () => {
    const row = core.requireRow(id);
    assertOperation('exec', id, row.state);
    const spec = JSON.parse(row.spec) as StoredSpec;
    // the runtime replaces the whole environment when any variable is given
    const env = { ...BASE_ENV, ...spec.env, ...(opts.env ?? {}) };
    return core.runtimeOf(id).exec(core.containerId(id), args, { stdio: opts.stdio, env, cwd: opts.cwd, tty: opts.tty, detach: opts.detach });
  });
}

/**
 * Pauses a running sandbox. With memory the whole cgroup tree is frozen and resumes exactly
 * where it was, or, with a runtime that checkpoints by itself, it is saved to disk and restored
 * at resume (checkpoint.ts); without, the processes are stopped (the filesystem stays) and
 * resume boots the sandbox again. Under the sandbox's lock.
 */
export async function pauseLocked(core: SandboxCore, id: string, memory: boolean): Promise<SandboxInfo> {
  const row = core.requireRow(id);
  assertOperation('pause', id, row.state);
  const spec = JSON.parse(row.spec) as StoredSpec;
  const toDisk = memory && canCheckpoint(core, id);
  const admission: Admission = {
    op: 'pause',
    team: row.team ?? null,
    sandboxId: id,
    limits: spec.limits,
    diskMB: spec.diskMB,
    metadata: spec.metadata,
    memory,
    toDisk,
  };
  await core.admitted(admission, () => {
    assertOperation('pause', id, core.requireRow(id).state);
    core.setState(id, 'pausing');
  });
  core.events.emit('interrupt', id, 'paused');
  try {
    // to disk, the sandbox holds no RAM while paused; where the runtime cannot save it, it is frozen
    const onDisk = toDisk && (await tryCheckpoint(core, id, spec));
    if (memory && !onDisk) {
      await core.runtimeOf(id).pause(core.containerId(id));
    } else if (!memory) {
      // recorded first: from here on, an interruption settles to a filesystem-only pause
      core.updateSpec(id, { coldPaused: true });
      await stopContainer(core, id);
    }
    core.setState(id, 'paused');
    core.updateSpec(id, { pausedAt: core.now() });
  } catch (err) {
    await settleFromHost(core, id, `pause: ${errorMessage(err)}`);
    throw new CubeboxError('internal', `pausing sandbox '${id}' failed: ${errorMessage(err)}`);
  }
  return core.get(id);
}

/** Resumes a paused sandbox (a cold-paused one boots again). Under the sandbox's lock. */
export async function resumeLocked(core: SandboxCore, id: string, timeoutSec?: number): Promise<SandboxInfo> {
  const row = core.requireRow(id);
  assertOperation('resume', id, row.state);
  const spec = JSON.parse(row.spec) as StoredSpec;
  const admission: Admission = { op: 'resume', team: row.team ?? null, sandboxId: id, limits: spec.limits, diskMB: spec.diskMB, metadata: spec.metadata };
  await core.admitted(admission, () => {
    assertOperation('resume', id, core.requireRow(id).state);
    core.setState(id, 'resuming');
  });
  try {
    if (spec.coldPaused) {
      const pid = await bootAgain(core, id, spec);
      core.updateSpec(id, { coldPaused: false });
      core.store.updateSandbox(id, { pid });
    } else if (spec.checkpointed) {
      const pid = await restoreSandbox(core, id, spec);
      core.updateSpec(id, { checkpointed: false });
      core.store.updateSandbox(id, { pid });
    } else {
      await core.runtimeOf(id).resume(core.containerId(id));
    }
    core.updateSpec(id, { pausedAt: undefined });
    const endAt = timeoutSec !== undefined ? core.now() + timeoutSec * 1000 : row.endAt;
    core.setState(id, 'running', { endAt });
  } catch (err) {
    await settleFromHost(core, id, `resume: ${errorMessage(err)}`);
    throw new CubeboxError('internal', `resuming sandbox '${id}' failed: ${errorMessage(err)}`);
  }
  return core.get(id);
}

/**
 * E2B's connect: a running sandbox only ever gets a later endAt; a paused one resumes
 * (then resumed = true). A sandbox being deleted is a conflict.
 */
export async function connect(core: SandboxCore, id: string, timeoutSec?: number): Promise<{ info: SandboxInfo; resumed: boolean }> {
  return core.locks.run(id, async () => {
    const row = core.requireRow(id);
    assertOperation('connect', id, row.state);
    if (row.state === 'running') {
      if (timeoutSec !== undefined) {
        const wanted = core.now() + timeoutSec * 1000;
        if (row.endAt === null || wanted > row.endAt) core.store.updateSandbox(id, { endAt: wanted });
      }
      return { info: core.get(id), resumed: false };
    }
    return { info: await resumeLocked(core, id, timeoutSec ?? 300), resumed: true };
  });
}

/** Sets endAt = now + timeout (may shorten it); the reaper acts within a second of endAt. */
export async function setTimeout(core: SandboxCore, id: string, timeoutSec: number): Promise<SandboxInfo> {
  if (!(Number.isFinite(timeoutSec) && timeoutSec >= 0)) throw invalid(`timeout must be a number of seconds >= 0, got ${timeoutSec}`);
  return core.locks.run(id, async () => {
    const row = core.requireRow(id);
    assertOperation('setTimeout', id, row.state);
    core.store.updateSandbox(id, { endAt: core.now() + timeoutSec * 1000 });
    return core.get(id);
  });
}

/** Extends a running sandbox's endAt by a duration (E2B's refreshes). */
export async function refresh(core: SandboxCore, id: string, durationSec: number): Promise<void> {
  if (!(Number.isFinite(durationSec) && durationSec >= 0)) throw invalid(`duration must be a number of seconds >= 0, got ${durationSec}`);
  await core.locks.run(id, async () => {
    const row = core.requireRow(id);
    assertOperation('refresh', id, row.state);
    const wanted = core.now() + durationSec * 1000;
    if (row.endAt === null || wanted > row.endAt) core.store.updateSandbox(id, { endAt: wanted });
  });
}

/** Replaces a sandbox's network settings; its egress policy changes at once, running or paused. */
export async function updateNetwork(core: SandboxCore, id: string, settings: NetworkSettings): Promise<SandboxInfo> {
  return core.locks.run(id, async () => {
    const row = core.requireRow(id);
    assertOperation('updateNetwork', id, row.state);
    await applyPolicy(core, id, settings);
    core.updateSpec(id, { network: settings });
    return core.get(id);
  });
}
