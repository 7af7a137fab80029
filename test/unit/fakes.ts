import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import pino from 'pino';
import { openPaths, type Paths } from '../../src/config.js';
import type { RuntimeName } from '../../src/runtime/registry.js';
import type { ContainerState, SandboxRuntime } from '../../src/runtime/oci-runtime.js';
import type { RootfsLayout } from '../../src/runtime/rootfs.js';
import type { CgroupHandle, Clock, HostMount, HostOps, LedgerKind, RuntimeResolver } from '../../src/sandbox/deps.js';
import { SandboxManager } from '../../src/sandbox/manager.js';
import { Store } from '../../src/store/store.js';
import type { CreateLimits } from '../../src/sandbox/types.js';
import { TemplateStore } from '../../src/template/store.js';

/**
 * Fakes for the lifecycle unit tests: a runtime and host operations that keep their state in
 * memory and record every call, so that a test can assert what teardown touched and that no
 * PID was ever a kill target. The store is the real one, on a temporary file.
 */

type Op = 'run' | 'pause' | 'resume' | 'forceDelete' | 'state';

/** The host: sandbox cgroups with their processes, and the mount table. */
export class FakeHost implements HostOps {
  readonly cgroupMode = 'v2' as const;
  /** cgroup relPath -> pids in it. */
  readonly cgroups = new Map<string, number[]>();
  readonly mounts = new Map<string, string>(); // mount point -> source
  /** Every kill: always a cgroup path, never a PID (rule 3). */
  readonly kills: string[] = [];
  /** cgroups whose processes survive a kill (an unkillable D-state process). */
  readonly unkillable = new Set<string>();
  /** cgroups with a process the runtime's force delete misses (only the cgroup kill takes it). */
  readonly runtimeMisses = new Set<string>();
  /** Called before each resource is created: the ledger must already hold it (rule 7). */
  onCreate: (what: string, path: string) => void = () => undefined;
  failMountRootfs: Error | undefined;
  private nextPid = 100_000;

  spawnIn(relPath: string): number {
    const pid = this.nextPid++;
    this.cgroups.set(relPath, [...(this.cgroups.get(relPath) ?? []), pid]);
    return pid;
  }

  cgroup(relPath: string): CgroupHandle {
    return {
      pids: () => this.cgroups.get(relPath) ?? [],
      killAll: async () => {
        this.kills.push(`cgroup ${relPath}`);
        if (!this.unkillable.has(relPath) && this.cgroups.has(relPath)) this.cgroups.set(relPath, []);
      },
      remove: async () => {
        if ((this.cgroups.get(relPath) ?? []).length) throw new Error(`cgroup ${relPath} busy`);
        this.cgroups.delete(relPath);
      },
      existing: () => (this.cgroups.has(relPath) ? [relPath] : []),
    };
  }

  listInstanceCgroups(parent: string): string[] {
    return [...this.cgroups.keys()].filter((p) => p.startsWith(`/${parent}/`)).map((p) => basename(p));
  }

  applyInstanceLimits(): void {}

  async mountDisk(layout: RootfsLayout): Promise<void> {
    this.onCreate('mount', layout.disk);
    mkdirSync(layout.disk, { recursive: true });
    this.mounts.set(layout.disk, layout.name);
  }

  async mountExistingDisk(layout: RootfsLayout): Promise<void> {
    await this.mountDisk(layout);
  }

  async mountRootfs(layout: RootfsLayout): Promise<void> {
    if (this.failMountRootfs) throw this.failMountRootfs;
    for (const p of [...layout.views, layout.target]) {
      this.onCreate('mount', p);
      mkdirSync(p, { recursive: true });
      this.mounts.set(p, layout.name);
    }
  }

  async unmount(points: string[]): Promise<void> {
    for (const p of points) this.mounts.delete(p);
  }

  async releaseLoopDevices(): Promise<void> {}

  mountsUnder(dir: string): string[] {
    return [...this.mounts.keys()].filter((m) => m === dir || m.startsWith(dir + '/')).sort((a, b) => b.length - a.length);
  }

  mountTable(): HostMount[] {
    return [...this.mounts].map(([mountPoint, source]) => ({ mountPoint, source }));
  }

  mountDevice(dir: string): number | undefined {
    return this.mounts.has(dir) ? 42 : undefined;
  }
}

/** A runtime whose containers are records; `run` puts a process in the sandbox's cgroup. */
export class FakeRuntime implements SandboxRuntime {
  readonly userNamespaces = false;
  readonly containers = new Map<string, ContainerState>();
  readonly calls: string[] = [];
  /** Make the next calls of an operation fail. */
  readonly failing = new Map<Op, Error>();
  /** Make an operation wait until the returned release function is called. */
  private readonly gates = new Map<Op, Promise<void>>();
  cgroupOf: (cid: string) => string = () => '';

  constructor(
    readonly name: RuntimeName,
    private readonly host: FakeHost,
  ) {}

  gate(op: Op): () => void {
    let release!: () => void;
    this.gates.set(op, new Promise<void>((r) => (release = r)));
    return () => {
      this.gates.delete(op);
      release();
    };
  }

  private async enter(op: Op, cid: string): Promise<void> {
    this.calls.push(`${op} ${cid}`);
    await this.gates.get(op);
    const err = this.failing.get(op);
    if (err) throw err;
  }

  async run(cid: string): Promise<number> {
    await this.enter('run', cid);
    const pid = this.host.spawnIn(this.cgroupOf(cid));
    this.containers.set(cid, { status: 'running', pid });
    return pid;
  }

  exec(): ChildProcess {
    return spawn(process.execPath, ['-e', ''], { stdio: 'ignore' });
  }

  async pause(cid: string): Promise<void> {
    await this.enter('pause', cid);
    const c = this.containers.get(cid);
    if (!c) throw new Error(`container ${cid} does not exist`);
    c.status = 'paused';
  }

  async resume(cid: string): Promise<void> {
    await this.enter('resume', cid);
    const c = this.containers.get(cid);
    if (!c) throw new Error(`container ${cid} does not exist`);
    c.status = 'running';
  }

  async state(cid: string): Promise<ContainerState | null> {
    await this.enter('state', cid);
    return this.containers.get(cid) ?? null;
  }

  /** Like `crun delete --force`: kills the container's processes (by its cgroup) and forgets it. */
  async forceDelete(cid: string): Promise<void> {
    await this.enter('forceDelete', cid);
    const cg = this.cgroupOf(cid);
    if (!this.host.unkillable.has(cg) && !this.host.runtimeMisses.has(cg) && this.host.cgroups.has(cg)) this.host.cgroups.set(cg, []);
    this.containers.delete(cid);
  }

  async list(): Promise<string[]> {
    return [...this.containers.keys()];
  }
}

export class FakeClock implements Clock {
  constructor(public t = 1_000_000) {}
  now(): number {
    return this.t;
  }
  advance(ms: number): void {
    this.t += ms;
  }
}

export interface Rig {
  m: SandboxManager;
  host: FakeHost;
  runtime: FakeRuntime;
  clock: FakeClock;
  paths: Paths;
  store: Store;
  /** Opens a second manager on the same data directory and host: a restart after a crash. */
  restart(): Promise<Rig>;
  cleanup(): Promise<void>;
}

/** A manager over fakes, a real store in a temporary directory, and a template `t`. */
export async function rig(
  shared?: { dir: string; host: FakeHost; runtime: FakeRuntime; clock: FakeClock },
  creates?: CreateLimits,
  ledger?: readonly LedgerKind[],
): Promise<Rig> {
  const dir = shared?.dir ?? mkdtempSync(join(tmpdir(), 'cubebox-unit-'));
  const paths = { ...openPaths(dir), runRoot: join(dir, 'run') };
  mkdirSync(paths.sandboxesDir, { recursive: true });
  const host = shared?.host ?? new FakeHost();
  const runtime = shared?.runtime ?? new FakeRuntime('crun', host);
  runtime.cgroupOf = (cid) => `/cubebox-${paths.instanceId}/${cid.slice(`cubebox-${paths.instanceId}-`.length)}`;
  const clock = shared?.clock ?? new FakeClock();
  const store = new Store(paths.db);
  const runtimes: RuntimeResolver = {
    default: runtime,
    byName: (n) => {
      if (n !== runtime.name) throw new Error(`unknown runtime '${n}'`);
      return runtime;
    },
    all: () => [runtime],
  };
  const templates = new TemplateStore(paths, store);
  if (!templates.find('t')) store.insertTemplate({ id: 'tmpl0000000000000001', name: 't', layers: [], config: '{}', createdAt: clock.now() });
  const m = new SandboxManager(
    { paths, store, runtimes, host, templates, clock, log: pino({ level: 'silent' }), supportDir: join(dir, 'support'), ledger },
    creates,
  );
  const self: Rig = {
    m,
    host,
    runtime,
    clock,
    paths,
    store,
    restart: async () => {
      await m.close();
      const next = await rig({ dir, host, runtime, clock }, creates, ledger);
      await next.m.start();
      return next;
    },
    cleanup: async () => {
      await m.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return self;
}
