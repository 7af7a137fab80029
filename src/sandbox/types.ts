import type { Logger } from 'pino';
import type { RuntimeName } from '../runtime/registry.js';
import type { NetworkSettings } from '../network/policy.js';
import type { Limits } from '../runtime/bundle.js';
import type { Template } from '../template/store.js';
import { invalid } from '../util/errors.js';
import type { VolumeMountSpec } from '../store/store.js';
import type { PoolBounds } from './pool-sizer.js';
import type { SandboxState } from './states.js';

/** The manager's public types, the stored spec, and the pure rules on requests (no host access). */

export const BASE_ENV = { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', HOME: '/root' };

export { ID_BLOCK, ID_SLOTS, idRegionBase } from './id-region.js';

export interface CreateRequest {
  template: string;
  limits?: Partial<Limits>;
  env?: Record<string, string>;
  metadata?: Record<string, string>;
  /**
   * Run envd (the in-sandbox agent) as the sandbox's main process and wait until it
   * answers (default true). Without it the sandbox runs `command` and only the runtime's
   * exec reaches it.
   */
  agent?: boolean;
  /** The main process when there is no agent (default: one that keeps the sandbox alive). */
  command?: string[];
  /** Seconds until the TTL reaper acts (undefined: no TTL). */
  timeoutSec?: number;
  /** Environment for every process envd starts (given to envd's /init). */
  envVars?: Record<string, string>;
  /** What the reaper does at endAt, and whether traffic wakes a paused sandbox. */
  lifecycle?: LifecycleInput;
  /** Issue an envd access token (default true). */
  secure?: boolean;
  /** Further request fields kept with the sandbox and reported back (mcp, ...). */
  extra?: Record<string, unknown>;
  /** Egress policy and how its ports are served (validated: network/policy.ts). Default: open. */
  network?: NetworkSettings;
  /** The owning team (API creates); none for host-made sandboxes. */
  team?: string | null;
  /** Persistent volumes of the team, by name, and where they appear in the sandbox. */
  volumeMounts?: { name: string; path: string }[];
  /** The runtime to run it under (one of the registry's); default: its template's, else the node's. */
  runtime?: string;
}

/** The metadata key through which an E2B create chooses the sandbox's runtime. */
export const RUNTIME_METADATA_KEY = 'cubebox.runtime';

/**
 * What the admission hook (quotas) sees. It runs synchronously right before a sandbox's row is
 * written (create, warm-pool claim), the sandbox leaves `paused` (resume) or enters `pausing`
 * (pause), so that the check and the write are one step; throwing refuses the operation.
 */
export interface Admission {
  op: 'create' | 'resume' | 'pause';
  team: string | null;
  sandboxId: string;
  limits: Limits;
  diskMB: number;
  metadata: Record<string, string>;
  /** pause: whether the memory is kept. */
  memory?: boolean;
  /** pause with memory: whether the memory goes to disk (a checkpoint) rather than staying in RAM. */
  toDisk?: boolean;
}

export interface Lifecycle {
  onTimeout: 'kill' | 'pause';
  autoResume: boolean;
  keepMemory: boolean;
}

const DEFAULT_LIFECYCLE: Lifecycle = { onTimeout: 'kill', autoResume: false, keepMemory: true };

/** A lifecycle as callers give it: onTimeout as E2B's string or as the SDK's object form. */
export interface LifecycleInput {
  onTimeout?: 'kill' | 'pause' | { action: 'kill' } | { action: 'pause'; keepMemory?: boolean };
  autoResume?: boolean;
  keepMemory?: boolean;
}

/** Both forms of onTimeout ('pause', { action: 'pause', keepMemory: false }, ...) to one Lifecycle. */
export function normalizeLifecycle(input: LifecycleInput | undefined): Lifecycle {
  const out: Lifecycle = { ...DEFAULT_LIFECYCLE };
  if (!input) return out;
  const t = input.onTimeout;
  const action = typeof t === 'object' && t !== null ? t.action : t;
  if (action !== undefined && action !== 'kill' && action !== 'pause')
    throw invalid(`onTimeout must be 'kill' or 'pause' (or { action, keepMemory }), got ${JSON.stringify(t)}`);
  if (action) out.onTimeout = action;
  const objKeep = typeof t === 'object' && t !== null && 'keepMemory' in t ? t.keepMemory : undefined;
  if (objKeep !== undefined && action !== 'pause') throw invalid('onTimeout.keepMemory is only allowed when the action is pause');
  const keep = objKeep ?? input.keepMemory;
  if (keep !== undefined) out.keepMemory = keep !== false;
  if (input.autoResume !== undefined) out.autoResume = input.autoResume === true;
  if (out.autoResume && out.onTimeout !== 'pause') throw invalid('autoResume needs onTimeout pause');
  if (out.autoResume && !out.keepMemory) throw invalid('autoResume cannot be combined with a filesystem-only pause (keepMemory: false): resume it explicitly');
  return out;
}

export interface SandboxInfo {
  id: string;
  templateId: string;
  state: SandboxState;
  runtime: string;
  createdAt: number;
  startedAt: number | null;
  endAt: number | null;
  limits: Limits;
  metadata: Record<string, string>;
  lastError: string | null;
  templateName: string;
  accessToken: string | null;
  lifecycle: Lifecycle;
  /** Paused without memory: resume boots it again from its filesystem. */
  coldPaused: boolean;
  extra: Record<string, unknown>;
  /** The owning team; null for host-made sandboxes. */
  team: string | null;
  network: NetworkSettings;
  /** Required on port traffic when network.allowPublicTraffic is false. */
  trafficAccessToken: string | null;
  /** The sandbox's address on its own link (none without networking). */
  address: string | null;
  volumeMounts: { name: string; path: string }[];
}

export interface StoredSpec {
  limits: Limits;
  env: Record<string, string>;
  metadata: Record<string, string>;
  layers: string[];
  command: string[];
  agent: boolean;
  diskMB: number;
  startCommand?: string;
  readyCommand?: string;
  support: string; // host directory mounted at /.cubebox
  templateName: string;
  user: string;
  workdir?: string;
  envVars: Record<string, string>;
  accessToken: string | null;
  /** What envd requires on /init; given to envd at boot, new for every boot. */
  initSecret?: string;
  lifecycle: Lifecycle;
  coldPaused: boolean;
  /**
   * Paused with its memory saved to disk (a runtime that checkpoints by itself): no container
   * while paused; resume restores it from the image (checkpoint.ts).
   */
  checkpointed?: boolean;
  /** Made from a memory snapshot (that template's id): its first start restores the snapshot's image. */
  fromCheckpoint?: string;
  /** When the sandbox was last paused (ms epoch); the reaper deletes it a paused lifetime later. */
  pausedAt?: number;
  extra: Record<string, unknown>;
  /** From the template: seccomp allows user namespaces and mounts in them (seccomp.ts). */
  nestedContainers?: boolean;
  network?: NetworkSettings;
  trafficAccessToken?: string | null;
  /** The volumes mounted in the sandbox (volume/disk.ts makes their views). */
  volumeMounts?: VolumeMountSpec[];
}

export interface ManagerOptions {
  dataDir: string;
  /** Default: the registry's default runtime. */
  runtime?: RuntimeName;
  /** Default: warnings and errors to stderr. */
  logger?: Logger;
  /** Run the reconciler every this many ms (0 = only at start-up). */
  reconcileIntervalMs?: number;
  /** Run the TTL reaper every this many ms (0 = never). */
  reaperIntervalMs?: number;
  /** Delete sandboxes that stopped by themselves (E2B semantics: a dead sandbox is gone). */
  deleteStopped?: boolean;
  /** How long a paused sandbox is kept before the reaper deletes it, ms (default 30 days). */
  pausedLifetimeMs?: number;
  /** Warm pool: sandboxes prepared ahead of requests, per template name: a fixed size or adaptive bounds. */
  pool?: Record<string, number | PoolBounds>;
  /** How creates share the host (see CreateGate); defaults from the CPU count. */
  creates?: CreateLimits;
  /**
   * Sandbox networking: a subnet (default 10.200.0.0/16), pre-made slots, private networks
   * sandboxes may reach, connections tracked per sandbox. false: loopback only. Default: on.
   */
  network?: false | { subnet?: string; warmSlots?: number; allowPrivate?: string[]; maxFlows?: number };
  /** The pids budget of all sandboxes together (default half of pid_max). */
  pidsBudget?: number;
  /** Runtime binaries by runtime name (default each definition's, else /usr/bin/<name>). */
  runtimeBinaries?: Record<string, string>;
  /** Per-call bound of runtime commands, ms. */
  runtimeTimeoutMs?: number;
}

export interface CreateLimits {
  /** Sandboxes provisioned at once (default: twice the CPUs, 2 to 32). */
  concurrency?: number;
  /** Creates that may wait for a turn before one is refused with 429 (default 256). */
  queue?: number;
  /** A create whose wait would be longer is refused with 429 and Retry-After (default 30 s). */
  maxWaitMs?: number;
  /** Sandboxes torn down at once (default: four times the CPUs, 4 to 16); the rest wait in order. */
  deleteConcurrency?: number;
}

export interface ReconcileReport {
  adopted: string[];
  /** Busy sandboxes (an operation holds their lock): a later pass comes back to them. */
  skipped: string[];
  tornDown: string[];
  orphansRemoved: string[];
  /** What was found missing of a sandbox and made again (`<id>: <what>`). */
  repaired?: string[];
  errors: string[];
}

/** Requests a pooled sandbox can serve: nothing that changes how the sandbox is built. */
export function poolable(req: CreateRequest): boolean {
  // pooled sandboxes run under their template's runtime (or the node's): a create that names one is made anew
  return !req.limits && !req.env && !req.command && req.agent !== false && !req.volumeMounts?.length && !req.runtime;
}

export function resolveLimits(template: Template, reqLimits: Partial<Limits> = {}, req: Pick<CreateRequest, 'agent' | 'command'> = {}): Limits {
  const limits: Limits = {
    memoryMB: reqLimits.memoryMB ?? template.config.memoryMB,
    cpuCount: reqLimits.cpuCount ?? template.config.cpuCount,
    pids: reqLimits.pids ?? 1024,
  };
  if (!Number.isFinite(limits.memoryMB) || limits.memoryMB < 16 || limits.memoryMB > 1024 * 1024)
    throw invalid(`memory must be between 16 MB and 1 TB, got ${limits.memoryMB}`);
  // envd (node) needs room of its own: below 64 MB only an agent-less sandbox makes sense
  if (limits.memoryMB < 64 && (req.agent ?? true) && !req.command)
    throw invalid(`memory must be at least 64 MB for a sandbox with envd, got ${limits.memoryMB}`);
  if (!Number.isFinite(limits.cpuCount) || limits.cpuCount <= 0 || limits.cpuCount > 1024) throw invalid(`cpu count must be > 0, got ${limits.cpuCount}`);
  if (!Number.isInteger(limits.pids) || limits.pids < 8 || limits.pids > 1_000_000) throw invalid(`pids limit must be an integer >= 8, got ${limits.pids}`);
  return limits;
}
