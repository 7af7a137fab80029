import { randomBytes, randomUUID } from 'node:crypto';
import { chownSync, closeSync, constants, existsSync, fchownSync, mkdirSync, openSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { naming } from '../config.js';
import { type BundleSpec, procMeminfo, writeBundle } from '../runtime/bundle.js';
import type { NetLease } from '../network/network.js';
import type { SandboxRuntime } from '../runtime/oci-runtime.js';
import { isRuntimeName, runtimeDefinition, runtimeNames } from '../runtime/registry.js';
import { rootfsLayout } from '../runtime/rootfs.js';
import { SANDBOX_SUPPORT } from '../runtime/support.js';
import { mountVolumeViews, volumeBinds } from '../volume/disk.js';
import { resolveVolumeMounts } from '../volume/volumes.js';
import type { Template } from '../template/store.js';
import { CubeboxError, errorMessage, invalid } from '../util/errors.js';
import { faultPoint } from '../util/fault.js';
import { randomId } from '../util/ids.js';
import { readLogTail } from './console-log.js';
import type { SandboxCore } from './core.js';
import { ENVD_ENV, envdCommand, envdRequest, healthy, INIT_SECRET_FILE, INIT_SECRET_FILE_ENV, INIT_SECRET_HEADER } from './envd-client.js';
import { restoreFromSnapshot } from './memory-snapshot.js';
import { connectNetwork, egressTrustEnv, networkBinds } from './networking.js';
import { deadlineFor } from './states.js';
import { teardown } from './teardown.js';
import { BASE_ENV, normalizeLifecycle, resolveLimits, type Admission, type CreateRequest, type SandboxInfo, type StoredSpec } from './types.js';

/**
 * Provisioning: a new sandbox's row, then every host resource (each recorded in the ledger
 * before it is made, rule 7) up to envd answering. What state follows is the caller's choice:
 * a create gives it its identity and makes it running, a pool fill leaves it pooled.
 */

/** A new sandbox, running: provisioned up to envd ready, then given its identity (/init). */
export async function createSandbox(core: SandboxCore, template: Template, req: CreateRequest): Promise<SandboxInfo> {
  const id = randomId(20);
  return core.locks.run(id, async () => {
    const spec = await recordNew(core, id, template, req);
    await rollbackOnFailure(core, id, template.name, async () => {
      const pid = await provision(core, id, spec);
      if (spec.agent) await personalize(core, id, spec);
      faultPoint('create:after-agent');
      const row = core.requireRow(id);
      const startedAt = core.now();
      // the TTL counts from the moment the sandbox is usable
      const endAt = row.endAt !== null ? startedAt + (row.endAt - row.createdAt) : null;
      core.setState(id, 'running', { pid, startedAt, endAt });
    });
    return core.get(id);
  });
}

/** Writes a new sandbox's row (state creating) after admission; returns its spec. Under id's lock. */
export async function recordNew(core: SandboxCore, id: string, template: Template, req: CreateRequest): Promise<StoredSpec> {
  const limits = resolveLimits(template, req.limits, req);
  const now = core.now();
  const spec: StoredSpec = {
    limits,
    env: { ...template.config.env, ...egressTrustEnv(core, template.layers), ...(req.env ?? {}) },
    metadata: req.metadata ?? {},
    layers: template.layers,
    command: req.command ?? ['/bin/sh', '-c', 'exec sleep 2147483647'],
    agent: req.agent ?? req.command === undefined,
    diskMB: template.config.diskSizeMB,
    startCommand: template.config.startCommand,
    readyCommand: template.config.readyCommand,
    nestedContainers: template.config.nestedContainers === true,
    support: core.deps.supportDir,
    templateName: template.name,
    user: template.config.user,
    workdir: template.config.workdir,
    envVars: req.envVars ?? {},
    accessToken: req.secure === false ? null : randomBytes(24).toString('base64url'),
    initSecret: randomBytes(24).toString('base64url'),
    lifecycle: normalizeLifecycle(req.lifecycle),
    coldPaused: false,
    extra: req.extra ?? {},
    network: req.network,
    trafficAccessToken: req.network?.allowPublicTraffic === false ? randomBytes(24).toString('base64url') : null,
    volumeMounts: resolveVolumeMounts(core.store, req.team ?? null, req.volumeMounts, template.layers),
    // a memory snapshot's sandbox continues its processes (one with a command of its own boots)
    fromCheckpoint: template.config.checkpoint && req.command === undefined && req.agent !== false ? template.id : undefined,
  };
  if (spec.fromCheckpoint && spec.volumeMounts?.length) throw invalid('a sandbox from a memory snapshot cannot mount volumes');
  if (req.timeoutSec !== undefined && !(Number.isFinite(req.timeoutSec) && req.timeoutSec >= 0))
    throw invalid(`timeout must be a number of seconds >= 0, got ${req.timeoutSec}`);
  const runtime = runtimeFor(core, template, req.runtime);
  const admission: Admission = { op: 'create', team: req.team ?? null, sandboxId: id, limits, diskMB: spec.diskMB, metadata: spec.metadata };
  await core.admitted(admission, () => insertCreating(core, id, template.id, req, runtime, spec, now));
  return spec;
}

/** The sandbox's row (state creating) and its id slot, in one transaction; admitted by the caller. */
function insertCreating(core: SandboxCore, id: string, templateId: string, req: CreateRequest, runtime: SandboxRuntime, spec: StoredSpec, now: number): void {
  core.store.transaction(() => {
    const slot = runtime.userNamespaces ? allocateIdSlot(core) : null;
    core.store.insertSandbox({
      id,
      templateId,
      team: req.team ?? null,
      state: 'creating',
      stateDeadline: deadlineFor('creating', now),
      runtime: runtime.name,
      uidSlot: slot,
      pid: null,
      createdAt: now,
      startedAt: null,
      endAt: req.timeoutSec !== undefined ? now + req.timeoutSec * 1000 : null,
      spec: JSON.stringify(spec),
      lastError: null,
      attempts: 0,
      nextAttemptAt: null,
    });
  });
}

/**
 * The runtime a new sandbox runs under: the one its template needs, else the one the create asks
 * for, else the node's default. Asking for another than the template needs is refused.
 */
function runtimeFor(core: SandboxCore, template: Template, asked: string | undefined): SandboxRuntime {
  const needed = template.config.runtime;
  if (needed !== undefined && asked !== undefined && asked !== needed)
    throw invalid(`template '${template.name}' runs under ${needed} only; the create asked for ${asked}`);
  const name = needed ?? asked;
  if (name === undefined) return core.deps.runtimes.default;
  if (!isRuntimeName(name)) throw invalid(`unknown runtime '${name}': use one of ${runtimeNames().join(', ')}`);
  return core.deps.runtimes.byName(name);
}

function allocateIdSlot(core: SandboxCore): number {
  const used = core.store.usedUidSlots();
  const slots = core.idRegion.slots;
  for (let s = 0; s < slots; s++) if (!used.has(s)) return s;
  throw new CubeboxError('unavailable', `no free user-id range: ${slots} sandboxes exist on this instance`, { retryAfterSec: 5 });
}

/**
 * Runs the rest of a create; if it fails, tears down what was made (a failed teardown leaves
 * the sandbox failed, with both errors, rule 4) and reports the create's error.
 */
export async function rollbackOnFailure<T>(core: SandboxCore, id: string, templateName: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    core.log.warn({ sandbox: id, err: errorMessage(err) }, 'create failed; tearing down');
    try {
      await teardown(core, id);
    } catch (e2) {
      core.setState(id, 'failed', { lastError: `create: ${errorMessage(err)}; teardown: ${errorMessage(e2)}` });
    }
    // out of capacity (ids, addresses) stays a 503 with its Retry-After; anything else is the service's fault
    const capacity = err instanceof CubeboxError && err.retryAfterSec !== undefined;
    throw new CubeboxError(capacity ? err.kind : 'internal', `creating a sandbox from template '${templateName}' failed: ${errorMessage(err)}`, {
      cause: err,
      retryAfterSec: capacity ? err.retryAfterSec : undefined,
    });
  }
}

/** Creates every host resource of a recorded sandbox, up to envd ready; returns the runtime's PID (informational). */
export async function provision(core: SandboxCore, id: string, spec: StoredSpec): Promise<number> {
  const { paths, store, host } = { paths: core.deps.paths, store: core.store, host: core.host };
  const inst = paths.instanceId;
  const row = core.requireRow(id);
  const idMap = core.idMapFor(row.uidSlot);
  const dir = core.sandboxDir(id);

  store.recordResource(id, 'dir', dir);
  // root-only until mountRootfs lets the sandbox's own root group traverse it (rootfs.ts)
  mkdirSync(dir, { mode: 0o700 });
  faultPoint('create:after-dir');

  const layout = { ...rootfsLayout(dir, naming.mountSource(inst, id), spec.layers.length), support: { tree: spec.support, view: supportViewPath(core, id) } };
  store.recordResource(id, 'mount', layout.disk);
  await host.mountDisk(layout, spec.diskMB, join(paths.dataDir, 'disks'));
  faultPoint('create:after-disk');
  for (const m of [layout.target, ...layout.views, layout.support.view]) store.recordResource(id, 'mount', m);
  await host.mountRootfs(layout, spec.layers, idMap);
  await mountVolumeViews(store, paths, id, dir, spec.volumeMounts, idMap);
  faultPoint('create:after-mount');

  // The directory shared with the sandbox (envd's socket lives here) and the console log
  // sit on the sandbox's own disk: bounded by its size, and a socket found there is the
  // sandbox's (see safe-socket.ts).
  const shared = join(layout.disk, 'run');
  mkdirSync(shared, { mode: 0o700 });
  if (idMap) chownSync(shared, idMap.hostId, idMap.hostId);
  const lease = await connectNetwork(core, id, spec);
  faultPoint('create:after-network');
  const bundleDir = join(dir, 'bundle');
  mkdirSync(bundleDir, { mode: 0o700 });
  if (spec.agent) writeInitSecret(core, id, spec, idMap);
  writeProcFiles(core, id, spec);
  writeBundle(bundleDir, bundleSpec(core, id, spec, layout.target, idMap, lease));

  const cid = core.containerId(id);
  store.recordResource(id, 'cgroup', core.cgroupPath(id));
  store.recordResource(id, 'container', cid);
  faultPoint('create:before-run');
  // a zero exit of a detached run means the container's first process is running
  const pid = spec.fromCheckpoint
    ? await restoreFromSnapshot(core, id, spec.fromCheckpoint)
    : await core.runtimeOf(id).run(cid, bundleDir, core.consoleLogPath(id));
  core.applyInstanceLimits();
  faultPoint('create:after-run');
  if (spec.agent) await waitForAgent(core, id);
  if (!spec.fromCheckpoint) await startTemplateCommand(core, id, spec); // restored: it runs already
  return pid;
}

/** Starts a cold-paused sandbox again from its bundle and filesystem: a new boot. Returns its PID. */
export async function bootAgain(core: SandboxCore, id: string, spec: StoredSpec): Promise<number> {
  const cid = core.containerId(id);
  const dir = core.sandboxDir(id);
  // a new boot gets a new /init secret: whatever learnt the last one inside the sandbox cannot reuse it
  spec = { ...spec, initSecret: randomBytes(24).toString('base64url') };
  core.updateSpec(id, { initSecret: spec.initSecret });
  await remountRootfs(core, id, spec);
  await mountVolumeViews(core.store, core.deps.paths, id, dir, spec.volumeMounts, core.idMapFor(core.requireRow(id).uidSlot));
  const lease = await connectNetwork(core, id, spec);
  if (spec.agent) writeInitSecret(core, id, spec, core.idMapFor(core.requireRow(id).uidSlot));
  writeProcFiles(core, id, spec); // a new boot, a new boot id
  writeBundle(join(dir, 'bundle'), bundleSpec(core, id, spec, join(dir, 'rootfs'), core.idMapFor(core.requireRow(id).uidSlot), lease));
  const pid = await core.runtimeOf(id).run(cid, join(dir, 'bundle'), core.consoleLogPath(id));
  core.applyInstanceLimits();
  if (spec.agent) {
    await waitForAgent(core, id);
    await personalize(core, id, spec);
  }
  await startTemplateCommand(core, id, spec);
  return pid;
}

/**
 * A sandbox paused without memory whose disk is no longer mounted (the host rebooted, or it was
 * unmounted from outside) gets its disk image and root mounted again, as they were: nothing of
 * its files is lost. What is left of the old mounts goes first. The mounts are in its ledger.
 */
export async function remountRootfs(core: SandboxCore, id: string, spec: StoredSpec): Promise<void> {
  const dir = core.sandboxDir(id);
  const layout = {
    ...rootfsLayout(dir, naming.mountSource(core.deps.paths.instanceId, id), spec.layers.length),
    support: { tree: spec.support, view: supportViewPath(core, id) },
  };
  if (core.host.mountDevice(layout.disk) !== undefined) return;
  if (!existsSync(layout.diskImage)) throw new Error(`its disk image is gone (${layout.diskImage})`);
  core.log.warn({ sandbox: id }, 'the disk of a paused sandbox is not mounted; mounting it again');
  await core.host.unmount(core.host.mountsUnder(dir));
  await core.host.mountExistingDisk(layout);
  await core.host.mountRootfs(layout, spec.layers, core.idMapFor(core.requireRow(id).uidSlot));
}

/** Gives envd what is particular to this sandbox: env vars, access token, default user and workdir. */
export async function personalize(core: SandboxCore, id: string, spec: StoredSpec): Promise<void> {
  const body: Record<string, unknown> = { envVars: { ...spec.env, ...spec.envVars }, defaultUser: spec.user, timestamp: new Date().toISOString() };
  if (spec.accessToken) body.accessToken = spec.accessToken;
  if (spec.workdir) body.defaultWorkdir = spec.workdir;
  const socket = core.envdEndpoint(id);
  if (!socket) throw new Error(`the disk of sandbox '${id}' is not mounted`);
  const status = await envdRequest(socket, 'POST', '/init', body, spec.initSecret ? { [INIT_SECRET_HEADER]: spec.initSecret } : {});
  if (status !== 204 && status !== 200) throw new Error(`envd /init answered ${status}`);
}

function bundleSpec(core: SandboxCore, id: string, spec: StoredSpec, rootfs: string, idMap?: { hostId: number; size: number }, lease?: NetLease): BundleSpec {
  return {
    runtime: core.runtimeOf(id).name,
    hostname: id,
    rootfs,
    command: spec.agent ? envdCommand(`${SANDBOX_SUPPORT}/run/envd.sock`) : spec.command,
    // envd's own settings and where its boot secret is (never the secret itself: see writeInitSecret)
    env: envList({
      ...BASE_ENV,
      ...spec.env,
      ...(spec.agent ? ENVD_ENV : {}),
      ...(spec.agent && spec.initSecret ? { [INIT_SECRET_FILE_ENV]: `${SANDBOX_SUPPORT}/run/${INIT_SECRET_FILE}` } : {}),
    }),
    cwd: '/',
    idMap,
    limits: spec.limits,
    binds: [
      { source: supportSource(core, id, spec), destination: SANDBOX_SUPPORT, readonly: true },
      { source: join(core.sandboxDir(id), 'disk', 'run'), destination: `${SANDBOX_SUPPORT}/run`, readonly: false },
      ...volumeBinds(core.sandboxDir(id), spec.volumeMounts),
      ...networkBinds(core, id, lease),
    ],
    netns: lease?.netns,
    bootIdFile: join(procFilesDir(core, id), 'boot_id'),
    meminfoFile: join(procFilesDir(core, id), 'meminfo'),
    cgroupsPath: core.cgroupPath(id),
    tiniPath: `${SANDBOX_SUPPORT}/tini`,
    nestedContainers: spec.nestedContainers === true,
  };
}

/**
 * The template's start command, in the background, then its readiness check until it
 * passes (the sandbox is not handed out before).
 */
async function startTemplateCommand(core: SandboxCore, id: string, spec: StoredSpec, timeoutMs = 120_000): Promise<void> {
  if (!spec.startCommand) return;
  const env = { ...BASE_ENV, ...spec.env, ...spec.envVars };
  const cid = core.containerId(id);
  // Its output goes to the console log (PID 1's stdout) where the runtime lets the exec open it
  // (some do not: then nowhere). Where the runtime detaches the exec, the shell waits for the
  // command in the foreground; where it cannot (its detached exec is unusable), the shell puts
  // the command in the background and returns, and the command then starts with SIGINT and
  // SIGQUIT ignored, as POSIX has background jobs of a shell without job control.
  const rt = core.runtimeOf(id);
  const detach = runtimeDefinition(rt.name).detachedExec !== false;
  const script = `out=/proc/1/fd/1; true 2>/dev/null >>$out || out=/dev/null; (${spec.startCommand}) </dev/null >>$out 2>&1${detach ? '' : ' &'}`;
  const start = rt.exec(cid, ['/bin/sh', '-c', script], {
    env,
    cwd: spec.workdir,
    detach,
    stdio: 'ignore',
  });
  const code = await new Promise<number>((r) => start.on('close', (c) => r(c ?? 1)));
  if (code !== 0) throw new Error(`the template's start command could not be started (exit ${code}); see ${core.consoleLogPath(id)}`);
  if (!spec.readyCommand) return;
  const until = Date.now() + timeoutMs;
  let last = -1;
  while (Date.now() < until) {
    const check = core.runtimeOf(id).exec(cid, ['/bin/sh', '-c', spec.readyCommand], { env, cwd: spec.workdir, stdio: 'ignore' });
    last = await new Promise<number>((r) => check.on('close', (c) => r(c ?? 1)));
    if (last === 0) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`the template's readiness check did not pass in ${timeoutMs / 1000} s (last exit ${last})`);
}

/** Waits until envd answers GET /health on its socket; a sandbox that never gets there fails. */
export async function waitForAgent(core: SandboxCore, id: string, timeoutMs = 20_000): Promise<void> {
  const socket = core.envdEndpoint(id);
  if (!socket) throw new Error(`the disk of sandbox '${id}' is not mounted`);
  const until = Date.now() + timeoutMs;
  let delay = 2;
  const cg = core.cgroup(id);
  while (Date.now() < until) {
    if (await healthy(socket)) return; // a missing socket is a failed connect, not a stat of a sandbox path
    // an emptied cgroup means the sandbox died: a file read, not a runtime call, while envd starts
    if (cg.pids().length === 0) break;
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 50);
  }
  const log = readLogTail(core.consoleLogPath(id), 4096).trim().split('\n').slice(-5).join(' | ');
  throw new Error(`envd did not become ready in the sandbox${log ? `: ${log}` : ''}`);
}

/** Where the sandbox's view of its support tree is mounted (rootfs.ts). */
function supportViewPath(core: SandboxCore, id: string): string {
  return join(core.sandboxDir(id), 'support');
}

/** What /.cubebox binds: the sandbox's view of the tree, or the tree itself for a sandbox made before views. */
function supportSource(core: SandboxCore, id: string, spec: StoredSpec): string {
  const view = supportViewPath(core, id);
  return core.store.resources(id).some((r) => r.kind === 'mount' && r.name === view) ? view : spec.support;
}

/**
 * The files bind-mounted over the sandbox's /proc (boot id, meminfo). They sit on the
 * sandbox's own disk, beside the network files, in a directory the sandbox cannot reach: its
 * /proc/self/mountinfo then names paths on that disk, never the host's data directory.
 */
function procFilesDir(core: SandboxCore, id: string): string {
  return join(core.sandboxDir(id), 'disk', 'proc');
}

/** Writes the /proc files of one boot of the sandbox: a new boot id, the meminfo of its limits. */
function writeProcFiles(core: SandboxCore, id: string, spec: StoredSpec): void {
  const dir = procFilesDir(core, id);
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  writeFileSync(join(dir, 'boot_id'), `${randomUUID()}\n`, { mode: 0o644 });
  writeFileSync(join(dir, 'meminfo'), procMeminfo(spec.limits.memoryMB), { mode: 0o644 });
}

/**
 * Puts this boot's /init secret where envd reads it once and unlinks it: a file in envd's run
 * directory on the sandbox's own disk, readable by sandbox root only. Passing it in envd's
 * environment would leave it in /proc/<pid>/environ for the sandbox's whole life. The sandbox
 * is not running here, and whatever an earlier boot left under that name (a link, a FIFO, a
 * directory) is removed without following it before the file is created exclusively.
 */
function writeInitSecret(core: SandboxCore, id: string, spec: StoredSpec, idMap?: { hostId: number }): void {
  if (!spec.initSecret) return;
  const file = join(core.sandboxDir(id), 'disk', 'run', INIT_SECRET_FILE);
  rmSync(file, { recursive: true, force: true });
  const fd = openSync(file, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o400);
  try {
    if (idMap) fchownSync(fd, idMap.hostId, idMap.hostId);
    writeSync(fd, spec.initSecret);
  } finally {
    closeSync(fd);
  }
}

function envList(env: Record<string, string>): string[] {
  return Object.entries(env).map(([k, v]) => `${k}=${v}`);
}
