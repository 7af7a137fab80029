// Addresses the DNS forwarder resolved for sandboxes, put into their slots' sets in batches:
// one nft transaction for everything that arrived within a short interval, and none at all
// for an address already in the set for at least half its new TTL. A sandbox flooding
// queries for an allowed name then costs one nft process, not one per answer.
import type { Logger } from 'pino';
import { nft } from './host.js';
import { resolvedScript } from './rules.js';

/** How long the first address of a batch waits for others. */
const BATCH_MS = 25;

export class ResolvedSets {
  /** slot -> address -> when its set element expires (ms). */
  private readonly known = new Map<number, Map<string, number>>();
  /** slot -> address -> TTL (s), for the next batch. */
  private pending = new Map<number, Map<string, number>>();
  private next: Promise<void> | undefined;

  constructor(
    private readonly table: string,
    private readonly log: Logger,
    /** The script that adds addresses to a slot's set (its resolved set by default). */
    private readonly addScript: (table: string, slot: number, addresses: string[], ttlSec: number) => string = resolvedScript,
  ) {}

  /** Resolves once the addresses are in the slot's set (a failure is logged: they stay unreachable). */
  add(slot: number, addresses: string[], ttlSec: number): Promise<void> {
    const now = Date.now();
    const known = this.known.get(slot);
    const fresh = addresses.filter((a) => (known?.get(a) ?? 0) < now + ttlSec * 500);
    if (!fresh.length) return Promise.resolve();
    let p = this.pending.get(slot);
    if (!p) this.pending.set(slot, (p = new Map()));
    for (const a of fresh) p.set(a, Math.max(ttlSec, p.get(a) ?? 0));
    this.next ??= new Promise<void>((r) => setTimeout(r, BATCH_MS)).then(() => this.flush());
    return this.next;
  }

  /** Forgets what a slot's set held (its policy was replaced, or the slot released). */
  forget(slot: number): void {
    this.known.delete(slot);
    this.pending.delete(slot);
  }

  private async flush(): Promise<void> {
    const batch = this.pending;
    this.pending = new Map();
    this.next = undefined;
    const scripts = [...batch].map(([slot, els]) => [slot, els, this.script(slot, els)] as const);
    try {
      await nft(scripts.map(([, , s]) => s).join('\n'));
      for (const [slot, els] of scripts) this.remember(slot, els);
    } catch {
      // one slot released meanwhile fails the whole transaction: the others each on their own
      for (const [slot, els, s] of scripts) {
        try {
          await nft(s);
          this.remember(slot, els);
        } catch (err) {
          this.log.debug({ slot, err: (err as Error).message }, 'adding resolved addresses failed');
        }
      }
    }
  }

  private script(slot: number, els: Map<string, number>): string {
    // one line per TTL: elements of one `add element` share nothing else
    const byTtl = new Map<number, string[]>();
    for (const [a, ttl] of els) byTtl.set(ttl, [...(byTtl.get(ttl) ?? []), a]);
    return [...byTtl].map(([ttl, addrs]) => this.addScript(this.table, slot, addrs, ttl)).join('\n');
  }

  private remember(slot: number, els: Map<string, number>): void {
    const now = Date.now();
    let k = this.known.get(slot);
    if (!k) this.known.set(slot, (k = new Map()));
    for (const [a, ttl] of els) k.set(a, now + ttl * 1000);
    if (k.size > 8192) for (const [a, exp] of k) if (exp < now) k.delete(a);
  }
}
