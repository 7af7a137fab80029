import { naming, type Paths } from '../config.js';
import { detectCgroupMode, SandboxCgroup, type CgroupMode } from '../runtime/cgroups.js';
import { mountTable } from '../runtime/rootfs.js';
import type { Store } from '../store/store.js';
import { networkLeaks } from '../network/leaks.js';
import { volumeLeaks } from '../volume/volumes.js';
import type { HostScan, Leak, LedgerKind } from './deps.js';
import { LEDGER } from './ledger.js';

export type { Leak } from './deps.js';
export { processesInCgroup } from './ledger.js';

/**
 * Finds what remains on the host of sandboxes of one instance: each kind of the resource
 * ledger (ledger.ts) says what of it the host holds, then the ledger and store rows. Used by
 * `cubebox doctor --leaks` and by every test suite after it deletes what it created.
 */
export class LeakChecker {
  private readonly mode: CgroupMode;

  constructor(
    private readonly paths: Paths,
    private readonly store?: Store,
    private readonly kinds: readonly LedgerKind[] = LEDGER,
  ) {
    this.mode = detectCgroupMode();
  }

  /** The host as it is now (the mount table read once per check). */
  private scan(): HostScan {
    return { paths: this.paths, cgroupMode: this.mode, store: this.store, mountTable: mountTable() };
  }

  /** Everything left of one sandbox (expected: nothing, after a delete). */
  sandbox(id: string, scan = this.scan()): Leak[] {
    const leaks = [...this.kinds].reverse().flatMap((k) => k.leftovers(scan, id));
    if (this.store) {
      const n = this.store.countRows(id);
      if (n.sandboxes) leaks.push({ sandbox: id, kind: 'row', what: 'sandboxes row' });
      if (n.resources) {
        const rows = this.store.resources(id).map((r) => `${r.kind} ${r.name}`);
        leaks.push({ sandbox: id, kind: 'ledger', what: `${n.resources} ledger row(s): ${rows.join(', ')}` });
      }
    }
    return leaks;
  }

  /**
   * Leftovers of this instance that no stored sandbox owns. With `known` given, ids in
   * it are not leaks (the caller's store lists them); without it, every sandbox counts.
   */
  instance(known: Set<string> = new Set()): Leak[] {
    const scan = this.scan();
    const ids = new Set<string>();
    for (const k of this.kinds) for (const id of k.scanHolders(scan)) ids.add(id);
    if (this.store) {
      for (const r of this.store.listSandboxes()) ids.add(r.id);
      for (const id of this.store.orphanLedgerIds()) ids.add(id);
    }
    const leaks: Leak[] = [];
    for (const id of ids) if (!known.has(id)) leaks.push(...this.sandbox(id, scan));
    // volume disks that no ready volume owns (every volume's, without a store)
    for (const v of volumeLeaks(this.paths, this.store)) leaks.push({ sandbox: v.volume, kind: v.kind, what: v.what });
    // network slots, namespaces, links, nft chains and flow entries that no live sandbox owns
    for (const n of networkLeaks(this.paths.instanceId, this.paths.dataDir, this.store?.netSlots, known))
      leaks.push({ sandbox: '-', kind: 'network', what: `${n.kind} ${n.what}` });
    if (known.size === 0) {
      // with no sandboxes left, the instance's parent cgroups must be gone too
      const parent = new SandboxCgroup(this.mode, `/${naming.cgroupParent(this.paths.instanceId)}`);
      for (const d of parent.existing()) leaks.push({ sandbox: '-', kind: 'cgroup', what: d });
    }
    return leaks;
  }
}

export function formatLeaks(leaks: Leak[]): string {
  return leaks.map((l) => `${l.sandbox}  ${l.kind.padEnd(13)} ${l.what}`).join('\n');
}
