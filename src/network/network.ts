// Sandbox networking: a network slot per sandbox (its own namespace, a veth pair to the host,
// a /31 from the subnet, an nft chain with its sets), pre-made so that a create pays almost
// nothing for it, recorded in the net_slots ledger before anything is made (rule 7), and
// reclaimed on release and by reconcile() whatever state a crash left it in.
import type Database from 'better-sqlite3';
import type { Logger } from 'pino';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { AddressPlan, INSTANCE_BLOCK_PREFIX, NEVER_REACHABLE, PRIVATE_NETWORKS, formatCidr, overlaps, parseCidr, parsePool, type Cidr } from './cidr.js';
import {
  deleteLink,
  deleteNetns,
  ensureForwarding,
  flushConntrack,
  hostRoutes,
  ipBatch,
  listLinks,
  listNetns,
  netnsExists,
  netnsPath,
  nft,
  nftJson,
} from './host.js';
import { isOpenPolicy, type EgressPolicy } from './policy.js';
import { CubeboxError } from '../util/errors.js';
import { addSlotScript, installTable, policyScript, removeSlotScript, removeTable, resolvedScript, slotNames, tableObjects } from './rules.js';

export const DEFAULT_SUBNET = '10.200.0.0/16';

export interface NetworkConfig {
  instanceId: string;
  /** The instance's data directory: its block of the pool is kept there across restarts. */
  dataDir: string;
  subnet?: string;
  /** Pre-made free slots to keep (default 4). */
  warmSlots?: number;
  /** Private networks sandboxes may reach (CIDRs carved out of the blocked private ranges: exact entries only). */
  allowPrivate?: string[];
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

type SlotState = 'making' | 'free' | 'used' | 'releasing';
interface SlotRow {
  slot: number;
  state: SlotState;
  sandbox_id: string | null;
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

  constructor(
    private readonly db: Database.Database,
    private readonly cfg: NetworkConfig,
  ) {
    this.pool = parsePool(cfg.subnet ?? DEFAULT_SUBNET);
    this.table = `cubebox_${cfg.instanceId}`;
    this.linkPrefix = `c${cfg.instanceId}`;
    this.warm = cfg.warmSlots ?? 4;
  }

  netnsName(slot: number): string {
    return `cubebox-${this.cfg.instanceId}-${slot}`;
  }

  linkName(slot: number): string {
    return `${this.linkPrefix}${slot}`;
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
    const routes = (await hostRoutes()).filter((r) => !r.dev.startsWith(this.linkPrefix));
    const pool = formatCidr(this.pool);
    for (const r of routes) {
      const c = parseCidr(r.dst);
      // a route inside the pool is another instance's sandbox; one around or across it is the host's network
      if (c && overlaps(c, this.pool) && c.prefix < this.pool.prefix)
        throw new Error(`the sandbox subnet ${pool} overlaps the host's route to ${r.dst}: choose another with --subnet`);
    }
    this.plan = new AddressPlan(
      chooseBlock(
        this.pool,
        this.cfg.dataDir,
        this.cfg.instanceId,
        routes.map((r) => r.dst),
      ),
    );
    if (ensureForwarding()) this.cfg.log.info('turned on IPv4 forwarding (net.ipv4.ip_forward=1) for sandbox networking');
    await this.install();
  }

  private blocked(): string[] {
    const allowed = new Set(this.cfg.allowPrivate ?? []);
    return [...NEVER_REACHABLE, ...PRIVATE_NETWORKS.filter((p) => !allowed.has(p)), formatCidr(this.pool)];
  }

  private install(): Promise<void> {
    return installTable({
      table: this.table,
      linkPrefix: this.linkPrefix,
      subnet: formatCidr(this.plan.subnet),
      dnsPort: this.dnsPort,
      blocked: this.blocked(),
    });
  }

  /** Points sandbox DNS at the forwarder's port (the base chains are rebuilt at once). */
  async setDnsPort(port: number): Promise<void> {
    this.dnsPort = port;
    await this.install();
  }

  lease(sandboxId: string): NetLease | undefined {
    const r = this.db.prepare("SELECT slot FROM net_slots WHERE sandbox_id = ? AND state = 'used'").get(sandboxId) as { slot: number } | undefined;
    return r && this.leaseOf(r.slot);
  }

  /** The sandbox that has this address, if any. */
  sandboxAt(address: string): string | undefined {
    const slot = this.plan.slotOf(address);
    if (slot === undefined) return undefined;
    const r = this.db.prepare("SELECT sandbox_id FROM net_slots WHERE slot = ? AND state = 'used'").get(slot) as { sandbox_id: string } | undefined;
    return r?.sandbox_id;
  }

  /**
   * Gives a sandbox a slot: a pre-made one, or one made now (recorded under the sandbox's id
   * first, so that a crash in the middle is reclaimed with the sandbox). Then its policy.
   */
  async attach(sandboxId: string, policy: EgressPolicy): Promise<NetLease> {
    const existing = this.lease(sandboxId);
    if (existing) {
      await this.setPolicy(sandboxId, policy);
      return existing;
    }
    const free = this.db.transaction(() => {
      const r = this.db.prepare("SELECT slot FROM net_slots WHERE state = 'free' ORDER BY slot LIMIT 1").get() as { slot: number } | undefined;
      if (r) this.db.prepare("UPDATE net_slots SET state = 'used', sandbox_id = ? WHERE slot = ?").run(sandboxId, r.slot);
      return r?.slot;
    })();
    let slot = free;
    if (slot === undefined || !netnsExists(this.netnsName(slot))) {
      if (slot !== undefined) await this.releaseSlot(slot);
      slot = this.reserve(sandboxId);
      await this.make(slot);
      this.db.prepare("UPDATE net_slots SET state = 'used' WHERE slot = ?").run(slot);
    }
    if (!isOpenPolicy(policy)) await nft(policyScript(this.table, slot, policy)); // a new slot's sets are empty: the open policy
    this.scheduleRefill();
    return this.leaseOf(slot);
  }

  async setPolicy(sandboxId: string, policy: EgressPolicy): Promise<void> {
    const l = this.lease(sandboxId);
    if (!l) throw new Error(`sandbox '${sandboxId}' has no network`);
    await nft(policyScript(this.table, l.slot, policy));
  }

  /** Lets a sandbox reach addresses the forwarder resolved for it from an allowed name. */
  async allowResolved(sandboxId: string, addresses: string[], ttlSec: number): Promise<void> {
    const l = this.lease(sandboxId);
    if (l && addresses.length) await nft(resolvedScript(this.table, l.slot, addresses, Math.max(30, Math.min(ttlSec, 3600))));
  }

  /** Reclaims a sandbox's slot, if it has one. Idempotent. */
  async release(sandboxId: string): Promise<void> {
    const r = this.db.prepare('SELECT slot FROM net_slots WHERE sandbox_id = ?').get(sandboxId) as { slot: number } | undefined;
    if (r) await this.releaseSlot(r.slot);
    this.scheduleRefill();
  }

  /** Takes the lowest unused slot number, recorded (state making) before anything exists. */
  private reserve(sandboxId: string | null): number {
    return this.db.transaction(() => {
      const used = new Set((this.db.prepare('SELECT slot FROM net_slots').all() as { slot: number }[]).map((r) => r.slot));
      let slot = 0;
      while (used.has(slot)) slot++;
      if (slot >= this.plan.slots)
        throw new CubeboxError('unavailable', `no free address in ${formatCidr(this.plan.subnet)}: ${this.plan.slots} sandboxes have one`, {
          retryAfterSec: 5,
        });
      this.db.prepare("INSERT INTO net_slots (slot, state, sandbox_id, created_at) VALUES (?, 'making', ?, ?)").run(slot, sandboxId, Date.now());
      return slot;
    })();
  }

  /** Makes a recorded slot's namespace, link, addresses, route and nft chain (closed until a policy is set). */
  private async make(slot: number): Promise<void> {
    this.busy.add(slot);
    try {
      await this.makeNow(slot);
    } finally {
      this.busy.delete(slot);
    }
  }

  private async makeNow(slot: number): Promise<void> {
    const ns = this.netnsName(slot);
    const link = this.linkName(slot);
    const host = this.plan.hostAddress(slot);
    const addr = this.plan.sandboxAddress(slot);
    await ipBatch([`netns add ${ns}`, `link add ${link} type veth peer name eth0 netns ${ns}`, `addr add ${host}/31 dev ${link}`, `link set ${link} up`]);
    await ipBatch(['link set lo up', `addr add ${addr}/31 dev eth0`, 'link set eth0 up', `route add default via ${host}`], ns);
    await nft(addSlotScript(this.table, slot, link));
  }

  private async releaseSlot(slot: number): Promise<void> {
    this.busy.add(slot);
    try {
      await this.releaseNow(slot);
    } finally {
      this.busy.delete(slot);
    }
  }

  private async releaseNow(slot: number): Promise<void> {
    this.db.prepare("UPDATE net_slots SET state = 'releasing' WHERE slot = ?").run(slot);
    await deleteNetns(this.netnsName(slot));
    await deleteLink(this.linkName(slot));
    // every object at once; if some are missing (a crash while making or releasing), only those that exist
    const link = this.linkName(slot);
    const all = new Set([
      `element:${link}`,
      ...Object.entries(slotNames(slot)).map(([k, v]) => `${k === 'chain' ? 'chain' : k === 'tx' || k === 'denied' ? 'counter' : 'set'}:${v}`),
    ]);
    await nft(removeSlotScript(this.table, slot, link, all)).catch(async () => {
      const script = removeSlotScript(this.table, slot, link, tableObjects(await this.listTable()).objects);
      if (script) await nft(script);
    });
    await flushConntrack(this.plan.sandboxAddress(slot));
    this.db.prepare('DELETE FROM net_slots WHERE slot = ?').run(slot);
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
            this.db.prepare("UPDATE net_slots SET state = 'free' WHERE slot = ? AND state = 'making'").run(slot);
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

  private count(state: SlotState): number {
    return (this.db.prepare('SELECT count(*) AS n FROM net_slots WHERE state = ?').get(state) as { n: number }).n;
  }

  /**
   * Makes the host match the ledger for slots without a sandbox: those cut short while being
   * made or released, free ones whose namespace vanished (a reboot), and namespaces, links and
   * nft chains of this instance that no row names. Returns what it removed.
   */
  async reconcile(): Promise<string[]> {
    const removed: string[] = [];
    // slots with an owner are reclaimed by their sandbox's teardown (see ownerIds)
    for (const r of this.db.prepare('SELECT slot, state, sandbox_id FROM net_slots WHERE sandbox_id IS NULL').all() as SlotRow[]) {
      if (this.busy.has(r.slot)) continue;
      if (r.state !== 'free' || !netnsExists(this.netnsName(r.slot))) {
        await this.releaseSlot(r.slot);
        removed.push(`net slot ${r.slot}`);
      }
    }
    const known = new Set((this.db.prepare('SELECT slot FROM net_slots').all() as { slot: number }[]).map((r) => r.slot));
    const nsPrefix = `cubebox-${this.cfg.instanceId}-`;
    for (const ns of listNetns()) {
      const slot = ns.startsWith(nsPrefix) ? Number(ns.slice(nsPrefix.length)) : NaN;
      if (Number.isInteger(slot) && !known.has(slot) && !this.busy.has(slot)) {
        await deleteNetns(ns);
        removed.push(`netns ${ns}`);
      }
    }
    for (const link of listLinks()) {
      const slot = link.startsWith(this.linkPrefix) ? Number(link.slice(this.linkPrefix.length)) : NaN;
      if (Number.isInteger(slot) && !known.has(slot) && !this.busy.has(slot)) {
        await deleteLink(link);
        removed.push(`link ${link}`);
      }
    }
    const { objects } = tableObjects(await this.listTable());
    for (const o of objects) {
      const m = /^chain:s(\d+)$/.exec(o);
      if (m && !known.has(Number(m[1])) && !this.busy.has(Number(m[1]))) {
        const slot = Number(m[1]);
        await nft(removeSlotScript(this.table, slot, this.linkName(slot), objects));
        removed.push(`nft chain s${slot}`);
      }
    }
    this.scheduleRefill();
    return removed;
  }

  /** Sandboxes that hold a slot (the reconciler tears down those that no longer exist). */
  ownerIds(): string[] {
    return (this.db.prepare('SELECT sandbox_id FROM net_slots WHERE sandbox_id IS NOT NULL').all() as { sandbox_id: string }[]).map((r) => r.sandbox_id);
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
    for (const r of this.db.prepare("SELECT slot FROM net_slots WHERE state <> 'used'").all() as { slot: number }[]) {
      await this.releaseSlot(r.slot).catch((err: Error) => this.cfg.log.warn({ slot: r.slot, err: err.message }, 'removing a free network slot failed'));
    }
    if (this.count('used') === 0) await removeTable(this.table);
  }
}

/** Where an instance keeps its block of the pool. */
export function blockFile(dataDir: string): string {
  return join(dataDir, 'network-block');
}

/**
 * This instance's block: the one recorded in its data directory if it is still inside the
 * pool, else the first free one from a place its id picks (instances rarely race for one).
 */
function chooseBlock(pool: Cidr, dataDir: string, instanceId: string, routes: string[]): string {
  const file = blockFile(dataDir);
  if (existsSync(file)) {
    const kept = parseCidr(readFileSync(file, 'utf8').trim());
    if (kept && overlaps(kept, pool) && kept.prefix >= pool.prefix) return formatCidr(kept);
  }
  const prefix = Math.max(pool.prefix, INSTANCE_BLOCK_PREFIX);
  const count = 2 ** (prefix - pool.prefix);
  const start = Number.parseInt(instanceId.slice(0, 6), 36) % count;
  const taken = routes.map((r) => parseCidr(r)).filter((c): c is Cidr => !!c);
  for (let i = 0; i < count; i++) {
    const block: Cidr = { base: pool.base + ((start + i) % count) * 2 ** (32 - prefix), prefix };
    if (!taken.some((t) => overlaps(t, block))) {
      writeFileSync(file, `${formatCidr(block)}\n`, { mode: 0o644 });
      return formatCidr(block);
    }
  }
  throw new Error(`every block of the sandbox subnet ${formatCidr(pool)} is in use by other instances: give this one another --subnet`);
}
