// Sandbox networking: a network slot per sandbox (its own namespace, a veth pair to the host,
// a /31 from the subnet, an nft chain with its sets), pre-made so that a create pays almost
// nothing for it, recorded in the net_slots ledger before anything is made (rule 7), and
// reclaimed on release and by reconcile() whatever state a crash left it in.
import type { Logger } from 'pino';
import { instanceBlock } from './block.js';
import { AddressPlan, NEVER_REACHABLE, PRIVATE_NETWORKS, contains, formatCidr, parseCidr, parseIp, parsePool, subtractCidrs, type Cidr } from './cidr.js';
import { ensureForwarding, flushConntrack, hostNetworks, netnsExists, netnsPath, nft, nftJson, tableChains } from './host.js';
import { isOpenPolicy, type EgressPolicy } from './policy.js';
import { ResolvedSets } from './resolved.js';
import type { EgressCounts } from './egress-proxy.js';
import type { NetSlotRepo, NetSlotState } from '../store/store.js';
import { CubeboxError } from '../util/errors.js';
import { installTable, policyScript, proxiedScript, removeTable, slotNames, tableObjects, type ProxyPorts } from './rules.js';
import { addressLink, makeSlot, removeSlots, removeStrays, repairSlot, slotProblems, type SlotPlace } from './slot-host.js';
import { Coalescer } from '../util/batch.js';

export { blockFile } from './block.js';

export const DEFAULT_SUBNET = '10.200.0.0/16';
/** Connections one sandbox may have tracked at once, by default. */
export const DEFAULT_MAX_FLOWS = 4096;

export interface NetworkConfig {
  instanceId: string;
  /** The instance's data directory: its block of the pool is kept there across restarts. */
  dataDir: string;
  subnet?: string;
  /** Pre-made free slots to keep (default 4). */
  warmSlots?: number;
  /** Private networks sandboxes may reach: CIDRs carved out of the blocked private ranges and host networks. */
  allowPrivate?: string[];
  /** Connections one sandbox may have tracked at once (default DEFAULT_MAX_FLOWS). */
  maxFlows?: number;
  log: Logger;
}

/** A sandbox's network: where its namespace is and what its addresses are. */
export interface NetLease {
  slot: number;
  netns: string;
  address: string;
  gateway: string;
  hostLink: string;
}

export interface NetCounters {
  egressBytes: number;
  egressPackets: number;
  deniedPackets: number;
}

export class SandboxNetwork {
  /** This instance's block of the pool (set by start()). */
  plan!: AddressPlan;
  readonly pool: Cidr;
  readonly table: string;
  readonly linkPrefix: string;
  private readonly warm: number;
  private dnsPort = 1; // until the forwarder listens, DNS from sandboxes goes nowhere (fails closed)
  private refilling: Promise<void> | undefined;
  private closed = false;
  /** Slots this process is making or releasing right now (reconcile leaves them alone). */
  private readonly busy = new Set<number>();
  private readonly resolved: ResolvedSets;
  private readonly proxied: ResolvedSets;
  private proxyPorts: ProxyPorts | undefined;
  /** The blocked networks the table has now (refreshed when the host's networks change). */
  private blockedNow = '';
  /** Slots being removed at the same time share one `ip` and one `nft` process (see Coalescer). */
  private readonly remover = new Coalescer<SlotPlace>((ps) => removeSlots(ps, () => this.objects()));
  /** The egress proxy's CA certificate (PEM), which sandboxes trust, and its counts; undefined without the proxy. */
  egress: { caCert: string; counts: EgressCounts } | undefined;

  constructor(
    private readonly slots: NetSlotRepo,
    private readonly cfg: NetworkConfig,
  ) {
    this.pool = parsePool(cfg.subnet ?? DEFAULT_SUBNET);
    this.table = `cubebox_${cfg.instanceId}`;
    this.linkPrefix = `c${cfg.instanceId}`;
    this.warm = cfg.warmSlots ?? 4;
    const flows = cfg.maxFlows ?? DEFAULT_MAX_FLOWS;
    if (!Number.isInteger(flows) || flows < 1 || flows > 1_000_000)
      throw new Error(`the flow limit per sandbox must be an integer from 1 to 1000000, got ${cfg.maxFlows}`);
    this.resolved = new ResolvedSets(this.table, cfg.log);
    this.proxied = new ResolvedSets(this.table, cfg.log, proxiedScript);
  }

  netnsName(slot: number): string {
    return `cubebox-${this.cfg.instanceId}-${slot}`;
  }

  linkName(slot: number): string {
    return `${this.linkPrefix}${slot}`;
  }

  private place(slot: number): SlotPlace {
    return {
      slot,
      table: this.table,
      netns: this.netnsName(slot),
      link: this.linkName(slot),
      host: this.plan.hostAddress(slot),
      addr: this.plan.sandboxAddress(slot),
    };
  }

  private leaseOf(slot: number): NetLease {
    return {
      slot,
      netns: netnsPath(this.netnsName(slot)),
      address: this.plan.sandboxAddress(slot),
      gateway: this.plan.hostAddress(slot),
      hostLink: this.linkName(slot),
    };
  }

  /**
   * Takes this instance's block of the pool (the one it had, or the first that no host route
   * touches: several instances share a host), turns on forwarding and installs the table.
   */
  async start(): Promise<void> {
    this.plan = new AddressPlan(await instanceBlock(this.pool, this.cfg.dataDir, this.cfg.instanceId, this.linkPrefix));
    if (ensureForwarding()) this.cfg.log.info('turned on IPv4 forwarding (net.ipv4.ip_forward=1) for sandbox networking');
    await this.install();
  }

  /**
   * What no sandbox reaches: the fixed ranges, the pool, and the private ranges and the host's
   * own networks (its addresses, connected subnets and gateways) less what --allow-private names.
   */
  private async blocked(): Promise<string[]> {
    const open = [...PRIVATE_NETWORKS, ...(await hostNetworks(this.linkPrefix, this.pool))];
    return [...NEVER_REACHABLE, formatCidr(this.pool), ...subtractCidrs(open, this.cfg.allowPrivate ?? [])];
  }

  private async install(): Promise<void> {
    const blocked = await this.blocked();
    await installTable({
      table: this.table,
      linkPrefix: this.linkPrefix,
      subnet: formatCidr(this.plan.subnet),
      dnsPort: this.dnsPort,
      blocked,
      maxFlows: this.cfg.maxFlows ?? DEFAULT_MAX_FLOWS,
      proxyPorts: this.proxyPorts,
    });
    this.blockedNow = [...blocked].sort().join(',');
  }

  /** Points 80/443 of proxied addresses (and tunnelled TCP) at the egress proxy's ports (the base chains are rebuilt at once). */
  async setProxyPorts(ports: ProxyPorts): Promise<void> {
    this.proxyPorts = ports;
    await this.install();
  }

  /** Whether no sandbox may ever reach this address (what the forward chain's blocked set holds). */
  isBlocked(address: string): boolean {
    const ip = parseIp(address);
    return ip === undefined || this.blockedNow.split(',').some((c) => contains(parseCidr(c)!, ip));
  }

  /** Rebuilds the base chains if the host's networks changed (an interface or address came) or the table went. */
  private async refreshTable(objects: Set<string>): Promise<boolean> {
    const now = [...(await this.blocked())].sort().join(',');
    if (now === this.blockedNow && objects.has('chain:from_sandbox')) return false;
    await this.install();
    return true;
  }

  /** Points sandbox DNS at the forwarder's port (the base chains are rebuilt at once). */
  async setDnsPort(port: number): Promise<void> {
    this.dnsPort = port;
    await this.install();
  }

  lease(sandboxId: string): NetLease | undefined {
    const slot = this.slots.slotOf(sandboxId, true);
    return slot === undefined ? undefined : this.leaseOf(slot);
  }

  /** The sandbox that has this address, if any. */
  sandboxAt(address: string): string | undefined {
    const slot = this.plan.slotOf(address);
    if (slot === undefined) return undefined;
    return this.slots.holderOf(slot);
  }

  /**
   * Gives a sandbox a slot: a pre-made one, or one made now (recorded under the sandbox's id
   * first, so that a crash in the middle is reclaimed with the sandbox). Then its policy.
   */
  async attach(sandboxId: string, policy: EgressPolicy): Promise<NetLease> {
    const existing = this.lease(sandboxId);
    if (existing) {
      // a boot again (cold resume): nothing runs in the slot, whatever of it went is made again
      if (slotProblems(this.place(existing.slot), await this.chains()).length) {
        const repaired = await this.repair(sandboxId, policy, undefined);
        this.cfg.log.warn({ sandbox: sandboxId, repaired }, 'repaired the network slot of a sandbox');
      }
      await addressLink(this.place(existing.slot));
      await this.setPolicy(sandboxId, policy);
      return existing;
    }
    let slot = this.slots.claimFree(sandboxId);
    if (slot === undefined || !netnsExists(this.netnsName(slot))) {
      if (slot !== undefined) await this.releaseSlot(slot);
      slot = this.reserve(sandboxId);
      await this.make(slot);
      this.slots.setState(slot, 'used');
    }
    if (!isOpenPolicy(policy)) await this.applyPolicy(slot, policy); // a new slot's sets are empty: the open policy
    this.scheduleRefill();
    return this.leaseOf(slot);
  }

  async setPolicy(sandboxId: string, policy: EgressPolicy): Promise<void> {
    const l = this.lease(sandboxId);
    if (!l) throw new Error(`sandbox '${sandboxId}' has no network`);
    await this.applyPolicy(l.slot, policy);
  }

  private async applyPolicy(slot: number, policy: EgressPolicy): Promise<void> {
    this.resolved.forget(slot);
    this.proxied.forget(slot);
    await nft(policyScript(this.table, slot, policy));
  }

  /**
   * Lets a sandbox reach addresses the forwarder resolved for it from an allowed name (batched,
   * see resolved.ts); or, `proxied`, sends its 80/443 to them through the egress proxy.
   */
  async allowResolved(sandboxId: string, addresses: string[], ttlSec: number, proxied = false): Promise<void> {
    const l = this.lease(sandboxId);
    if (l && addresses.length) await (proxied ? this.proxied : this.resolved).add(l.slot, addresses, Math.max(30, Math.min(ttlSec, 3600)));
  }

  /** What of a sandbox's slot is missing on the host (namespace, link, nft chain: given chains()). */
  problems(sandboxId: string, chains?: Set<string>): string[] {
    const l = this.lease(sandboxId);
    return l ? slotProblems(this.place(l.slot), chains) : ['network slot'];
  }

  /** The table's chains (a short listing), and all its objects (tableObjects). */
  chains = (): Promise<Set<string>> => tableChains(this.table);
  objects = async (): Promise<Set<string>> => tableObjects(await this.listTable()).objects;

  /**
   * Makes a sandbox's slot whole (see repairSlot): `pid` is a process of the sandbox, if it
   * has any (its namespace then is the one it lives in). The base chains first, if they went.
   */
  async repair(sandboxId: string, policy: EgressPolicy, pid: number | undefined): Promise<string[]> {
    const l = this.lease(sandboxId);
    if (!l) throw new Error(`sandbox '${sandboxId}' has no network slot`);
    let objects = await this.objects();
    const repaired: string[] = [];
    if (!objects.has('chain:from_sandbox')) {
      await this.install();
      repaired.push(`nft table ${this.table}`);
      objects = await this.objects();
    }
    const slot = await repairSlot(this.place(l.slot), policy, pid, objects);
    if (slot.length) {
      this.resolved.forget(l.slot); // a new set holds none of them
      this.proxied.forget(l.slot);
    }
    return [...repaired, ...slot];
  }

  /** Reclaims a sandbox's slot, if it has one. Idempotent. */
  async release(sandboxId: string): Promise<void> {
    const slot = this.slots.slotOf(sandboxId);
    if (slot !== undefined) await this.releaseSlot(slot);
    this.scheduleRefill();
  }

  /** Takes the lowest unused slot number, recorded (state making) before anything exists. */
  private reserve(sandboxId: string | null): number {
    const slot = this.slots.reserve(sandboxId, this.plan.slots);
    if (slot === undefined)
      throw new CubeboxError('unavailable', `no free address in ${formatCidr(this.plan.subnet)}: ${this.plan.slots} sandboxes have one`, {
        retryAfterSec: 5,
      });
    return slot;
  }

  /** Makes a recorded slot's namespace, link, addresses, route and nft chain (closed until a policy is set). */
  private async make(slot: number): Promise<void> {
    this.busy.add(slot);
    try {
      await makeSlot(this.place(slot));
    } finally {
      this.busy.delete(slot);
    }
  }

  private async releaseSlot(slot: number): Promise<void> {
    this.busy.add(slot);
    try {
      this.slots.setState(slot, 'releasing');
      this.resolved.forget(slot);
      this.proxied.forget(slot);
      await this.remover.run(this.place(slot));
      await flushConntrack(this.plan.sandboxAddress(slot));
      this.slots.remove(slot);
    } finally {
      this.busy.delete(slot);
    }
  }

  private async listTable(): Promise<unknown> {
    try {
      return await nftJson(`list table inet ${this.table}`);
    } catch {
      return {};
    }
  }

  /** Keeps `warm` free slots made, one at a time, in the background. */
  scheduleRefill(): void {
    if (this.closed || this.refilling) return;
    this.refilling = (async () => {
      try {
        while (!this.closed && this.count('free') < this.warm) {
          const slot = this.reserve(null);
          try {
            await this.make(slot);
            this.slots.setState(slot, 'free', 'making');
          } catch (err) {
            await this.releaseSlot(slot).catch(() => undefined);
            throw err;
          }
        }
      } catch (err) {
        this.cfg.log.warn({ err: (err as Error).message }, 'making network slots failed');
      } finally {
        this.refilling = undefined;
      }
    })();
  }

  private count(state: NetSlotState): number {
    return this.slots.count(state);
  }

  /**
   * Makes the host match the ledger for slots without a sandbox: those cut short while being
   * made or released, free ones whose namespace vanished (a reboot), and namespaces, links and
   * nft chains of this instance that no row names. Returns what it removed.
   */
  async reconcile(): Promise<string[]> {
    const removed: string[] = [];
    if (await this.refreshTable(await this.objects())) this.cfg.log.info("rebuilt the base chains: the host's networks changed or the table went");
    // slots with an owner are reclaimed by their sandbox's teardown (see ownerIds)
    for (const r of this.slots.list('unowned')) {
      if (this.busy.has(r.slot)) continue;
      if (r.state !== 'free' || !netnsExists(this.netnsName(r.slot))) {
        await this.releaseSlot(r.slot);
        removed.push(`net slot ${r.slot}`);
      }
    }
    const known = new Set(this.slots.list().map((r) => r.slot));
    const stray = (slot: number) => !known.has(slot) && !this.busy.has(slot);
    removed.push(...(await removeStrays({ instanceId: this.cfg.instanceId, table: this.table, linkPrefix: this.linkPrefix }, stray, await this.objects())));
    this.scheduleRefill();
    return removed;
  }

  /** Sandboxes that hold a slot (the reconciler tears down those that no longer exist). */
  ownerIds(): string[] {
    return this.slots.ownerIds();
  }

  /** Counters of one sandbox's link (since its slot was made), or undefined. */
  async counters(sandboxId: string): Promise<NetCounters | undefined> {
    const l = this.lease(sandboxId);
    if (!l) return undefined;
    const { counters } = tableObjects(await this.listTable());
    const n = slotNames(l.slot);
    const tx = counters.get(n.tx);
    return { egressBytes: tx?.bytes ?? 0, egressPackets: tx?.packets ?? 0, deniedPackets: counters.get(n.denied)?.packets ?? 0 };
  }

  /** Totals over every sandbox since the table was made (for Prometheus). */
  async totals(): Promise<{ egressBytes: number; deniedPackets: number }> {
    const { counters } = tableObjects(await this.listTable());
    return { egressBytes: counters.get('egress_bytes')?.bytes ?? 0, deniedPackets: counters.get('denied')?.packets ?? 0 };
  }

  /**
   * Stops making slots and removes the free ones; with no sandbox left holding a slot, the
   * table goes too. A running sandbox keeps its slot and its rules across a restart.
   */
  async close(): Promise<void> {
    this.closed = true;
    await this.refilling;
    for (const r of this.slots.list('unused')) {
      await this.releaseSlot(r.slot).catch((err: Error) => this.cfg.log.warn({ slot: r.slot, err: err.message }, 'removing a free network slot failed'));
    }
    if (this.count('used') === 0) await removeTable(this.table);
  }
}
