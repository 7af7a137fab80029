import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { naming, type Paths } from '../config.js';
import { detectCgroupMode, listInstanceCgroups, SandboxCgroup, type CgroupMode } from '../runtime/cgroups.js';
import { runtimeNames } from '../runtime/registry.js';
import { loopDevicesUnder, mountTable } from '../runtime/rootfs.js';
import type { Store } from '../store/store.js';
import { networkLeaks } from '../network/leaks.js';
import { volumeLeaks } from '../volume/volumes.js';

export interface Leak {
  sandbox: string;
  kind: 'process' | 'cgroup' | 'mount' | 'device' | 'dir' | 'runtime-state' | 'ledger' | 'row' | 'network';
  what: string;
}

/**
 * Finds what remains on the host of sandboxes of one instance: processes, cgroups,
 * mounts, directories, runtime state, ledger and store rows. Used by `cubebox doctor
 * --leaks` and by every test suite after it deletes what it created.
 */
export class LeakChecker {
  private readonly mode: CgroupMode;

  constructor(
    private readonly paths: Paths,
    private readonly store?: Store,
  ) {
    this.mode = detectCgroupMode();
  }

  /** Everything left of one sandbox (expected: nothing, after a delete). */
  sandbox(id: string): Leak[] {
    const inst = this.paths.instanceId;
    const leaks: Leak[] = [];
    const cgPath = naming.cgroupPath(inst, id);
    const cg = new SandboxCgroup(this.mode, cgPath);
    for (const pid of processesInCgroup(cgPath)) leaks.push({ sandbox: id, kind: 'process', what: `pid ${pid} (${comm(pid)})` });
    for (const d of cg.existing()) leaks.push({ sandbox: id, kind: 'cgroup', what: d });
    const dir = join(this.paths.sandboxesDir, id);
    for (const m of mountTable()) {
      if (m.source === naming.mountSource(inst, id) || m.mountPoint === dir || m.mountPoint.startsWith(dir + '/')) {
        leaks.push({ sandbox: id, kind: 'mount', what: `${m.mountPoint} (${m.fsType} ${m.source})` });
      }
    }
    for (const l of loopDevicesUnder(dir)) leaks.push({ sandbox: id, kind: 'device', what: l });
    if (existsSync(dir)) leaks.push({ sandbox: id, kind: 'dir', what: dir });
    for (const rt of runtimeNames()) {
      const root = join(this.paths.runRoot, rt);
      if (!existsSync(root)) continue;
      for (const e of readdirSync(root)) {
        if (e.startsWith(naming.containerId(inst, id))) leaks.push({ sandbox: id, kind: 'runtime-state', what: join(root, e) });
      }
    }
    if (this.store) {
      const n = this.store.countRows(id);
      if (n.sandboxes) leaks.push({ sandbox: id, kind: 'row', what: 'sandboxes row' });
      if (n.resources) leaks.push({ sandbox: id, kind: 'ledger', what: `${n.resources} ledger row(s)` });
      const slot = this.store.netSlots.slotOf(id);
      if (slot !== undefined) leaks.push({ sandbox: id, kind: 'network', what: `network slot ${slot}` });
    }
    return leaks;
  }

  /**
   * Leftovers of this instance that no stored sandbox owns. With `known` given, ids in
   * it are not leaks (the caller's store lists them); without it, every sandbox counts.
   */
  instance(known: Set<string> = new Set()): Leak[] {
    const inst = this.paths.instanceId;
    const ids = new Set<string>();
    for (const name of listInstanceCgroups(this.mode, naming.cgroupParent(inst))) ids.add(name);
    const prefix = `cubebox-${inst}-`;
    for (const m of mountTable()) if (m.source.startsWith(prefix)) ids.add(m.source.slice(prefix.length));
    if (existsSync(this.paths.sandboxesDir)) for (const d of readdirSync(this.paths.sandboxesDir)) ids.add(d);
    for (const rt of runtimeNames()) {
      const root = join(this.paths.runRoot, rt);
      if (existsSync(root)) for (const e of readdirSync(root)) if (e.startsWith(prefix)) ids.add(e.slice(prefix.length).split('_')[0]!);
    }
    for (const pid of processesInCgroup(`/${naming.cgroupParent(inst)}/`)) {
      const m = readCgroupLine(pid)?.match(new RegExp(`/${naming.cgroupParent(inst)}/([a-z0-9]+)`));
      if (m) ids.add(m[1]!);
    }
    if (this.store) {
      for (const r of this.store.listSandboxes()) ids.add(r.id);
      for (const id of this.store.orphanLedgerIds()) ids.add(id);
    }
    const leaks: Leak[] = [];
    for (const id of ids) if (!known.has(id)) leaks.push(...this.sandbox(id));
    // volume disks that no ready volume owns (every volume's, without a store)
    for (const v of volumeLeaks(this.paths, this.store)) leaks.push({ sandbox: v.volume, kind: v.kind, what: v.what });
    // network slots, namespaces, links, nft chains and flow entries that no live sandbox owns
    for (const n of networkLeaks(inst, this.paths.dataDir, this.store?.netSlots, known))
      leaks.push({ sandbox: '-', kind: 'network', what: `${n.kind} ${n.what}` });
    if (known.size === 0) {
      // with no sandboxes left, the instance's parent cgroups must be gone too
      const parent = new SandboxCgroup(this.mode, `/${naming.cgroupParent(inst)}`);
      for (const d of parent.existing()) leaks.push({ sandbox: '-', kind: 'cgroup', what: d });
    }
    return leaks;
  }
}

function readCgroupLine(pid: number): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/cgroup`, 'utf8');
  } catch {
    return undefined;
  }
}

/** PIDs of processes whose cgroup (in any hierarchy) is at or below the given path. */
export function processesInCgroup(cgPath: string): number[] {
  const out: number[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    const text = readCgroupLine(Number(e));
    if (!text) continue;
    for (const line of text.split('\n')) {
      const p = line.slice(line.indexOf(':', line.indexOf(':') + 1) + 1);
      if (p === cgPath || p.startsWith(cgPath.endsWith('/') ? cgPath : cgPath + '/')) {
        out.push(Number(e));
        break;
      }
    }
  }
  return out;
}

function comm(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return '?';
  }
}

export function formatLeaks(leaks: Leak[]): string {
  return leaks.map((l) => `${l.sandbox}  ${l.kind.padEnd(13)} ${l.what}`).join('\n');
}
