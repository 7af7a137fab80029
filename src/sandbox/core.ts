import { EventEmitter } from 'node:events';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { naming } from '../config.js';
import { DEFAULT_NETWORK } from '../network/policy.js';
import type { SandboxRuntime } from '../runtime/oci-runtime.js';
import type { SandboxRow } from '../store/store.js';
import { notFound } from '../util/errors.js';
import type { GuardedSocket } from '../util/safe-socket.js';
import { KeyedMutex } from '../util/lock.js';
import type { CgroupHandle, LedgerKind, ManagerDeps } from './deps.js';
import { DeleteGate } from './delete-gate.js';
import { LEDGER } from './ledger.js';
import { assertTransition, deadlineFor, type SandboxState } from './states.js';
import { ID_BLOCK, openIdRegion, type IdRegion } from './id-region.js';
import type { Admission, SandboxInfo, StoredSpec } from './types.js';

/** A paused sandbox is kept this long by default (E2B keeps paused sandboxes for 30 days). */
export const DEFAULT_PAUSED_LIFETIME_MS = 30 * 24 * 3600 * 1000;

/** Teardowns at once by default: enough to share batched steps, few enough to finish early. */
export const DEFAULT_DELETE_CONCURRENCY = Math.min(16, Math.max(4, 4 * availableParallelism()));

/**
 * What every lifecycle file shares: the injected dependencies, the per-sandbox locks, the
 * events, and the small helpers on names, rows and state. The verbs (provision.ts,
 * teardown.ts, lifecycle.ts, ...) are functions over it; the manager is their façade.
 */
export class SandboxCore {
  readonly locks = new KeyedMutex();
  /** How many teardowns run at once, in arrival order (delete-gate.ts). */
  readonly deleteGate: DeleteGate;
  /**
   * 'interrupt' (sandboxId, reason: 'paused' | 'killed'): the sandbox stops serving (pause,
   *   delete); open streams must be cut, telling the client why.
   * 'deleted' (sandboxId): the sandbox and everything it owned are gone.
   */
  readonly events = new EventEmitter();
  /** Quota admission for creates, resumes and pauses (see Admission); unset: everything is admitted. */
  admit?: (a: Admission) => void;
  /**
   * A cluster's admission, before `admit`: checks the team's usage on every node and reserves
   * what the operation adds until the returned release (called once the sandbox's row counts
   * it here, or the operation failed). Unset: one node, whose `admit` sees everything.
   */
  admitAcross?: (a: Admission) => Promise<() => void>;

  /**
   * An operation's quota admission and the state change it allows, as one step: the cluster's
   * admission first (it reserves what the operation adds), then this node's, then `write` in the
   * same tick (which may check the row again: the cluster was asked asynchronously). The
   * reservation ends once the row counts the operation, or it failed.
   */
  async admitted(a: Admission, write: () => void): Promise<void> {
    const release = await this.admitAcross?.(a);
    try {
      this.admit?.(a);
      write();
    } finally {
      release?.();
    }
  }
  /** Disk admission once a team's new template layer exists (snapshot, fork): throwing refuses it. */
  admitLayer?: (team: string) => Promise<void>;
  /** How long a paused sandbox is kept before the reaper deletes it, ms. */
  pausedLifetimeMs = DEFAULT_PAUSED_LIFETIME_MS;
  /** Delete sandboxes that stopped by themselves (E2B semantics). */
  deleteStopped = false;
  closed = false;

  /** This instance's host ids: one block per sandbox (see id-region.ts). */
  readonly idRegion: IdRegion;
  /** The kinds of host resource a sandbox holds, in acquisition order (ledger.ts). */
  readonly ledger: readonly LedgerKind[];

  constructor(
    readonly deps: ManagerDeps,
    deleteConcurrency = DEFAULT_DELETE_CONCURRENCY,
  ) {
    this.deleteGate = new DeleteGate(deleteConcurrency);
    this.ledger = deps.ledger ?? LEDGER;
    this.idRegion = openIdRegion(deps.paths.dataDir, deps.paths.instanceId, deps.store.listSandboxes().length > 0);
  }

  get store() {
    return this.deps.store;
  }
  get log() {
    return this.deps.log;
  }
  get host() {
    return this.deps.host;
  }
  now(): number {
    return this.deps.clock.now();
  }

  requireRow(id: string): SandboxRow {
    const row = this.store.getSandbox(id);
    if (!row) throw notFound(`sandbox '${id}' not found`);
    return row;
  }

  spec(id: string): StoredSpec {
    return JSON.parse(this.requireRow(id).spec) as StoredSpec;
  }

  updateSpec(id: string, change: Partial<StoredSpec>): void {
    this.store.updateSandbox(id, { spec: JSON.stringify({ ...this.spec(id), ...change }) });
  }

  /** Every state change goes through here and is checked against the table (states.ts). */
  setState(id: string, state: SandboxState, extra: Partial<SandboxRow> = {}): void {
    assertTransition(this.requireRow(id).state, state);
    this.store.updateSandbox(id, { state, stateDeadline: deadlineFor(state, this.now()), ...extra });
  }

  info(row: SandboxRow): SandboxInfo {
    const spec = JSON.parse(row.spec) as StoredSpec;
    return {
      id: row.id,
      templateId: row.templateId,
      state: row.state,
      runtime: row.runtime,
      createdAt: row.createdAt,
      startedAt: row.startedAt,
      endAt: row.endAt,
      limits: spec.limits,
      metadata: spec.metadata,
      lastError: row.lastError,
      templateName: spec.templateName,
      accessToken: spec.accessToken,
      lifecycle: spec.lifecycle,
      coldPaused: spec.coldPaused,
      extra: spec.extra,
      team: row.team ?? null,
      volumeMounts: (spec.volumeMounts ?? []).map(({ name, path }) => ({ name, path })),
      network: spec.network ?? DEFAULT_NETWORK,
      trafficAccessToken: spec.trafficAccessToken ?? null,
      address: this.deps.net?.lease(row.id)?.address ?? null,
    };
  }

  get(id: string): SandboxInfo {
    return this.info(this.requireRow(id));
  }

  containerId(id: string): string {
    return naming.containerId(this.deps.paths.instanceId, id);
  }

  sandboxDir(id: string): string {
    return join(this.deps.paths.sandboxesDir, id);
  }

  cgroupPath(id: string): string {
    return naming.cgroupPath(this.deps.paths.instanceId, id);
  }

  cgroup(id: string): CgroupHandle {
    return this.host.cgroup(this.cgroupPath(id));
  }

  /** The runtime a sandbox was created with (its row records it), whatever the default. */
  runtimeOf(id: string): SandboxRuntime {
    return this.deps.runtimes.byName(this.store.getSandbox(id)?.runtime ?? this.deps.runtimes.default.name);
  }

  /** Host ids for a sandbox's user namespace: a per-instance region, one block per slot. */
  idMapFor(slot: number | null): { hostId: number; size: number } | undefined {
    if (slot === null || !this.deps.runtimes.default.userNamespaces) return undefined;
    return { hostId: this.idRegion.base + slot * ID_BLOCK, size: ID_BLOCK };
  }

  /** The pids budget and CPU and IO weights of all sandboxes together, on their parent cgroup. */
  applyInstanceLimits(): void {
    this.host.applyInstanceLimits(naming.cgroupParent(this.deps.paths.instanceId));
  }

  /** Host path of the unix socket on which a sandbox's envd listens (on the sandbox's disk). */
  envdSocket(id: string): string {
    return join(this.sandboxDir(id), 'disk', 'run', 'envd.sock');
  }

  /**
   * envd's socket as the host may connect to it: only a socket on the sandbox's own mounted
   * disk, never through a link the sandbox planted. undefined when the disk is not mounted.
   */
  envdEndpoint(id: string): GuardedSocket | undefined {
    const device = this.host.mountDevice(join(this.sandboxDir(id), 'disk'));
    return device === undefined ? undefined : { path: this.envdSocket(id), device };
  }

  /** The sandbox's console (tini and envd's stdout and stderr), on its own disk. */
  consoleLogPath(id: string): string {
    return join(this.sandboxDir(id), 'disk', 'console.log');
  }
}
