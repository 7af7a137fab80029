import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { Paths } from '../config.js';
import { applyInstanceLimits, defaultInstanceLimits, listInstanceCgroups, SandboxCgroup, type CgroupMode } from '../runtime/cgroups.js';
import { OciRuntime, type SandboxRuntime } from '../runtime/oci-runtime.js';
import { isRuntimeName, type RuntimeName } from '../runtime/registry.js';
import { mountDisk, mountExistingDisk, mountRootfs, mountsUnder, mountTable, releaseLoopDevices, unmountRootfs, type RootfsLayout } from '../runtime/rootfs.js';
import type { SandboxNetwork } from '../network/network.js';
import type { ManagerLock, ResourceKind, Store } from '../store/store.js';
import type { TemplateStore } from '../template/store.js';
import { mountDevice } from '../util/safe-socket.js';

/** How configuration names a runtime (the manager checks it before it makes anything). */
export { parseRuntimeName } from '../runtime/registry.js';

/**
 * What the lifecycle core is given rather than reaching for: the store, the runtimes, the
 * host operations, the template store, a clock and a logger. Production builds the real ones
 * (open.ts, from explicit options); unit tests give a fake runtime and fake host operations.
 */

/** Time as the lifecycle sees it: deadlines, TTLs, backoff. Waiting loops use real time. */
export interface Clock {
  now(): number;
}

export const systemClock: Clock = { now: () => Date.now() };

/** One sandbox's cgroup: what teardown and metrics need of it. */
export interface CgroupHandle {
  /** Every process in the sandbox's cgroup tree. */
  pids(): number[];
  /** Kills the whole tree atomically (v2 cgroup.kill; v1 freeze, kill, thaw): never a stored PID. */
  killAll(): Promise<void>;
  remove(): Promise<void>;
  /** The cgroup directories that exist. */
  existing(): string[];
}

/** A mount as the host's mount table shows it. */
export interface HostMount {
  mountPoint: string;
  source: string;
  fsType?: string;
}

/** The host mechanisms a sandbox is made of: cgroups, disks, mounts and loop devices. */
export interface HostOps {
  readonly cgroupMode: CgroupMode;
  cgroup(relPath: string): CgroupHandle;
  /** Names of the sandbox cgroups under this instance's parent cgroup. */
  listInstanceCgroups(parent: string): string[];
  /** The pids budget and CPU and IO weights of all sandboxes together, on their parent cgroup. */
  applyInstanceLimits(parent: string): void;
  /** The sandbox's own loop-mounted disk (holds the writable layer). */
  mountDisk(layout: RootfsLayout, sizeMB: number, emptyImagesDir: string): Promise<void>;
  /** The sandbox's existing disk image mounted again (after a host reboot, or an unmount from outside). */
  mountExistingDisk(layout: RootfsLayout): Promise<void>;
  /** The idmapped layer views and the overlay root. */
  mountRootfs(layout: RootfsLayout, layers: string[], idMap?: { hostId: number; size: number }): Promise<void>;
  /** Unmounts in the order given; throws if any remains mounted. */
  unmount(mountPoints: string[]): Promise<void>;
  /** Waits until no loop device is bound to a file under dir (detaching what stays); `devices`: the ones its disks used, if known. */
  releaseLoopDevices(dir: string, devices?: string[]): Promise<void>;
  /** Mount points at or below dir, deepest first. */
  mountsUnder(dir: string): string[];
  mountTable(): HostMount[];
  /** The device of dir when it is a mount point of its own (the sandbox's disk), else undefined. */
  mountDevice(dir: string): number | undefined;
}

/** The host operations of this machine, over src/runtime/rootfs.ts and cgroups.ts. */
export function realHostOps(cgroupMode: CgroupMode, pidsBudget?: number): HostOps {
  const limits = defaultInstanceLimits(pidsBudget);
  return {
    cgroupMode,
    cgroup: (relPath) => new SandboxCgroup(cgroupMode, relPath),
    listInstanceCgroups: (parent) => listInstanceCgroups(cgroupMode, parent),
    applyInstanceLimits: (parent) => void applyInstanceLimits(cgroupMode, parent, limits),
    mountDisk,
    mountExistingDisk,
    mountRootfs,
    unmount: unmountRootfs,
    releaseLoopDevices,
    mountsUnder,
    mountTable,
    mountDevice,
  };
}

/** Finds the runtime that drives a sandbox: each is driven by the one it was created with. */
export interface RuntimeResolver {
  /** The runtime new sandboxes get. */
  readonly default: SandboxRuntime;
  /** The runtime of that name, with this instance's state root. */
  byName(name: string): SandboxRuntime;
  /** Every runtime that has (or may have) state in this instance: for orphans, which have no row. */
  all(): SandboxRuntime[];
}

/** The OCI runtimes, each with its state root under runRoot (made on first use). */
export function ociRuntimes(
  defaultName: RuntimeName,
  runRoot: string,
  cgroupMode: CgroupMode,
  opts: { binaries?: Record<RuntimeName, string>; callTimeoutMs?: number } = {},
): RuntimeResolver {
  const made = new Map<string, SandboxRuntime>();
  const byName = (name: string): SandboxRuntime => {
    let rt = made.get(name);
    if (!rt) {
      if (!isRuntimeName(name)) throw new Error(`unknown runtime '${name}'`);
      rt = new OciRuntime(name, join(runRoot, name), cgroupMode, { binary: opts.binaries?.[name], callTimeoutMs: opts.callTimeoutMs });
      made.set(name, rt);
    }
    return rt;
  };
  const resolver: RuntimeResolver = {
    default: byName(defaultName),
    byName,
    all() {
      const names = new Set<string>([defaultName]);
      try {
        for (const e of readdirSync(runRoot)) if (isRuntimeName(e)) names.add(e);
      } catch {
        /* no state root yet */
      }
      return [...names].map(byName);
    },
  };
  return resolver;
}

/** Everything a SandboxManager is built from. */
export interface ManagerDeps {
  paths: Paths;
  store: Store;
  runtimes: RuntimeResolver;
  host: HostOps;
  templates: TemplateStore;
  clock: Clock;
  log: Logger;
  /** Host directory mounted read-only at /.cubebox in every new sandbox. */
  supportDir: string;
  /** The data directory's lock, released by close() (none in tests that own their directory). */
  lock?: ManagerLock;
  /** Sandbox networking (a namespace, link and policy each); none: loopback only. */
  net?: SandboxNetwork;
  /** The kinds of host resource a sandbox holds, in the order they are acquired (default: ledger.ts). */
  ledger?: readonly LedgerKind[];
}

/** What a ledger kind's release and holder search work with (the lifecycle core is one). */
export interface LedgerContext {
  readonly deps: Pick<ManagerDeps, 'paths' | 'store' | 'runtimes' | 'host' | 'net'>;
  sandboxDir(id: string): string;
  containerId(id: string): string;
  cgroup(id: string): CgroupHandle;
}

/** Something left on the host of a sandbox: what the leak checker reports. */
export interface Leak {
  sandbox: string;
  kind: 'process' | 'cgroup' | 'mount' | 'device' | 'dir' | 'runtime-state' | 'ledger' | 'row' | 'network';
  what: string;
}

/** The host as the leak checker reads it: directly, without a running service. */
export interface HostScan {
  paths: Paths;
  cgroupMode: CgroupMode;
  store?: Store;
  mountTable: HostMount[];
}

/**
 * One kind of host resource a sandbox can hold. Each is recorded in the sandbox's ledger
 * before it is made; teardown releases the kinds in the reverse of their acquisition order;
 * the reconciler's orphan search and the leak checker ask the same kinds what the host holds.
 */
export interface LedgerKind {
  readonly kind: ResourceKind;
  /**
   * Releases everything of this kind the sandbox holds: the recorded names (newest first) and
   * whatever the host shows under the sandbox's names (a crash between record and make, an
   * orphan). Idempotent; throws if something stays.
   */
  release(ctx: LedgerContext, id: string, recorded: string[]): Promise<void>;
  /** Ids of this instance's sandboxes the host shows holding this kind (the orphan search). */
  holders(ctx: LedgerContext): Promise<Iterable<string>>;
  /** What of this kind the host holds for one sandbox, read directly (the leak checker). */
  leftovers(scan: HostScan, id: string): Leak[];
  /** Ids that hold this kind, read directly (the leak checker). */
  scanHolders(scan: HostScan): Iterable<string>;
}
