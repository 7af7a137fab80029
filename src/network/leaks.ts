// What of an instance's networking is on the host with no sandbox to own it: namespaces,
// links, nft chains, ledger rows and flow entries. Synchronous, for the leak checker.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { AddressPlan, contains, parseIp } from './cidr.js';
import { hasConntrack, listLinks, listNetns } from './host.js';
import { existsSync, readFileSync } from 'node:fs';
import { blockFile } from './block.js';
import { readNetSlots, type NetSlotRepo, type NetSlotRow } from '../store/net-slots.js';
import { tableObjects } from './rules.js';

export interface NetLeak {
  kind: 'netns' | 'link' | 'nft' | 'ledger' | 'conntrack';
  what: string;
}

/**
 * Leftovers of instance `inst`: everything but the free slots and the slots of `known`
 * sandboxes. The table itself (base chains only) is the running service's, removed when it
 * stops with no slot left; only what a slot left in it counts.
 */
export function networkLeaks(inst: string, dataDir: string, given: NetSlotRepo | undefined, known: Set<string>): NetLeak[] {
  // without the caller's store, the ledger is read from the data directory's (a running service may hold it)
  return leaksWith(inst, dataDir, given ? given.list() : readNetSlots(join(dataDir, 'cubebox.db')), known);
}

function leaksWith(inst: string, dataDir: string, rows: NetSlotRow[] | undefined, known: Set<string>): NetLeak[] {
  const out: NetLeak[] = [];
  const owned = new Set<number>();
  for (const r of rows ?? []) {
    if (r.state === 'free' || (r.sandboxId && known.has(r.sandboxId))) owned.add(r.slot);
    else out.push({ kind: 'ledger', what: `net slot ${r.slot} (${r.state}${r.sandboxId ? ` of ${r.sandboxId}` : ''})` });
  }
  const nsPrefix = `cubebox-${inst}-`;
  for (const ns of listNetns()) if (ns.startsWith(nsPrefix) && !owned.has(Number(ns.slice(nsPrefix.length)))) out.push({ kind: 'netns', what: ns });
  const linkPrefix = `c${inst}`;
  for (const l of listLinks()) if (l.startsWith(linkPrefix) && !owned.has(Number(l.slice(linkPrefix.length)))) out.push({ kind: 'link', what: l });
  const table = `cubebox_${inst}`;
  const listed = spawnSync('nft', ['-j', 'list', 'table', 'inet', table], { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (listed.status === 0) {
    const { objects } = tableObjects(JSON.parse(listed.stdout) as unknown);
    for (const o of objects) {
      const m = /^chain:[si](\d+)$/.exec(o);
      if (m && !owned.has(Number(m[1]))) out.push({ kind: 'nft', what: `${table} ${o}` });
    }
  }
  const block = existsSync(blockFile(dataDir)) ? readFileSync(blockFile(dataDir), 'utf8').trim() : undefined;
  if (hasConntrack() && block) {
    const plan = new AddressPlan(block);
    const ct = spawnSync('conntrack', ['-L'], { encoding: 'utf8', maxBuffer: 64 << 20 });
    for (const line of (ct.stdout ?? '').split('\n')) {
      const src = /src=(\d+\.\d+\.\d+\.\d+)/.exec(line)?.[1];
      const ip = src === undefined ? undefined : parseIp(src);
      if (ip === undefined || !contains(plan.subnet, ip)) continue;
      const slot = Math.floor((ip - plan.subnet.base) / 2); // either end of the slot's link
      if (!owned.has(slot)) out.push({ kind: 'conntrack', what: line.trim().slice(0, 200) });
    }
  }
  return out;
}
