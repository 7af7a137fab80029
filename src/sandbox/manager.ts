import type { ChildProcess } from 'node:child_process';
import { availableParallelism } from 'node:os';
import type { Logger } from 'pino';
import type { Paths } from '../config.js';
import type { CgroupMode } from '../runtime/cgroups.js';
import type { SandboxRuntime } from '../runtime/oci-runtime.js';
import type { SandboxNetwork } from '../network/network.js';
import type { NetworkSettings } from '../network/policy.js';
import type { Store } from '../store/store.js';
import type { Template, TemplateStore } from '../template/store.js';
import type { GuardedSocket } from '../util/safe-socket.js';
import { CubeboxError } from '../util/errors.js';
import type { KeyedMutex } from '../util/lock.js';
import { SandboxCore } from './core.js';
import type { CgroupHandle, ManagerDeps } from './deps.js';
import { openManagerDeps } from './open.js';
import * as lifecycle from './lifecycle.js';
import { CreateGate } from './create-gate.js';
import { WarmPool } from './pool.js';
import type { PoolBounds } from './pool-sizer.js';
import { createSandbox } from './provision.js';
import { reap, startReaper } from './reaper.js';
import { Reconciler } from './reconciler.js';
import { collectEphemeralTemplates, fork, snapshot, type SnapshotOpts } from './snapshots.js';
import { deleteSandbox } from './teardown.js';
import { releaseRunRoot } from '../runtime/run-root.js';
import { poolable, type Admission, type CreateLimits, type CreateRequest, type ManagerOptions, type ReconcileReport, type SandboxInfo } from './types.js';

export type { Admission, CreateRequest, Lifecycle, LifecycleInput, ManagerOptions, ReconcileReport, SandboxInfo } from './types.js';
export { idRegionBase, normalizeLifecycle, resolveLimits } from './types.js';
export type { ManagerDeps } from './deps.js';

/** What start() does besides the start-up reconciliation: the background work of a long-lived manager. */
export type StartOptions = Pick<ManagerOptions, 'reconcileIntervalMs' | 'reaperIntervalMs' | 'deleteStopped' | 'pausedLifetimeMs' | 'pool'>;

/** Cold creates at once by default: provisioning is CPU-bound, twice the CPUs keeps them busy while some steps wait. */
export const DEFAULT_CREATE_CONCURRENCY = Math.min(32, Math.max(2, 2 * availableParallelism()));

/**
 * The sandbox manager: the façade over the lifecycle core (src/sandbox/: states, provision,
 * teardown, lifecycle, pool, snapshots, reconciler, reaper). Every operation on a sandbox
 * (API, reaper, reconciler) runs under that sandbox's lock.
 */
export class SandboxManager {
  readonly paths: Paths;
  readonly store: Store;
  readonly templates: TemplateStore;
  readonly runtime: SandboxRuntime;
  readonly cgroupMode: CgroupMode;
  readonly log: Logger;
  /** Per-sandbox locks (rule 6). */
  readonly locks: KeyedMutex;
  /**
   * 'interrupt' (sandboxId, reason: 'paused' | 'killed'): the sandbox stops serving (pause,
   *   delete); open streams must be cut, telling the client why.
   * 'deleted' (sandboxId): the sandbox and everything it owned are gone.
   */
  readonly events: SandboxCore['events'];
  private readonly core: SandboxCore;
  private readonly pool: WarmPool;
  /** Creates served from the warm pool, provisioned on demand, and refused for capacity (429/503). */
  readonly createCounts = { pool: 0, new: 0, refused: 0 };
  /** How many sandboxes are provisioned at once, and who waits (creates, then pool refills). */
  readonly gate: CreateGate;
  /** How many sandboxes are torn down at once, in arrival order (refills wait while it is busy). */
  get deleteGate(): SandboxCore['deleteGate'] {
    return this.core.deleteGate;
  }
  private readonly reconciler: Reconciler;
  private readonly stoppers: Array<() => void> = [];

  /** A manager over the given dependencies. Does no start-up work: see start() and open(). */
  constructor(
    readonly deps: ManagerDeps,
    limits: CreateLimits = {},
  ) {
    this.core = new SandboxCore(deps, limits.deleteConcurrency);
    const concurrency = limits.concurrency ?? DEFAULT_CREATE_CONCURRENCY;
    const deletes = this.core.deleteGate;
    // pool refills yield to deletes as to creates: they wait while teardowns run or wait
    this.gate = new CreateGate({
      concurrency,
      maxQueue: limits.queue ?? 256,
      maxWaitMs: limits.maxWaitMs ?? 30_000,
      refillsYield: () => deletes.busy,
    });
    deletes.onIdle(() => this.gate.wake());
    this.paths = deps.paths;
    this.store = deps.store;
    this.templates = deps.templates;
    this.runtime = deps.runtimes.default;
    this.cgroupMode = deps.host.cgroupMode;
    this.log = deps.log;
    this.locks = this.core.locks;
    this.events = this.core.events;
    this.pool = new WarmPool(this.core, this.gate, concurrency);
    this.reconciler = new Reconciler(this.core, () => {
      collectEphemeralTemplates(this.core);
      this.pool.fill();
    });
  }

  /** Quota admission for creates, resumes and pauses (see Admission); unset: everything is admitted. */
  get admit(): ((a: Admission) => void) | undefined {
    return this.core.admit;
  }
  set admit(fn: ((a: Admission) => void) | undefined) {
    this.core.admit = fn;
  }
  /** Disk admission of a team's new template layer (snapshot, fork); unset: every layer stays. */
  /** The cluster-wide quota admission (see SandboxCore.admitAcross). */
  set admitAcross(fn: ((a: Admission) => Promise<() => void>) | undefined) {
    this.core.admitAcross = fn;
  }

  get admitLayer(): ((team: string) => Promise<void>) | undefined {
    return this.core.admitLayer;
  }
  set admitLayer(fn: ((team: string) => Promise<void>) | undefined) {
    this.core.admitLayer = fn;
  }

  /**
   * Opens a data directory as its one manager: checks for root, takes the lock, builds the
   * real dependencies from the options (open.ts; nothing is read from the environment) and
   * runs the start-up reconciliation. Throws a 'unavailable' error when another manager owns it.
   */
  static async open(opts: ManagerOptions): Promise<SandboxManager> {
    const m = new SandboxManager(await openManagerDeps(opts), opts.creates);
    const log = m.log;
    const swept = m.templates.sweepTemporaries();
    if (swept.length) log.warn({ swept }, 'removed temporary layers left by an interrupted import or build');
    await m.start(opts);
    return m;
  }

  /** The start-up reconciliation (rule 8), then the pool and the periodic reconciler and reaper. */
  async start(opts: StartOptions = {}): Promise<void> {
    const report = await this.reconcile({ startup: true });
    if (report.errors.length) this.log.warn({ errors: report.errors }, 'start-up reconciliation left errors');
    this.core.deleteStopped = opts.deleteStopped ?? false;
    if (opts.pausedLifetimeMs !== undefined) this.core.pausedLifetimeMs = opts.pausedLifetimeMs;
    if (opts.pool) this.setPool(opts.pool);
    if (opts.reconcileIntervalMs) {
      // the search for orphans about once a minute; the sandboxes' own states every pass
      const orphansEvery = Math.max(1, Math.round(60_000 / opts.reconcileIntervalMs));
      let pass = 0;
      const timer = setInterval(
        () => void this.reconcile({ orphans: ++pass % orphansEvery === 0 }).catch((e) => this.log.error({ err: e }, 'reconcile failed')),
        opts.reconcileIntervalMs,
      );
      timer.unref();
      this.stoppers.push(() => clearInterval(timer));
    }
    if (opts.reaperIntervalMs) this.stoppers.push(startReaper(this.core, opts.reaperIntervalMs));
  }

  /** Stops background work and releases the data directory. Sandboxes keep running. */
  async close(): Promise<void> {
    if (this.core.closed) return;
    this.core.closed = true;
    for (const stop of this.stoppers) stop();
    await this.pool.settled();
    await this.reconciler.settled();
    await this.deps.net?.close().catch((e: Error) => this.log.warn({ err: e.message }, 'closing sandbox networking failed'));
    await releaseRunRoot(this.paths.runRoot, this.deps.runtimes.all()).catch((e: Error) =>
      this.log.warn({ err: e.message }, 'cleaning the run directory failed'),
    );
    this.store.close();
    this.deps.lock?.release();
  }

  // ---------------------------------------------------------------- queries and names

  get(id: string): SandboxInfo {
    return this.core.get(id);
  }

  list(): SandboxInfo[] {
    return this.store.listSandboxes().map((r) => this.core.info(r));
  }

  containerId(id: string): string {
    return this.core.containerId(id);
  }

  sandboxDir(id: string): string {
    return this.core.sandboxDir(id);
  }

  cgroup(id: string): CgroupHandle {
    return this.core.cgroup(id);
  }

  /** The runtime of that name, with this instance's state root (made on first use). */
  runtimeFor(name: string): SandboxRuntime {
    return this.deps.runtimes.byName(name);
  }

  /** The runtime a sandbox was created with (its row records it), whatever this manager's default. */
  runtimeOf(id: string): SandboxRuntime {
    return this.core.runtimeOf(id);
  }

  envdSocket(id: string): string {
    return this.core.envdSocket(id);
  }

  envdEndpoint(id: string): GuardedSocket | undefined {
    return this.core.envdEndpoint(id);
  }

  consoleLogPath(id: string): string {
    return this.core.consoleLogPath(id);
  }

  // ---------------------------------------------------------------- lifecycle

  /** A new running sandbox: a pooled one when the pool has one that fits, else a fresh one. */
  async create(req: CreateRequest): Promise<SandboxInfo> {
    const template = this.templates.get(req.template);
    const release = this.templates.hold(template.id); // not removed while the create runs
    try {
      return await this.createFrom(template, req);
    } finally {
      release();
    }
  }

  private async createFrom(template: Template, req: CreateRequest): Promise<SandboxInfo> {
    const fromPool = this.pool.pooled(template.name) && poolable(req);
    if (fromPool) {
      this.pool.recordDemand(template.name);
      const claimed = await this.pool.claim(template.id, req);
      this.pool.fill();
      if (claimed) {
        this.createCounts.pool++;
        return claimed;
      }
    }
    try {
      return await this.gate.run('request', async () => {
        // a refill may have finished while this create waited for its turn
        const claimed = fromPool ? await this.pool.claim(template.id, req) : undefined;
        this.createCounts[claimed ? 'pool' : 'new']++;
        return claimed ?? (await createSandbox(this.core, template, req));
      });
    } catch (err) {
      if (err instanceof CubeboxError && err.retryAfterSec !== undefined) this.createCounts.refused++;
      throw err;
    } finally {
      if (fromPool) this.pool.fill();
    }
  }

  exec(id: string, args: string[], opts: lifecycle.ExecOpts = {}): Promise<ChildProcess> {
    return lifecycle.exec(this.core, id, args, opts);
  }

  /**
   * Pauses a running sandbox. With memory (default) the whole cgroup tree is frozen and
   * resumes exactly where it was; without, the processes are stopped (the filesystem stays)
   * and resume boots the sandbox again.
   */
  pause(id: string, opts: { memory?: boolean } = {}): Promise<SandboxInfo> {
    return this.locks.run(id, () => lifecycle.pauseLocked(this.core, id, opts.memory !== false));
  }

  resume(id: string, opts: { timeoutSec?: number } = {}): Promise<SandboxInfo> {
    return this.locks.run(id, () => lifecycle.resumeLocked(this.core, id, opts.timeoutSec));
  }

  /** E2B's connect: a running sandbox only ever gets a later endAt; a paused one resumes. */
  connect(id: string, timeoutSec?: number): Promise<{ info: SandboxInfo; resumed: boolean }> {
    return lifecycle.connect(this.core, id, timeoutSec);
  }

  /** Sets endAt = now + timeout (may shorten it); the reaper acts within a second of endAt. */
  setTimeout(id: string, timeoutSec: number): Promise<SandboxInfo> {
    return lifecycle.setTimeout(this.core, id, timeoutSec);
  }

  /** Extends a running sandbox's endAt by a duration (E2B's refreshes). */
  refresh(id: string, durationSec: number): Promise<void> {
    return lifecycle.refresh(this.core, id, durationSec);
  }

  /** Replaces a sandbox's egress policy (E2B's PUT /sandboxes/{id}/network); live, no restart. */
  updateNetwork(id: string, settings: NetworkSettings): Promise<SandboxInfo> {
    return lifecycle.updateNetwork(this.core, id, settings);
  }

  /** The sandbox's network slot and its counters, or undefined without networking. */
  network(): SandboxNetwork | undefined {
    return this.deps.net;
  }

  /** Deletes a sandbox from any state. Unknown ids (with no ledger left) are not found. */
  delete(id: string): Promise<void> {
    return deleteSandbox(this.core, id);
  }

  /** The TTL reaper's round: running sandboxes past endAt are killed or paused, paused ones past their lifetime deleted. */
  reap(now = this.core.now()): Promise<string[]> {
    return reap(this.core, now);
  }

  /** Compares the store with the host and converges (see Reconciler). */
  reconcile(opts: { startup?: boolean; orphans?: boolean } = {}): Promise<ReconcileReport> {
    return this.reconciler.reconcile(opts);
  }

  // ---------------------------------------------------------------- snapshots, fork, pool, templates

  /** Commits a sandbox's writable layer as a new template on top of its template. */
  snapshot(id: string, opts: SnapshotOpts = {}): Promise<Template> {
    return snapshot(this.core, id, opts);
  }

  /** count new sandboxes from a sandbox's filesystem (through an ephemeral snapshot). */
  fork(id: string, count: number, req: Omit<CreateRequest, 'template'> = {}): Promise<Array<{ info?: SandboxInfo; error?: CubeboxError }>> {
    return fork(this.core, id, count, req, (r) => this.create(r));
  }

  /** Deletes a template, giving its pooled sandboxes back first. */
  removeTemplate(ref: string): Promise<void> {
    return this.pool.removeTemplate(ref);
  }

  /** Sets the warm pool sizes (template name -> fixed count, or adaptive bounds) and starts filling. */
  setPool(sizes: Record<string, number | PoolBounds>): void {
    this.pool.set(sizes);
  }

  /** Each pooled template's bounds, its size now and how many are ready. */
  poolStatus(): Array<{ template: string; min: number; max: number; target: number; ready: number }> {
    return Object.entries(this.pool.configuredBounds()).map(([template, b]) => {
      const id = this.templates.find(template)?.id;
      const ready = id ? this.store.sandboxesInState('pooled', id).length : 0;
      return { template, ...b, target: this.pool.target(template), ready };
    });
  }

  /** Brings every pool up to its size in the background. */
  fillPools(): void {
    this.pool.fill();
  }
}
