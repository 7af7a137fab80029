// The net_slots table: the network ledger. A slot (namespace, veth pair, address, nft chain and
// sets) is recorded before any of it is made, and its row goes only after all of it is gone.
import { existsSync } from 'node:fs';
import Database from 'better-sqlite3';

export type NetSlotState = 'making' | 'free' | 'used' | 'releasing';

export interface NetSlotRow {
  slot: number;
  state: NetSlotState;
  sandboxId: string | null;
}

export interface NetSlotRepo {
  /** The slot of the sandbox, in any state (`used` only with usedOnly). */
  slotOf(sandboxId: string, usedOnly?: boolean): number | undefined;
  /** The sandbox using this slot, if any. */
  holderOf(slot: number): string | undefined;
  /** Hands the lowest free slot to the sandbox (state used), atomically. */
  claimFree(sandboxId: string): number | undefined;
  /** Records the lowest slot number not in the ledger (state making), if it is below `limit`. */
  reserve(sandboxId: string | null, limit: number): number | undefined;
  setState(slot: number, state: NetSlotState, onlyFrom?: NetSlotState): void;
  remove(slot: number): void;
  count(state: NetSlotState): number;
  /** Every row (optionally only those without a sandbox, or only those not in use). */
  list(filter?: 'unowned' | 'unused'): NetSlotRow[];
  /** Sandboxes that hold a slot. */
  ownerIds(): string[];
}

type Raw = { slot: number; state: NetSlotState; sandbox_id: string | null };
const toSlot = (r: Raw): NetSlotRow => ({ slot: r.slot, state: r.state, sandboxId: r.sandbox_id });

export class SqliteNetSlotRepo implements NetSlotRepo {
  constructor(private readonly db: Database.Database) {}

  slotOf(sandboxId: string, usedOnly = false): number | undefined {
    const sql = usedOnly ? "SELECT slot FROM net_slots WHERE sandbox_id = ? AND state = 'used'" : 'SELECT slot FROM net_slots WHERE sandbox_id = ?';
    return (this.db.prepare(sql).get(sandboxId) as { slot: number } | undefined)?.slot;
  }

  holderOf(slot: number): string | undefined {
    const r = this.db.prepare("SELECT sandbox_id FROM net_slots WHERE slot = ? AND state = 'used'").get(slot) as { sandbox_id: string } | undefined;
    return r?.sandbox_id;
  }

  claimFree(sandboxId: string): number | undefined {
    return this.db.transaction(() => {
      const r = this.db.prepare("SELECT slot FROM net_slots WHERE state = 'free' ORDER BY slot LIMIT 1").get() as { slot: number } | undefined;
      if (r) this.db.prepare("UPDATE net_slots SET state = 'used', sandbox_id = ? WHERE slot = ?").run(sandboxId, r.slot);
      return r?.slot;
    })();
  }

  reserve(sandboxId: string | null, limit: number): number | undefined {
    return this.db.transaction(() => {
      const used = new Set((this.db.prepare('SELECT slot FROM net_slots').all() as { slot: number }[]).map((r) => r.slot));
      let slot = 0;
      while (used.has(slot)) slot++;
      if (slot >= limit) return undefined;
      this.db.prepare("INSERT INTO net_slots (slot, state, sandbox_id, created_at) VALUES (?, 'making', ?, ?)").run(slot, sandboxId, Date.now());
      return slot;
    })();
  }

  setState(slot: number, state: NetSlotState, onlyFrom?: NetSlotState): void {
    if (onlyFrom === undefined) this.db.prepare('UPDATE net_slots SET state = ? WHERE slot = ?').run(state, slot);
    else this.db.prepare('UPDATE net_slots SET state = ? WHERE slot = ? AND state = ?').run(state, slot, onlyFrom);
  }

  remove(slot: number): void {
    this.db.prepare('DELETE FROM net_slots WHERE slot = ?').run(slot);
  }

  count(state: NetSlotState): number {
    return (this.db.prepare('SELECT count(*) AS n FROM net_slots WHERE state = ?').get(state) as { n: number }).n;
  }

  list(filter?: 'unowned' | 'unused'): NetSlotRow[] {
    const where = filter === 'unowned' ? ' WHERE sandbox_id IS NULL' : filter === 'unused' ? " WHERE state <> 'used'" : '';
    return (this.db.prepare(`SELECT slot, state, sandbox_id FROM net_slots${where}`).all() as Raw[]).map(toSlot);
  }

  ownerIds(): string[] {
    return (this.db.prepare('SELECT sandbox_id FROM net_slots WHERE sandbox_id IS NOT NULL').all() as { sandbox_id: string }[]).map((r) => r.sandbox_id);
  }
}

/**
 * The ledger of the store in `file`, read without taking part in it (a running service may hold
 * it): undefined without a store, empty for a store from before networking.
 */
export function readNetSlots(file: string): NetSlotRow[] | undefined {
  if (!existsSync(file)) return undefined;
  const db = new Database(file, { readonly: true, fileMustExist: true });
  try {
    return new SqliteNetSlotRepo(db).list();
  } catch {
    return [];
  } finally {
    db.close();
  }
}
