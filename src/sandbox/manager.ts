import { createHash, randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { ChildProcess, StdioOptions } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import pino, { type Logger } from 'pino';
import { naming, openPaths, type Paths, type RuntimeName } from '../config.js';
import { type BundleSpec, type Limits, renewBootId, writeBundle } from '../runtime/bundle.js';
import { prepareSupportTree, SANDBOX_SUPPORT, type SupportTree } from '../runtime/support.js';
import { applyInstanceLimits, defaultInstanceLimits, detectCgroupMode, listInstanceCgroups, SandboxCgroup, type CgroupMode } from '../runtime/cgroups.js';
import { OciRuntime, type SandboxRuntime } from '../runtime/oci-runtime.js';
import { mountDisk, mountRootfs, mountsUnder, mountTable, releaseLoopDevices, rootfsLayout, unmountRootfs } from '../runtime/rootfs.js';
import { copyLayerUnshifted } from '../template/layer-copy.js';
import { envdCommand, envdRequest, healthy, INIT_SECRET_ENV, INIT_SECRET_HEADER } from './envd-client.js';
import { mountDevice, type GuardedSocket } from '../util/safe-socket.js';
import { readLogTail, rotateConsoleLog } from './console-log.js';
import { ManagerLock, Store, type SandboxRow } from '../store/store.js';
import { allows, assertOperation, assertTransition, deadlineFor, type SandboxState } from './states.js';
import { TemplateStore, type Template, type TemplateConfig } from '../template/store.js';
import { CubeboxError, errorMessage, invalid, notFound } from '../util/errors.js';
import { faultPoint } from '../util/fault.js';
import { randomId, SANDBOX_ID_RE } from '../util/ids.js';
import { KeyedMutex } from '../util/lock.js';

const RUNTIME_NAMES: RuntimeName[] = ['crun', 'runc', 'runsc'];
/** How many sandboxes one reconciler pass handles at once. */
const RECONCILE_CONCURRENCY = 4;

const BASE_ENV = { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', HOME: '/root' };

/** Each sandbox's root maps to its own block of 65536 host ids. */
const ID_BLOCK = 65536;
const ID_SLOTS = 512;

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
  /** Further request fields kept with the sandbox and reported back (network, ...). */
  extra?: Record<string, unknown>;
  /** The owning team (API creates); none for host-made sandboxes. */
  team?: string | null;
}

/**
 * What the admission hook (quotas) sees. It runs synchronously right before a sandbox's row is
 * written (create, warm-pool claim) or the sandbox leaves `paused` (resume), so that the check
 * and the write are one step; throwing refuses the operation.
 */
export interface Admission {
  op: 'create' | 'resume';
  team: string | null;
  sandboxId: string;
  limits: Limits;
  diskMB: number;
  metadata: Record<string, string>;
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
  if (action !== undefined && action !== 'kill' && action !== 'pause') throw invalid(`onTimeout must be 'kill' or 'pause' (or { action, keepMemory }), got ${JSON.stringify(t)}`);
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
}

interface StoredSpec {
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
  extra: Record<string, unknown>;
  /** From the template: seccomp allows user namespaces and mounts in them (seccomp.ts). */
  nestedContainers?: boolean;
}

export interface ManagerOptions {
  dataDir: string;
  runtime?: RuntimeName;
  logger?: Logger;
  /** Run the reconciler every this many ms (0 = only at start-up). */
  reconcileIntervalMs?: number;
  /** Run the TTL reaper every this many ms (0 = never). */
  reaperIntervalMs?: number;
  /** Delete sandboxes that stopped by themselves (E2B semantics: a dead sandbox is gone). */
  deleteStopped?: boolean;
  /** Warm pool: sandboxes prepared ahead of requests, per template name. */
  pool?: Record<string, number>;
}

export interface ReconcileReport {
  adopted: string[];
  /** Busy sandboxes (an operation holds their lock): a later pass comes back to them. */
  skipped: string[];
  tornDown: string[];
  orphansRemoved: string[];
  errors: string[];
}

/**
 * The sandbox manager: the lifecycle state machine, per-sandbox locks, the ledger of
 * host resources, and the reconciler. Every operation on a sandbox (API, reaper,
 * reconciler) runs under that sandbox's lock.
 */
export class SandboxManager {
  readonly locks = new KeyedMutex();
  private readonly instanceLimits = defaultInstanceLimits();
  /**
   * 'interrupt' (sandboxId, reason: 'paused' | 'killed'): the sandbox stops serving (pause,
   *   delete); open streams must be cut, telling the client why.
   * 'deleted' (sandboxId): the sandbox and everything it owned are gone.
   */
  readonly events = new EventEmitter();
  readonly templates: TemplateStore;
  /** Quota admission for creates and resumes (see Admission); unset: everything is admitted. */
  admit?: (a: Admission) => void;
  private timer: NodeJS.Timeout | undefined;
  private reaper: NodeJS.Timeout | undefined;
  private poolSizes: Record<string, number> = {};
  private poolConfigured = false;
  /** Templates being deleted: the pool does not refill them. */
  private readonly retiring = new Set<string>();
  private filling: Promise<void> | undefined;
  private deleteStopped = false;
  private closed = false;
  private reconciling: Promise<ReconcileReport> | undefined;
  /** Runtimes other than the default, by name: each sandbox is driven by the one it was created with. */
  private readonly runtimes = new Map<string, SandboxRuntime>();

  private support!: SupportTree;

  private constructor(
    readonly paths: Paths,
    readonly store: Store,
    readonly runtime: SandboxRuntime,
    readonly cgroupMode: CgroupMode,
    readonly log: Logger,
    private readonly lock: ManagerLock,
  ) {
    this.templates = new TemplateStore(paths, store);
  }

  /**
   * Opens a data directory as its one manager: takes the lock, opens the store and runs
   * the start-up reconciliation. Throws a 'unavailable' error when another manager owns it.
   */
  static async open(opts: ManagerOptions): Promise<SandboxManager> {
    if (process.getuid?.() !== 0) throw new CubeboxError('unavailable', 'cubebox must run as root (it creates namespaces, cgroups and mounts)');
    const paths = openPaths(opts.dataDir);
    // Traversable but not listable: the runtime reaches the rootfs as the sandbox's unprivileged root.
    chmodSync(paths.dataDir, 0o711);
    mkdirSync(paths.sandboxesDir, { recursive: true });
    chmodSync(paths.sandboxesDir, 0o711);
    const lock = new ManagerLock(paths.lockFile);
    if (!lock.tryAcquire()) throw new CubeboxError('unavailable', `another cubebox manager owns ${paths.dataDir}`);
    const log = opts.logger ?? pino({ level: process.env.CUBEBOX_LOG_LEVEL ?? 'warn' }, pino.destination(2));
    const store = new Store(paths.db);
    const cgroupMode = detectCgroupMode();
    const runtimeName = opts.runtime ?? (process.env.CUBEBOX_RUNTIME as RuntimeName | undefined) ?? 'crun';
    if (!['crun', 'runc', 'runsc'].includes(runtimeName)) throw invalid(`unknown runtime '${runtimeName}' (crun, runc or runsc)`);
    const runtime = new OciRuntime(runtimeName, join(paths.runRoot, runtimeName), cgroupMode);
    const m = new SandboxManager(paths, store, runtime, cgroupMode, log, lock);
    try {
      const inUse = new Set(store.listSandboxes().map((r) => (JSON.parse(r.spec) as StoredSpec).support));
      m.support = await prepareSupportTree(join(paths.dataDir, 'support'), inUse);
    } catch (err) {
      store.close();
      lock.release();
      throw new CubeboxError('unavailable', `cannot prepare the sandbox support tree: ${errorMessage(err)}`);
    }
    const swept = m.templates.sweepTemporaries();
    if (swept.length) log.warn({ swept }, 'removed temporary layers left by an interrupted import or build');
    const report = await m.reconcile({ startup: true });
    if (report.errors.length) log.warn({ errors: report.errors }, 'start-up reconciliation left errors');
    m.deleteStopped = opts.deleteStopped ?? false;
    if (opts.pool) m.setPool(opts.pool);
    if (opts.reconcileIntervalMs) {
      m.timer = setInterval(() => void m.reconcile().catch((e) => log.error({ err: e }, 'reconcile failed')), opts.reconcileIntervalMs);
      m.timer.unref();
    }
    if (opts.reaperIntervalMs) {
      let running = false;
      m.reaper = setInterval(() => {
        if (running || m.closed) return;
        running = true;
        void m
          .reap()
          .catch((e) => log.error({ err: e }, 'reaper failed'))
          .finally(() => (running = false));
      }, opts.reaperIntervalMs);
      m.reaper.unref();
    }
    return m;
  }

  /** Stops background work and releases the data directory. Sandboxes keep running. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    if (this.reaper) clearInterval(this.reaper);
    await this.filling?.catch(() => undefined);
    await this.reconciling?.catch(() => undefined);
    this.store.close();
    this.lock.release();
  }

  // ---------------------------------------------------------------- queries

  get(id: string): SandboxInfo {
    const row = this.store.getSandbox(id);
    if (!row) throw notFound(`sandbox '${id}' not found`);
    return this.info(row);
  }

  list(): SandboxInfo[] {
    return this.store.listSandboxes().map((r) => this.info(r));
  }

  private info(row: SandboxRow): SandboxInfo {
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
    };
  }

  private spec(id: string): StoredSpec {
    return JSON.parse(this.requireRow(id).spec) as StoredSpec;
  }

  private updateSpec(id: string, change: Partial<StoredSpec>): void {
    this.store.updateSandbox(id, { spec: JSON.stringify({ ...this.spec(id), ...change }) });
  }

  containerId(id: string): string {
    return naming.containerId(this.paths.instanceId, id);
  }

  sandboxDir(id: string): string {
    return join(this.paths.sandboxesDir, id);
  }

  cgroup(id: string): SandboxCgroup {
    return new SandboxCgroup(this.cgroupMode, naming.cgroupPath(this.paths.instanceId, id));
  }

  /** The runtime of that name, with this instance's state root (made on first use). */
  runtimeFor(name: string): SandboxRuntime {
    if (name === this.runtime.name) return this.runtime;
    let rt = this.runtimes.get(name);
    if (!rt) {
      if (!RUNTIME_NAMES.includes(name as RuntimeName)) throw new Error(`unknown runtime '${name}'`);
      rt = new OciRuntime(name as RuntimeName, join(this.paths.runRoot, name), this.cgroupMode);
      this.runtimes.set(name, rt);
    }
    return rt;
  }

  /** The runtime a sandbox was created with (its row records it), whatever this manager's default. */
  runtimeOf(id: string): SandboxRuntime {
    return this.runtimeFor(this.store.getSandbox(id)?.runtime ?? this.runtime.name);
  }

  /** Every runtime that has (or may have) state in this instance: for orphans, which have no row. */
  private allRuntimes(): SandboxRuntime[] {
    const names = new Set<string>([this.runtime.name]);
    try {
      for (const e of readdirSync(this.paths.runRoot)) if (RUNTIME_NAMES.includes(e as RuntimeName)) names.add(e);
    } catch {
      /* no state root yet */
    }
    return [...names].map((n) => this.runtimeFor(n));
  }

  // ---------------------------------------------------------------- lifecycle

  async create(req: CreateRequest): Promise<SandboxInfo> {
    const template = this.templates.get(req.template);
    if (this.poolTarget(template.name) > 0 && poolable(req)) {
      const claimed = await this.claimPooled(template.id, req);
      this.fillPools();
      if (claimed) return claimed;
    }
    return this.createNew(template, req, false);
  }

  private async createNew(template: Template, req: CreateRequest, pooled: boolean): Promise<SandboxInfo> {
    const limits = resolveLimits(template, req.limits, req);
    const id = randomId(20);
    return this.locks.run(id, async () => {
      const now = Date.now();
      const spec: StoredSpec = {
        limits,
        env: { ...template.config.env, ...(req.env ?? {}) },
        metadata: req.metadata ?? {},
        layers: template.layers,
        command: req.command ?? ['/bin/sh', '-c', 'exec sleep 2147483647'],
        agent: req.agent ?? req.command === undefined,
        diskMB: template.config.diskSizeMB,
        startCommand: template.config.startCommand,
        readyCommand: template.config.readyCommand,
        nestedContainers: template.config.nestedContainers === true,
        support: this.support.dir,
        templateName: template.name,
        user: template.config.user,
        workdir: template.config.workdir,
        envVars: req.envVars ?? {},
        accessToken: req.secure === false ? null : randomBytes(24).toString('base64url'),
        initSecret: randomBytes(24).toString('base64url'),
        lifecycle: normalizeLifecycle(req.lifecycle),
        coldPaused: false,
        extra: req.extra ?? {},
      };
      if (req.timeoutSec !== undefined && !(Number.isFinite(req.timeoutSec) && req.timeoutSec >= 0)) throw invalid(`timeout must be a number of seconds >= 0, got ${req.timeoutSec}`);
      this.store.transaction(() => {
        this.admit?.({ op: 'create', team: req.team ?? null, sandboxId: id, limits, diskMB: spec.diskMB, metadata: spec.metadata });
        const slot = this.runtime.userNamespaces ? this.allocateIdSlot() : null;
        this.store.insertSandbox({
          id,
          templateId: template.id,
          team: req.team ?? null,
          state: 'creating',
          stateDeadline: deadlineFor('creating', now),
          runtime: this.runtime.name,
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
      try {
        await this.provision(id, spec, pooled);
      } catch (err) {
        this.log.warn({ sandbox: id, err: errorMessage(err) }, 'create failed; tearing down');
        try {
          await this.teardown(id);
        } catch (e2) {
          this.setState(id, 'failed', { lastError: `create: ${errorMessage(err)}; teardown: ${errorMessage(e2)}` });
        }
        throw new CubeboxError('internal', `creating a sandbox from template '${template.name}' failed: ${errorMessage(err)}`, { cause: err });
      }
      return this.get(id);
    });
  }

  /** Host ids for a sandbox's user namespace: a per-instance region, one block per slot. */
  private idMapFor(slot: number | null): { hostId: number; size: number } | undefined {
    if (slot === null || !this.runtime.userNamespaces) return undefined;
    return { hostId: idRegionBase(this.paths.instanceId) + slot * ID_BLOCK, size: ID_BLOCK };
  }

  private allocateIdSlot(): number {
    const used = this.store.usedUidSlots();
    for (let s = 0; s < ID_SLOTS; s++) if (!used.has(s)) return s;
    throw new CubeboxError('unavailable', `no free user-id range: ${ID_SLOTS} sandboxes exist on this instance`);
  }

  /** Creates every host resource of a sandbox, recording each in the ledger first. */
  private async provision(id: string, spec: StoredSpec, pooled: boolean): Promise<void> {
    const inst = this.paths.instanceId;
    const row = this.store.getSandbox(id)!;
    const idMap = this.idMapFor(row.uidSlot);
    const dir = this.sandboxDir(id);

    this.store.recordResource(id, 'dir', dir);
    // root-only until mountRootfs lets the sandbox's own root group traverse it (rootfs.ts)
    mkdirSync(dir, { mode: 0o700 });
    faultPoint('create:after-dir');

    const layout = rootfsLayout(dir, naming.mountSource(inst, id), spec.layers.length);
    this.store.recordResource(id, 'mount', layout.disk);
    await mountDisk(layout, spec.diskMB, join(this.paths.dataDir, 'disks'));
    faultPoint('create:after-disk');
    for (const m of [layout.target, ...layout.views]) this.store.recordResource(id, 'mount', m);
    await mountRootfs(layout, spec.layers, idMap);
    faultPoint('create:after-mount');

    // The directory shared with the sandbox (envd's socket lives here) and the console log
    // sit on the sandbox's own disk: bounded by its size, and a socket found there is the
    // sandbox's (see safe-socket.ts).
    const shared = join(layout.disk, 'run');
    mkdirSync(shared, { mode: 0o700 });
    if (idMap) chownSync(shared, idMap.hostId, idMap.hostId);
    const bundleDir = join(dir, 'bundle');
    mkdirSync(bundleDir, { mode: 0o700 });
    writeBundle(bundleDir, this.bundleSpec(id, spec, layout.target, idMap));

    const cid = this.containerId(id);
    this.store.recordResource(id, 'cgroup', naming.cgroupPath(inst, id));
    this.store.recordResource(id, 'container', cid);
    faultPoint('create:before-run');
    // a zero exit of a detached run means the container's first process is running
    const pid = await this.runtime.run(cid, bundleDir, this.consoleLogPath(id));
    this.applyInstanceLimits();
    faultPoint('create:after-run');
    if (spec.agent) await this.waitForAgent(id);
    await this.startTemplateCommand(id, spec);
    if (pooled) {
      this.setState(id, 'pooled', { pid });
      return;
    }
    if (spec.agent) await this.personalize(id, spec);
    faultPoint('create:after-agent');
    const startedAt = Date.now();
    // the TTL counts from the moment the sandbox is usable
    const endAt = row.endAt !== null ? startedAt + (row.endAt - row.createdAt) : null;
    this.setState(id, 'running', { pid, startedAt, endAt });
  }

  // ---------------------------------------------------------------- snapshots and fork

  /**
   * Commits a sandbox's writable layer as a new template on top of its template. Taken
   * while frozen, so it is consistent. Carries the filesystem only: this runtime cannot
   * checkpoint memory here (see `cubebox doctor`: CRIU).
   */
  async snapshot(id: string, opts: { name?: string; ephemeral?: boolean; config?: Partial<TemplateConfig> } = {}): Promise<Template> {
    return this.locks.run(id, async () => {
      const row = this.requireRow(id);
      assertOperation('snapshot', id, row.state);
      const spec = JSON.parse(row.spec) as StoredSpec;
      const parent = this.templates.get(row.templateId);
      const name = opts.name ?? `${spec.templateName}-snap-${randomId(8)}`;
      const frozeIt = row.state === 'running';
      if (frozeIt) {
        this.setState(id, 'pausing');
        await this.runtimeOf(id).pause(this.containerId(id));
      }
      try {
        const idMap = this.idMapFor(row.uidSlot);
        return await this.templates.addOnTop(name, parent, (dir) => copyLayerUnshifted(join(this.sandboxDir(id), 'disk', 'upper'), dir, idMap?.hostId ?? 0, ID_BLOCK), {
          snapshotOf: id,
          ephemeral: opts.ephemeral,
          ...opts.config,
        });
      } finally {
        if (frozeIt) {
          await this.runtimeOf(id).resume(this.containerId(id));
          this.setState(id, 'running');
        }
      }
    });
  }

  /** count new sandboxes from a sandbox's filesystem (through an ephemeral snapshot). */
  async fork(id: string, count: number, req: Omit<CreateRequest, 'template'> = {}): Promise<Array<{ info?: SandboxInfo; error?: CubeboxError }>> {
    if (!Number.isInteger(count) || count < 1 || count > 16) throw invalid('count must be an integer between 1 and 16');
    const snap = await this.snapshot(id, { name: `fork-${id}-${randomId(6)}`, ephemeral: true });
    const out: Array<{ info?: SandboxInfo; error?: CubeboxError }> = [];
    for (let i = 0; i < count; i++) {
      try {
        out.push({ info: await this.create({ ...req, template: snap.id }) });
      } catch (err) {
        out.push({ error: err instanceof CubeboxError ? err : new CubeboxError('internal', errorMessage(err)) });
      }
    }
    this.collectEphemeralTemplates();
    return out;
  }

  /** Removes ephemeral templates (fork snapshots) that no sandbox uses any more. */
  private collectEphemeralTemplates(): void {
    for (const t of this.templates.list()) {
      if (!t.config.ephemeral || this.store.sandboxesUsingTemplate(t.id) > 0) continue;
      try {
        this.templates.remove(t.id);
      } catch (err) {
        this.log.warn({ template: t.name, err: errorMessage(err) }, 'could not remove an ephemeral template');
      }
    }
  }

  // ---------------------------------------------------------------- warm pool

  private poolTarget(templateName: string): number {
    return this.poolSizes[templateName] ?? 0;
  }

  /**
   * Takes a prepared sandbox of the template (everything up to envd answering is done)
   * and gives it this request's identity: metadata, env vars, token, lifecycle, TTL.
   */
  private async claimPooled(templateId: string, req: CreateRequest): Promise<SandboxInfo | undefined> {
    const candidates = this.store
      .listSandboxes()
      .filter((r) => r.state === 'pooled' && r.templateId === templateId)
      .sort((a, b) => a.createdAt - b.createdAt);
    for (const c of candidates) {
      const info = await this.locks.run(c.id, async () => {
        const row = this.store.getSandbox(c.id);
        if (!row || !allows('claim', row.state)) return undefined;
        const spec: StoredSpec = {
          ...(JSON.parse(row.spec) as StoredSpec),
          metadata: req.metadata ?? {},
          envVars: req.envVars ?? {},
          accessToken: req.secure === false ? null : randomBytes(24).toString('base64url'),
          lifecycle: normalizeLifecycle(req.lifecycle),
          extra: req.extra ?? {},
        };
        this.admit?.({ op: 'create', team: req.team ?? null, sandboxId: c.id, limits: spec.limits, diskMB: spec.diskMB, metadata: spec.metadata });
        this.setState(c.id, 'creating', { team: req.team ?? null, spec: JSON.stringify(spec) });
        try {
          await this.personalize(c.id, spec);
        } catch (err) {
          this.log.warn({ sandbox: c.id, err: errorMessage(err) }, 'a pooled sandbox could not be claimed; removing it');
          await this.teardown(c.id).catch((e) => this.setState(c.id, 'failed', { lastError: errorMessage(e) }));
          return undefined;
        }
        const startedAt = Date.now();
        const endAt = req.timeoutSec !== undefined ? startedAt + req.timeoutSec * 1000 : null;
        this.setState(c.id, 'running', { startedAt, createdAt: startedAt, endAt });
        return this.get(c.id);
      });
      if (info) return info;
    }
    return undefined;
  }

  /**
   * Deletes a template. Its pooled sandboxes are given back first (they are the manager's,
   * not a user's); sandboxes in use or child templates still refuse the delete.
   */
  async removeTemplate(ref: string): Promise<void> {
    const t = this.templates.get(ref);
    this.retiring.add(t.id);
    try {
      await this.filling?.catch(() => undefined);
      for (const r of this.store.listSandboxes()) if (r.state === 'pooled' && r.templateId === t.id) await this.delete(r.id);
      this.templates.remove(t.id);
    } finally {
      this.retiring.delete(t.id);
    }
  }

  /** Sets the warm pool sizes (template name -> count) and starts filling. */
  setPool(sizes: Record<string, number>): void {
    this.poolSizes = { ...sizes };
    this.poolConfigured = true;
    this.fillPools();
  }

  /** Brings every pool up to its size in the background, one sandbox at a time. */
  fillPools(): void {
    // only a manager that was given a pool manages pools (a short-lived CLI manager does not)
    if (this.filling || this.closed || !this.poolConfigured) return;
    this.filling = (async () => {
      // templates no longer pooled give their pooled sandboxes back
      const pooledNames = new Set(Object.keys(this.poolSizes).map((n) => this.templates.find(n)?.id));
      for (const r of this.store.listSandboxes()) {
        if (r.state === 'pooled' && !pooledNames.has(r.templateId)) await this.delete(r.id).catch(() => undefined);
      }
      for (const [name, size] of Object.entries(this.poolSizes)) {
        const template = this.templates.find(name);
        if (!template || this.retiring.has(template.id)) continue;
        while (!this.closed) {
          const pooled = this.store.listSandboxes().filter((r) => r.state === 'pooled' && r.templateId === template.id);
          // a pool made smaller gives back what it holds beyond its size
          for (const extra of pooled.slice(size)) await this.delete(extra.id).catch((e) => this.log.warn({ sandbox: extra.id, err: errorMessage(e) }, 'could not shrink the pool'));
          if (pooled.length >= size) break;
          try {
            await this.createNew(template, { template: template.id }, true);
          } catch (err) {
            this.log.warn({ template: name, err: errorMessage(err) }, 'could not prepare a pooled sandbox');
            break;
          }
        }
      }
    })().finally(() => (this.filling = undefined));
  }

  /** Gives envd what is particular to this sandbox: env vars, access token, default user and workdir. */
  private async personalize(id: string, spec: StoredSpec): Promise<void> {
    const body: Record<string, unknown> = {
      envVars: spec.envVars,
      defaultUser: spec.user,
      timestamp: new Date().toISOString(),
    };
    if (spec.accessToken) body.accessToken = spec.accessToken;
    if (spec.workdir) body.defaultWorkdir = spec.workdir;
    const socket = this.envdEndpoint(id);
    if (!socket) throw new Error(`the disk of sandbox '${id}' is not mounted`);
    const status = await envdRequest(socket, 'POST', '/init', body, spec.initSecret ? { [INIT_SECRET_HEADER]: spec.initSecret } : {});
    if (status !== 204 && status !== 200) throw new Error(`envd /init answered ${status}`);
  }

  private bundleSpec(id: string, spec: StoredSpec, rootfs: string, idMap?: { hostId: number; size: number }): BundleSpec {
    return {
      runtime: this.runtimeOf(id).name,
      hostname: id,
      rootfs,
      command: spec.agent ? envdCommand(`${SANDBOX_SUPPORT}/run/envd.sock`) : spec.command,
      env: envList({ ...BASE_ENV, ...spec.env, ...(spec.agent && spec.initSecret ? { [INIT_SECRET_ENV]: spec.initSecret } : {}) }),
      cwd: '/',
      idMap,
      limits: spec.limits,
      binds: [
        { source: spec.support, destination: SANDBOX_SUPPORT, readonly: true },
        { source: join(this.sandboxDir(id), 'disk', 'run'), destination: `${SANDBOX_SUPPORT}/run`, readonly: false },
      ],
      cgroupsPath: naming.cgroupPath(this.paths.instanceId, id),
      tiniPath: `${SANDBOX_SUPPORT}/tini`,
      nestedContainers: spec.nestedContainers === true,
    };
  }

  /**
   * The template's start command, in the background, then its readiness check until it
   * passes (the sandbox is not handed out before).
   */
  private async startTemplateCommand(id: string, spec: StoredSpec, timeoutMs = 120_000): Promise<void> {
    if (!spec.startCommand) return;
    const env = { ...BASE_ENV, ...spec.env, ...spec.envVars };
    const cid = this.containerId(id);
    const logFd = this.consoleLogPath(id);
    const start = this.runtimeOf(id).exec(cid, ['/bin/sh', '-c', `(${spec.startCommand}) >>/proc/1/fd/1 2>&1`], { env, cwd: spec.workdir, detach: true, stdio: 'ignore' });
    const code = await new Promise<number>((r) => start.on('close', (c) => r(c ?? 1)));
    if (code !== 0) throw new Error(`the template's start command could not be started (exit ${code}); see ${logFd}`);
    if (!spec.readyCommand) return;
    const until = Date.now() + timeoutMs;
    let last = -1;
    while (Date.now() < until) {
      const check = this.runtimeOf(id).exec(cid, ['/bin/sh', '-c', spec.readyCommand], { env, cwd: spec.workdir, stdio: 'ignore' });
      last = await new Promise<number>((r) => check.on('close', (c) => r(c ?? 1)));
      if (last === 0) return;
      await new Promise((r) => setTimeout(r, 200));
    }
    throw new Error(`the template's readiness check did not pass in ${timeoutMs / 1000} s (last exit ${last})`);
  }

  /** The pids budget and CPU and IO weights of all sandboxes together, on their parent cgroup. */
  private applyInstanceLimits(): void {
    applyInstanceLimits(this.cgroupMode, naming.cgroupParent(this.paths.instanceId), this.instanceLimits);
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
    const device = mountDevice(join(this.sandboxDir(id), 'disk'));
    return device === undefined ? undefined : { path: this.envdSocket(id), device };
  }

  /** The sandbox's console (tini and envd's stdout and stderr), on its own disk. */
  consoleLogPath(id: string): string {
    return join(this.sandboxDir(id), 'disk', 'console.log');
  }

  /** Waits until envd answers GET /health on its socket; a sandbox that never gets there fails. */
  private async waitForAgent(id: string, timeoutMs = 20_000): Promise<void> {
    const socket = this.envdEndpoint(id);
    if (!socket) throw new Error(`the disk of sandbox '${id}' is not mounted`);
    const until = Date.now() + timeoutMs;
    let delay = 2;
    const cg = this.cgroup(id);
    while (Date.now() < until) {
      if (existsSync(socket.path) && (await healthy(socket))) return;
      // an emptied cgroup means the sandbox died: a file read, not a runtime call, while envd starts
      if (cg.pids().length === 0) break;
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 50);
    }
    const log = tail(this.consoleLogPath(id));
    throw new Error(`envd did not become ready in the sandbox${log ? `: ${log}` : ''}`);
  }

  /**
   * Runs a command inside a running sandbox through the runtime. The caller owns the
   * returned process (its stdio and exit status).
   */
  async exec(id: string, args: string[], opts: { stdio?: StdioOptions; env?: Record<string, string>; cwd?: string; tty?: boolean; detach?: boolean } = {}): Promise<ChildProcess> {
    if (!args.length) throw invalid('exec needs a command');
    return this.locks.run(id, async () => {
      const row = this.requireRow(id);
      assertOperation('exec', id, row.state);
      const spec = JSON.parse(row.spec) as StoredSpec;
      // the runtime replaces the whole environment when any variable is given
      const env = { ...BASE_ENV, ...spec.env, ...(opts.env ?? {}) };
      return this.runtimeOf(id).exec(this.containerId(id), args, { stdio: opts.stdio, env, cwd: opts.cwd, tty: opts.tty, detach: opts.detach });
    });
  }

  /**
   * Pauses a running sandbox. With memory (default) the whole cgroup tree is frozen and
   * resumes exactly where it was; without, the processes are stopped (the filesystem stays)
   * and resume boots the sandbox again.
   */
  async pause(id: string, opts: { memory?: boolean } = {}): Promise<SandboxInfo> {
    return this.locks.run(id, () => this.pauseLocked(id, opts.memory !== false));
  }

  private async pauseLocked(id: string, memory: boolean): Promise<SandboxInfo> {
    const row = this.requireRow(id);
    assertOperation('pause', id, row.state);
    this.setState(id, 'pausing');
    this.events.emit('interrupt', id, 'paused');
    try {
      if (memory) {
        await this.runtimeOf(id).pause(this.containerId(id));
      } else {
        // recorded first: from here on, an interruption settles to a filesystem-only pause
        this.updateSpec(id, { coldPaused: true });
        await this.stopContainer(id);
      }
      this.setState(id, 'paused');
    } catch (err) {
      await this.settleFromHost(id, `pause: ${errorMessage(err)}`);
      throw new CubeboxError('internal', `pausing sandbox '${id}' failed: ${errorMessage(err)}`);
    }
    return this.get(id);
  }

  async resume(id: string, opts: { timeoutSec?: number } = {}): Promise<SandboxInfo> {
    return this.locks.run(id, () => this.resumeLocked(id, opts.timeoutSec));
  }

  private async resumeLocked(id: string, timeoutSec?: number): Promise<SandboxInfo> {
    const row = this.requireRow(id);
    assertOperation('resume', id, row.state);
    const spec = JSON.parse(row.spec) as StoredSpec;
    this.admit?.({ op: 'resume', team: row.team ?? null, sandboxId: id, limits: spec.limits, diskMB: spec.diskMB, metadata: spec.metadata });
    this.setState(id, 'resuming');
    try {
      if (spec.coldPaused) {
        await this.bootAgain(id, spec);
      } else {
        await this.runtimeOf(id).resume(this.containerId(id));
      }
      const endAt = timeoutSec !== undefined ? Date.now() + timeoutSec * 1000 : row.endAt;
      this.setState(id, 'running', { endAt });
    } catch (err) {
      await this.settleFromHost(id, `resume: ${errorMessage(err)}`);
      throw new CubeboxError('internal', `resuming sandbox '${id}' failed: ${errorMessage(err)}`);
    }
    return this.get(id);
  }

  /** Stops every process of a sandbox but keeps its filesystem (for a pause without memory). */
  private async stopContainer(id: string): Promise<void> {
    const cg = this.cgroup(id);
    await this.runtimeOf(id).forceDelete(this.containerId(id));
    if (cg.pids().length) await cg.killAll();
    if (cg.pids().length) throw new Error(`processes of sandbox '${id}' survived the kill`);
    await cg.remove();
  }

  /** Starts a cold-paused sandbox again from its bundle and filesystem: a new boot. */
  private async bootAgain(id: string, spec: StoredSpec): Promise<void> {
    const cid = this.containerId(id);
    // a new boot gets a new /init secret: whatever learnt the last one inside the sandbox cannot reuse it
    spec = { ...spec, initSecret: randomBytes(24).toString('base64url') };
    this.updateSpec(id, { initSecret: spec.initSecret });
    const rootfs = join(this.sandboxDir(id), 'rootfs');
    writeBundle(join(this.sandboxDir(id), 'bundle'), this.bundleSpec(id, spec, rootfs, this.idMapFor(this.requireRow(id).uidSlot)));
    renewBootId(join(this.sandboxDir(id), 'bundle')); // a new boot, a new boot id
    const pid = await this.runtimeOf(id).run(cid, join(this.sandboxDir(id), 'bundle'), this.consoleLogPath(id));
    this.applyInstanceLimits();
    if (spec.agent) {
      await this.waitForAgent(id);
      await this.personalize(id, spec);
    }
    await this.startTemplateCommand(id, spec);
    this.updateSpec(id, { coldPaused: false });
    this.store.updateSandbox(id, { pid });
  }

  /**
   * E2B's connect: a running sandbox only ever gets a later endAt; a paused one resumes
   * (then resumed = true). A sandbox being deleted is a conflict.
   */
  async connect(id: string, timeoutSec?: number): Promise<{ info: SandboxInfo; resumed: boolean }> {
    return this.locks.run(id, async () => {
      const row = this.requireRow(id);
      assertOperation('connect', id, row.state);
      if (row.state === 'running') {
        if (timeoutSec !== undefined) {
          const wanted = Date.now() + timeoutSec * 1000;
          if (row.endAt === null || wanted > row.endAt) this.store.updateSandbox(id, { endAt: wanted });
        }
        return { info: this.get(id), resumed: false };
      }
      return { info: await this.resumeLocked(id, timeoutSec ?? 300), resumed: true };
    });
  }

  /** Sets endAt = now + timeout (may shorten it); the reaper acts within a second of endAt. */
  async setTimeout(id: string, timeoutSec: number): Promise<SandboxInfo> {
    if (!(Number.isFinite(timeoutSec) && timeoutSec >= 0)) throw invalid(`timeout must be a number of seconds >= 0, got ${timeoutSec}`);
    return this.locks.run(id, async () => {
      const row = this.requireRow(id);
      assertOperation('setTimeout', id, row.state);
      this.store.updateSandbox(id, { endAt: Date.now() + timeoutSec * 1000 });
      return this.get(id);
    });
  }

  /** Extends a running sandbox's endAt by a duration (E2B's refreshes). */
  async refresh(id: string, durationSec: number): Promise<void> {
    if (!(Number.isFinite(durationSec) && durationSec >= 0)) throw invalid(`duration must be a number of seconds >= 0, got ${durationSec}`);
    await this.locks.run(id, async () => {
      const row = this.requireRow(id);
      assertOperation('refresh', id, row.state);
      const wanted = Date.now() + durationSec * 1000;
      if (row.endAt === null || wanted > row.endAt) this.store.updateSandbox(id, { endAt: wanted });
    });
  }

  /**
   * The TTL reaper: running sandboxes past endAt are killed, or paused when their
   * lifecycle says so. Runs under each sandbox's lock, like every other operation.
   */
  async reap(now = Date.now()): Promise<string[]> {
    const due = this.store.listSandboxes().filter((r) => r.state === 'running' && r.endAt !== null && r.endAt <= now);
    const acted: string[] = [];
    for (const r of due) {
      // a busy sandbox (an operation holds its lock) is left for the next round
      await this.locks.tryRun(r.id, async () => {
        const row = this.store.getSandbox(r.id);
        if (!row || row.state !== 'running' || row.endAt === null || row.endAt > Date.now()) return;
        const spec = JSON.parse(row.spec) as StoredSpec;
        try {
          if (spec.lifecycle.onTimeout === 'pause') await this.pauseLocked(r.id, spec.lifecycle.keepMemory);
          else await this.teardown(r.id);
          acted.push(r.id);
          this.log.info({ sandbox: r.id, action: spec.lifecycle.onTimeout }, 'sandbox reached its end of life');
        } catch (err) {
          this.log.error({ sandbox: r.id, err: errorMessage(err) }, 'the TTL reaper could not act');
        }
      });
    }
    return acted;
  }

  /** Deletes a sandbox from any state. Unknown ids (with no ledger left) are not found. */
  async delete(id: string): Promise<void> {
    if (!SANDBOX_ID_RE.test(id)) throw notFound(`sandbox '${id}' not found`);
    await this.locks.run(id, async () => {
      const row = this.store.getSandbox(id);
      if (!row && this.store.resources(id).length === 0) throw notFound(`sandbox '${id}' not found`);
      try {
        await this.teardown(id);
      } catch (err) {
        // the sandbox stays recorded (state deleting, with the error) and the reconciler retries
        const remains = this.store.resources(id).map((r) => `${r.kind} ${r.name}`);
        if (this.store.getSandbox(id)) this.store.updateSandbox(id, { lastError: `delete: ${errorMessage(err)}`, nextAttemptAt: Date.now() + 1000 });
        throw new CubeboxError('internal', `deleting sandbox '${id}' did not finish: ${errorMessage(err)}${remains.length ? `; still held: ${remains.join(', ')}` : ''}; it stays listed as deleting and is retried`);
      }
    });
  }

  private requireRow(id: string): SandboxRow {
    const row = this.store.getSandbox(id);
    if (!row) throw notFound(`sandbox '${id}' not found`);
    return row;
  }

  /** Every state change goes through here and is checked against the table (states.ts). */
  private setState(id: string, state: SandboxState, extra: Partial<SandboxRow> = {}): void {
    assertTransition(this.requireRow(id).state, state);
    this.store.updateSandbox(id, { state, stateDeadline: deadlineFor(state, Date.now()), ...extra });
  }

  /** After a failed or interrupted operation: make the stored state what the host shows. */
  private async settleFromHost(id: string, error?: string): Promise<void> {
    const row = this.store.getSandbox(id);
    if (!row) return;
    if ((JSON.parse(row.spec) as StoredSpec).coldPaused) {
      // A filesystem-only pause, or the boot of its resume, was cut short. The safe state is
      // paused, with its disk and no process: a half-booted sandbox may lack its /init.
      await this.stopContainer(id);
      this.setState(id, 'paused', error ? { lastError: error } : {});
      return;
    }
    let state: SandboxState = 'stopped';
    try {
      const st = await this.runtimeOf(id).state(this.containerId(id));
      if (st?.status === 'running') state = 'running';
      else if (st?.status === 'paused') state = 'paused';
    } catch (err) {
      state = 'failed';
      error = `${error ?? ''} state: ${errorMessage(err)}`.trim();
    }
    this.setState(id, state, error ? { lastError: error } : {});
  }

  /**
   * Reclaims everything a sandbox owns, in dependency order, then forgets it. Call under
   * the sandbox's lock. Teardown never asks anything inside the sandbox: the runtime's
   * force delete works on a frozen container, and the cgroup kill catches what it missed.
   * If processes cannot be killed the sandbox stays recorded (with the error) for a retry.
   */
  private async teardown(id: string): Promise<void> {
    const inst = this.paths.instanceId;
    if (this.store.getSandbox(id)) this.setState(id, 'deleting');
    this.events.emit('interrupt', id, 'killed'); // the proxy cuts the sandbox's open streams
    const cid = this.containerId(id);
    const cg = this.cgroup(id);
    const dir = this.sandboxDir(id);

    // the sandbox's own runtime (rule 2); an orphan has no row: every runtime with state here
    const runtimes = this.store.getSandbox(id) ? [this.runtimeOf(id)] : this.allRuntimes();
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
    this.store.forgetResource(id, 'container', cid);

    await cg.remove();
    this.store.forgetResource(id, 'cgroup', naming.cgroupPath(inst, id));

    const mounts = new Set([...mountsUnder(dir), ...this.store.resources(id).filter((r) => r.kind === 'mount').map((r) => r.name)]);
    // also anything carrying this sandbox's mount name, wherever it is mounted
    for (const m of mountTable()) if (m.source === naming.mountSource(inst, id)) mounts.add(m.mountPoint);
    // deepest first, and the disk (which holds the overlay's upper layer) after the overlay
    const isDisk = (p: string) => p === join(dir, 'disk');
    await unmountRootfs([...mounts].sort((a, b) => Number(isDisk(a)) - Number(isDisk(b)) || b.length - a.length));
    await releaseLoopDevices(dir);
    for (const m of mounts) this.store.forgetResource(id, 'mount', m);

    if (mountsUnder(dir).length) throw new Error(`mounts remain under ${dir}`);
    rmSync(dir, { recursive: true, force: true });
    this.store.deleteSandbox(id); // the row and the rest of its ledger, in one transaction
    this.events.emit('deleted', id);
    this.log.info({ sandbox: id }, 'sandbox deleted');
  }

  // ---------------------------------------------------------------- reconciler

  /**
   * Compares the store with the host and converges: adopts healthy sandboxes, resolves
   * transitional states past their deadline, finishes interrupted teardowns, and removes
   * orphans carrying this instance's naming. Never touches another instance's resources.
   */
  async reconcile(opts: { startup?: boolean } = {}): Promise<ReconcileReport> {
    if (this.reconciling) return this.reconciling;
    this.reconciling = this.reconcileOnce(opts.startup ?? false).finally(() => (this.reconciling = undefined));
    return this.reconciling;
  }

  private async reconcileOnce(startup: boolean): Promise<ReconcileReport> {
    const report: ReconcileReport = { adopted: [], skipped: [], tornDown: [], orphansRemoved: [], errors: [] };
    const now = Date.now();
    // Each sandbox on its own, a few at a time. A sandbox whose lock is held (an operation in
    // flight, or one stuck in a runtime call until its timeout) is skipped, never waited for:
    // the next pass comes back to it, and the others are handled meanwhile.
    await eachLimited(this.store.listSandboxes(), RECONCILE_CONCURRENCY, async (row) => {
      if (this.closed) return;
      const done = await this.locks.tryRun(row.id, () => this.reconcileSandbox(row.id, startup, now, report));
      if (!done.ran) report.skipped.push(row.id);
    });
    await this.removeOrphans(report);
    for (const r of this.store.listSandboxes()) if (r.state === 'running' || r.state === 'pooled') rotateConsoleLog(this.consoleLogPath(r.id));
    this.collectEphemeralTemplates();
    this.fillPools();
    return report;
  }

  /** One sandbox's reconciliation; under its lock. */
  private async reconcileSandbox(id: string, startup: boolean, now: number, report: ReconcileReport): Promise<void> {
    const r = this.store.getSandbox(id);
    if (!r) return;
    try {
      const expired = r.stateDeadline !== null && r.stateDeadline < now;
      const spec = JSON.parse(r.spec) as StoredSpec;
      if (r.state === 'deleting' || r.state === 'failed' || (r.state === 'stopped' && this.deleteStopped) || (r.state === 'creating' && (startup || expired))) {
        if (r.nextAttemptAt && r.nextAttemptAt > now && !startup) return;
        await this.teardown(r.id);
        report.tornDown.push(r.id);
      } else if (r.state === 'pausing' || r.state === 'resuming') {
        if (r.nextAttemptAt && r.nextAttemptAt > now && !startup) return;
        if (startup || expired) await this.settleFromHost(r.id, `interrupted while ${r.state}`);
      } else if (r.state === 'paused' && spec.coldPaused) {
        // paused without memory: no container by design; its disk waits for a resume
        if (startup) report.adopted.push(r.id);
      } else if (r.state === 'running' || r.state === 'paused' || r.state === 'pooled') {
        const st = await this.runtimeOf(r.id).state(this.containerId(r.id));
        const live: SandboxState = r.state === 'pooled' ? 'pooled' : 'running';
        const hostState: SandboxState = st?.status === 'running' ? live : st?.status === 'paused' ? 'paused' : 'stopped';
        if (hostState !== r.state) {
          this.log.warn({ sandbox: r.id, stored: r.state, host: hostState }, 'sandbox state differs from the host; taking the host state');
          this.setState(r.id, hostState, hostState === 'stopped' ? { lastError: 'the sandbox stopped (its main process exited or was killed)' } : {});
        }
        if (startup) report.adopted.push(r.id);
      }
    } catch (err) {
      const attempts = r.attempts + 1;
      this.store.updateSandbox(r.id, {
        attempts,
        lastError: errorMessage(err),
        nextAttemptAt: now + Math.min(2 ** attempts * 1000, 300_000),
      });
      report.errors.push(`${r.id}: ${errorMessage(err)}`);
    }
  }

  /** Host resources named for this instance that no stored sandbox owns. */
  private async removeOrphans(report: ReconcileReport): Promise<void> {
    const inst = this.paths.instanceId;
    const known = new Set(this.store.listSandboxes().map((r) => r.id));
    const prefix = `cubebox-${inst}-`;
    const candidates = new Set<string>(this.store.orphanLedgerIds());
    for (const rt of this.allRuntimes()) for (const cid of await rt.list()) if (cid.startsWith(prefix)) candidates.add(cid.slice(prefix.length));
    for (const name of listInstanceCgroups(this.cgroupMode, naming.cgroupParent(inst))) candidates.add(name);
    for (const m of mountTable()) if (m.source.startsWith(prefix)) candidates.add(m.source.slice(prefix.length));
    try {
      for (const d of readdirSync(this.paths.sandboxesDir)) candidates.add(d);
    } catch {
      /* no sandboxes dir yet */
    }
    for (const id of candidates) {
      if (known.has(id) || !SANDBOX_ID_RE.test(id)) continue;
      // a busy id is a sandbox being made right now, not an orphan
      await this.locks.tryRun(id, async () => {
        if (this.store.getSandbox(id)) return;
        try {
          await this.teardown(id);
          report.orphansRemoved.push(id);
          this.log.warn({ sandbox: id }, 'removed orphaned sandbox resources');
        } catch (err) {
          report.errors.push(`orphan ${id}: ${errorMessage(err)}`);
        }
      });
    }
  }
}

/** The last lines of a log the sandbox writes: read from its last 4 KiB only. */
/** Runs fn for every item, at most `limit` at once. */
async function eachLimited<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

function tail(file: string, lines = 5): string {
  return readLogTail(file, 4096).trim().split('\n').slice(-lines).join(' | ');
}

function envList(env: Record<string, string>): string[] {
  return Object.entries(env).map(([k, v]) => `${k}=${v}`);
}

/** Per-instance region of host ids above 2^31, so instances on one host rarely overlap. */
export function idRegionBase(instanceId: string): number {
  const region = createHash('sha256').update(instanceId).digest().readUInt32BE(0) % 63;
  return 2 ** 31 + region * ID_SLOTS * ID_BLOCK;
}

/** Requests a pooled sandbox can serve: nothing that changes how the sandbox is built. */
function poolable(req: CreateRequest): boolean {
  return !req.limits && !req.env && !req.command && req.agent !== false;
}

export function resolveLimits(template: Template, reqLimits: Partial<Limits> = {}, req: Pick<CreateRequest, 'agent' | 'command'> = {}): Limits {
  const limits: Limits = {
    memoryMB: reqLimits.memoryMB ?? template.config.memoryMB,
    cpuCount: reqLimits.cpuCount ?? template.config.cpuCount,
    pids: reqLimits.pids ?? 1024,
  };
  if (!Number.isFinite(limits.memoryMB) || limits.memoryMB < 16 || limits.memoryMB > 1024 * 1024) throw invalid(`memory must be between 16 MB and 1 TB, got ${limits.memoryMB}`);
  // envd (node) needs room of its own: below 64 MB only an agent-less sandbox makes sense
  if (limits.memoryMB < 64 && (req.agent ?? true) && !req.command) throw invalid(`memory must be at least 64 MB for a sandbox with envd, got ${limits.memoryMB}`);
  if (!Number.isFinite(limits.cpuCount) || limits.cpuCount <= 0 || limits.cpuCount > 1024) throw invalid(`cpu count must be > 0, got ${limits.cpuCount}`);
  if (!Number.isInteger(limits.pids) || limits.pids < 8 || limits.pids > 1_000_000) throw invalid(`pids limit must be an integer >= 8, got ${limits.pids}`);
  return limits;
}
