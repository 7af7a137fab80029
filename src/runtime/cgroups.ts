import { existsSync, readdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { mountTable } from './mountinfo.js';

export type CgroupMode = 'v1' | 'v2' | 'hybrid';
const ROOT = '/sys/fs/cgroup';

/** cgroup v2 only, v1 only, or hybrid (v1 controllers plus a controller-less cgroup2 mount). */
export function detectCgroupMode(): CgroupMode {
  const all = mountTable();
  const root = all.find((m) => m.mountPoint === ROOT);
  if (root?.fsType === 'cgroup2') return 'v2';
  const hasUnified = all.some((m) => m.fsType === 'cgroup2' && m.mountPoint.startsWith(ROOT + '/'));
  return hasUnified ? 'hybrid' : 'v1';
}

let hierarchiesSeen: string[] | undefined;

/**
 * The v1 hierarchies mounted on this host, as directory names under /sys/fs/cgroup. Read from
 * the mount table once: they do not change while the service runs, and the table grows with
 * every sandbox (reading it for each sandbox's cgroup made the manager's work quadratic).
 */
export function v1Hierarchies(): string[] {
  hierarchiesSeen ??= mountTable()
    .filter((m) => m.fsType === 'cgroup' && m.mountPoint.startsWith(ROOT + '/'))
    .map((m) => m.mountPoint.slice(ROOT.length + 1));
  return hierarchiesSeen;
}

/**
 * The cgroup directories of one sandbox as the runtime creates them from its
 * cgroupsPath: one per v1 hierarchy, or one in the v2 tree.
 */
export class SandboxCgroup {
  constructor(
    readonly mode: CgroupMode,
    readonly relPath: string, // e.g. /cubebox-<inst>/<sbx>
    private readonly hierarchies: string[] = mode === 'v2' ? [] : v1Hierarchies(),
  ) {}

  dirs(): string[] {
    if (this.mode === 'v2') return [join(ROOT, this.relPath)];
    const dirs = this.hierarchies.map((h) => join(ROOT, h, this.relPath));
    // on hybrid hosts a runtime may also create the sandbox's cgroup in the controller-less cgroup2 tree
    if (this.mode === 'hybrid') dirs.push(join(ROOT, 'unified', this.relPath));
    return dirs;
  }

  existing(): string[] {
    return this.dirs().filter((d) => existsSync(d));
  }

  /** The directory that decides process membership and freezing. */
  private controlDir(): string | undefined {
    if (this.mode === 'v2') return join(ROOT, this.relPath);
    const freezer = this.hierarchies.find((h) => h === 'freezer');
    return freezer ? join(ROOT, freezer, this.relPath) : this.dirs()[0];
  }

  /** PIDs of every process in the sandbox's cgroup (all hierarchies), as of now. */
  pids(): number[] {
    const seen = new Set<number>();
    for (const dir of this.existing()) {
      for (const p of readList(join(dir, 'cgroup.procs'))) seen.add(p);
    }
    return [...seen];
  }

  memoryLimitFile(): string | undefined {
    if (this.mode === 'v2') return join(ROOT, this.relPath, 'memory.max');
    return this.hierarchies.includes('memory') ? join(ROOT, 'memory', this.relPath, 'memory.limit_in_bytes') : undefined;
  }

  /**
   * Kills every process in the cgroup tree. v2: cgroup.kill, atomic and works on a frozen
   * tree. v1: freeze first so that no listed process can exit and have its PID reused,
   * SIGKILL the listed PIDs (proven ours by membership while frozen), then thaw: v1-frozen
   * tasks only die once thawed.
   */
  async killAll(): Promise<void> {
    const dir = this.controlDir();
    if (!dir || !existsSync(dir)) return;
    if (this.mode === 'v2') {
      const killFile = join(dir, 'cgroup.kill');
      if (existsSync(killFile)) {
        writeFileSync(killFile, '1');
        await this.waitEmpty(2000);
        return;
      }
    }
    const freezer = this.mode === 'v2' ? undefined : this.existing().find((d) => d.includes('/freezer/'));
    if (freezer) await setFrozen(freezer, true);
    try {
      for (const pid of this.pids()) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* already gone */
        }
      }
    } finally {
      if (freezer) await setFrozen(freezer, false);
    }
    await this.waitEmpty(2000);
  }

  private async waitEmpty(timeoutMs: number): Promise<void> {
    const until = Date.now() + timeoutMs;
    while (this.pids().length > 0 && Date.now() < until) await sleep(10);
  }

  /**
   * Removes the sandbox's cgroup directories (deepest first) and then the instance
   * parent when it is empty. Throws when a directory cannot go (processes remain).
   */
  async remove(): Promise<void> {
    for (const dir of this.dirs()) {
      await removeCgroupDir(dir);
      const parent = join(dir, '..');
      try {
        rmdirSync(parent); // only succeeds when no other sandbox of this instance remains
      } catch {
        /* in use by other sandboxes, or gone */
      }
    }
  }
}

/** rmdir of a cgroup directory and its child cgroups, deepest first (cgroupfs refuses rm -r). */
async function removeCgroupDir(dir: string): Promise<void> {
  let entries: string[] = [];
  try {
    entries = readdirSync(dir, { withFileTypes: true })
      .filter((e) => e.isDirectory())
      .map((e) => e.name);
  } catch {
    return;
  }
  for (const e of entries) await removeCgroupDir(join(dir, e));
  for (let attempt = 0; ; attempt++) {
    try {
      rmdirSync(dir);
      return;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return;
      // EBUSY right after a kill: the kernel releases the last tasks asynchronously.
      if (attempt >= 100) throw new Error(`cannot remove cgroup ${dir}: ${code}`);
      await sleep(10);
    }
  }
}

async function setFrozen(dir: string, frozen: boolean): Promise<void> {
  const state = join(dir, 'freezer.state');
  if (!existsSync(state)) return;
  writeFileSync(state, frozen ? 'FROZEN' : 'THAWED');
  if (!frozen) return;
  for (let i = 0; i < 200; i++) {
    if (readFileSync(state, 'utf8').trim() === 'FROZEN') return;
    await sleep(5);
  }
}

function readList(file: string): number[] {
  try {
    return readFileSync(file, 'utf8').split('\n').filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/** Names of the sandbox cgroups under an instance's parent, for the reconciler. */
export function listInstanceCgroups(mode: CgroupMode, parent: string): string[] {
  const bases = mode === 'v2' ? [ROOT] : v1Hierarchies().map((h) => join(ROOT, h));
  if (mode === 'hybrid') bases.push(join(ROOT, 'unified'));
  const names = new Set<string>();
  for (const b of bases) {
    try {
      for (const e of readdirSync(join(b, parent), { withFileTypes: true })) if (e.isDirectory()) names.add(e.name);
    } catch {
      /* no parent in this hierarchy */
    }
  }
  return [...names];
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** What all of an instance's sandboxes together may use, set on their common parent cgroup. */
export interface InstanceLimits {
  /** Processes of every sandbox together: many fork bombs cannot exhaust the host's pid_max. */
  pids: number;
  /**
   * CPU weight of the sandboxes together against the host's other cgroups (v1 cpu.shares,
   * default 1024): under contention the host's own work comes first. A weight rather than a
   * quota, since v1 refuses a child quota above its parent's; each sandbox has its quota.
   */
  cpuShares: number;
  /** Block-IO weight of the sandboxes together against the host's other cgroups (BFQ, 1-1000; the default is 100). */
  ioWeight: number;
}

/** Defaults from the host: half of pid_max (unless a pids budget is given), half the default CPU and IO weights. */
export function defaultInstanceLimits(pidsBudget?: number): InstanceLimits {
  let pidMax = 32768;
  try {
    pidMax = Number(readFileSync('/proc/sys/kernel/pid_max', 'utf8').trim()) || pidMax;
  } catch {
    /* the kernel's own default */
  }
  const budget = pidsBudget ?? 0;
  return { pids: Number.isInteger(budget) && budget > 0 ? budget : Math.floor(pidMax / 2), cpuShares: 512, ioWeight: 50 };
}

/** The most CPUs one sandbox gets: 90% of the host's, so that the host always keeps some. */
export function sandboxCpuCeiling(hostCpus = availableParallelism()): number {
  return Math.max(0.1, Math.floor(hostCpus * 90) / 100);
}

/**
 * Sets the instance-wide limits on the sandboxes' parent cgroup (the runtime creates it
 * with the first sandbox). Idempotent and cheap: called after every start. Controllers this
 * host lacks are skipped; returns the files that hold the limits.
 */
export function applyInstanceLimits(mode: CgroupMode, parent: string, limits: InstanceLimits): string[] {
  const writes: [string, string][] =
    mode === 'v2'
      ? [
          [join(ROOT, parent, 'pids.max'), String(limits.pids)],
          // cpu.weight is 1-10000 with 100 the default: the same ratio as shares/1024
          [join(ROOT, parent, 'cpu.weight'), String(Math.max(1, Math.round((limits.cpuShares / 1024) * 100)))],
          [join(ROOT, parent, 'io.bfq.weight'), String(limits.ioWeight)],
        ]
      : [
          [join(ROOT, 'pids', parent, 'pids.max'), String(limits.pids)],
          [join(ROOT, 'cpu', parent, 'cpu.shares'), String(limits.cpuShares)],
          [join(ROOT, 'blkio', parent, 'blkio.bfq.weight'), String(limits.ioWeight)],
        ];
  const set: string[] = [];
  for (const [file, value] of writes) {
    try {
      if (readFileSync(file, 'utf8').trim().split(/\s+/).pop() !== value) writeFileSync(file, value);
      set.push(file);
    } catch {
      /* no such controller here, or no parent yet */
    }
  }
  return set;
}
