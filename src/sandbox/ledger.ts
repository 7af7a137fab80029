// The resource ledger's kinds: every host resource a sandbox holds, in the order provision
// acquires them. Each kind says how it is released (teardown walks them backwards), which
// sandboxes the host shows holding it (the reconciler's orphan search) and what of it is left
// for one sandbox (the leak checker). A new kind of host resource is one entry here, and
// provision recording it before it is made.
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { naming } from '../config.js';
import { listInstanceCgroups, SandboxCgroup } from '../runtime/cgroups.js';
import { runtimeNames } from '../runtime/registry.js';
import { loopDevicesUnder } from '../runtime/rootfs.js';
import type { HostScan, LedgerContext, LedgerKind, Leak } from './deps.js';

const inst = (x: { deps: { paths: { instanceId: string } } } | HostScan) => ('deps' in x ? x.deps.paths.instanceId : x.paths.instanceId);
const prefixOf = (instanceId: string) => `cubebox-${instanceId}-`;
/** The sandbox id in a name carrying the instance's prefix (a container id may have a suffix after '_'). */
const idIn = (name: string, prefix: string) => name.slice(prefix.length).split('_')[0]!;

/** The sandbox's directory: its bundle, disk image, mount points. Made first, removed last. */
const dir: LedgerKind = {
  kind: 'dir',
  async release(ctx, id) {
    const d = ctx.sandboxDir(id);
    // never remove through a mount: what is mounted there is someone's data
    if (ctx.deps.host.mountsUnder(d).length) throw new Error(`mounts remain under ${d}`);
    rmSync(d, { recursive: true, force: true });
  },
  async holders(ctx) {
    return entries(ctx.deps.paths.sandboxesDir);
  },
  leftovers(scan, id) {
    const d = join(scan.paths.sandboxesDir, id);
    return existsSync(d) ? [{ sandbox: id, kind: 'dir', what: d }] : [];
  },
  scanHolders(scan) {
    return entries(scan.paths.sandboxesDir);
  },
};

/**
 * Mounts: the sandbox's disk, its overlay root and views, its support view and volume views.
 * Released deepest first, the disk (which holds the overlay's upper layer) last, then the
 * loop device behind the disk image.
 */
const mount: LedgerKind = {
  kind: 'mount',
  async release(ctx, id, recorded) {
    const { host } = ctx.deps;
    const d = ctx.sandboxDir(id);
    // one read of the mount table: what is mounted under the directory, anything carrying
    // this sandbox's mount name wherever it is mounted, and the loop devices of its disks
    const source = naming.mountSource(inst(ctx), id);
    const mounts = new Set(recorded);
    const loops = new Set<string>();
    for (const m of host.mountTable()) {
      if (m.source !== source && m.mountPoint !== d && !m.mountPoint.startsWith(d + '/')) continue;
      mounts.add(m.mountPoint);
      if (m.source.startsWith('/dev/loop')) loops.add(m.source);
    }
    const isDisk = (p: string) => p === join(d, 'disk');
    await host.unmount([...mounts].sort((a, b) => Number(isDisk(a)) - Number(isDisk(b)) || b.length - a.length));
    await host.releaseLoopDevices(d, [...loops]);
  },
  async holders(ctx) {
    const prefix = prefixOf(inst(ctx));
    return ctx.deps.host
      .mountTable()
      .filter((m) => m.source.startsWith(prefix))
      .map((m) => idIn(m.source, prefix));
  },
  leftovers(scan, id) {
    const d = join(scan.paths.sandboxesDir, id);
    const source = naming.mountSource(scan.paths.instanceId, id);
    const out: Leak[] = scan.mountTable
      .filter((m) => m.source === source || m.mountPoint === d || m.mountPoint.startsWith(d + '/'))
      .map((m) => ({ sandbox: id, kind: 'mount', what: `${m.mountPoint} (${m.fsType ?? '?'} ${m.source})` }));
    for (const l of loopDevicesUnder(d)) out.push({ sandbox: id, kind: 'device', what: l });
    return out;
  },
  scanHolders(scan) {
    const prefix = prefixOf(scan.paths.instanceId);
    return scan.mountTable.filter((m) => m.source.startsWith(prefix)).map((m) => idIn(m.source, prefix));
  },
};

/** The sandbox's network slot: namespace, link, address, nft chain (its state: the network's net_slots table). */
const network: LedgerKind = {
  kind: 'network',
  async release(ctx, id) {
    await ctx.deps.net?.release(id); // nothing runs in its namespace any more
  },
  async holders(ctx) {
    return ctx.deps.net?.ownerIds() ?? [];
  },
  leftovers(scan, id) {
    const slot = scan.store?.netSlots.slotOf(id);
    return slot === undefined ? [] : [{ sandbox: id, kind: 'network', what: `network slot ${slot}` }];
  },
  scanHolders(scan) {
    return scan.store?.netSlots.ownerIds() ?? [];
  },
};

/** The sandbox's cgroup (every hierarchy on a hybrid host). Emptied by the container's release. */
const cgroup: LedgerKind = {
  kind: 'cgroup',
  async release(ctx, id) {
    await ctx.cgroup(id).remove();
  },
  async holders(ctx) {
    return ctx.deps.host.listInstanceCgroups(naming.cgroupParent(inst(ctx)));
  },
  leftovers(scan, id) {
    const cg = new SandboxCgroup(scan.cgroupMode, naming.cgroupPath(scan.paths.instanceId, id));
    return cg.existing().map((d) => ({ sandbox: id, kind: 'cgroup', what: d }));
  },
  scanHolders(scan) {
    return listInstanceCgroups(scan.cgroupMode, naming.cgroupParent(scan.paths.instanceId));
  },
};

/**
 * The container and every process in the sandbox's cgroup. Teardown never asks anything inside
 * the sandbox: the runtime's force delete works on a frozen container, and the cgroup kill
 * catches what it missed. A sandbox's own runtime deletes it; an orphan (no row) every runtime
 * with state here.
 */
const container: LedgerKind = {
  kind: 'container',
  async release(ctx, id) {
    const { store, runtimes } = ctx.deps;
    const row = store.getSandbox(id);
    const all = row ? [runtimes.byName(row.runtime)] : runtimes.all();
    const cid = ctx.containerId(id);
    const cg = ctx.cgroup(id);
    let runtimeError: unknown;
    for (const rt of all) {
      try {
        await rt.forceDelete(cid);
      } catch (err) {
        runtimeError = err;
      }
    }
    if (cg.pids().length) await cg.killAll();
    if (cg.pids().length) throw new Error(`processes of sandbox '${id}' survived the kill: ${cg.pids().join(', ')}`);
    if (runtimeError) for (const rt of all) await rt.forceDelete(cid); // again, now that nothing runs; throws if it still fails
  },
  async holders(ctx) {
    const prefix = prefixOf(inst(ctx));
    const ids: string[] = [];
    for (const rt of ctx.deps.runtimes.all()) for (const cid of await rt.list()) if (cid.startsWith(prefix)) ids.push(idIn(cid, prefix));
    return ids;
  },
  leftovers(scan, id) {
    const out: Leak[] = [];
    for (const pid of processesInCgroup(naming.cgroupPath(scan.paths.instanceId, id)))
      out.push({ sandbox: id, kind: 'process', what: `pid ${pid} (${comm(pid)})` });
    const cid = naming.containerId(scan.paths.instanceId, id);
    for (const rt of runtimeNames()) {
      const root = join(scan.paths.runRoot, rt);
      for (const e of entries(root)) if (e.startsWith(cid)) out.push({ sandbox: id, kind: 'runtime-state', what: join(root, e) });
    }
    return out;
  },
  scanHolders(scan) {
    const prefix = prefixOf(scan.paths.instanceId);
    const ids: string[] = [];
    for (const rt of runtimeNames()) for (const e of entries(join(scan.paths.runRoot, rt))) if (e.startsWith(prefix)) ids.push(idIn(e, prefix));
    const parent = naming.cgroupParent(scan.paths.instanceId);
    const inCgroup = new RegExp(`/${parent}/([a-z0-9]+)`);
    for (const pid of processesInCgroup(`/${parent}/`)) {
      const m = readCgroupLine(pid)?.match(inCgroup);
      if (m) ids.push(m[1]!);
    }
    return ids;
  },
};

/** Every kind, in the order provision acquires them (teardown releases them backwards). */
export const LEDGER: readonly LedgerKind[] = [dir, mount, network, cgroup, container];

/**
 * Releases the given kinds of a sandbox's resources, newest kind first, and (with forget)
 * removes their ledger rows once each kind is released. A kind that fails stops the walk:
 * what is left stays recorded for the retry.
 */
export async function releaseResources(
  ctx: LedgerContext,
  id: string,
  kinds: readonly LedgerKind[],
  opts: { forget: boolean } = { forget: true },
): Promise<void> {
  const { store } = ctx.deps;
  const recorded = store.resources(id);
  for (const k of [...kinds].reverse()) {
    const names = recorded.filter((r) => r.kind === k.kind).map((r) => r.name);
    await k.release(ctx, id, names.reverse());
    if (opts.forget) for (const n of names) store.forgetResource(id, k.kind, n);
  }
}

function entries(dirPath: string): string[] {
  try {
    return readdirSync(dirPath);
  } catch {
    return []; // not made yet
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
  const under = cgPath.endsWith('/') ? cgPath : cgPath + '/';
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    const text = readCgroupLine(Number(e));
    if (!text) continue;
    for (const line of text.split('\n')) {
      const p = line.slice(line.indexOf(':', line.indexOf(':') + 1) + 1);
      if (p === cgPath || p.startsWith(under)) {
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
