// One network slot on the host: its namespace, its veth pair (the host's end named for the
// slot, `eth0` inside), its /31 and default route, and its nft chain and sets. Made, removed
// and repaired here; the ledger that says which slots exist is network.ts's.
import { isOpenPolicy, type EgressPolicy } from './policy.js';
import { attachNetns, deleteLink, deleteNetns, ipBatch, linkExists, listLinks, listNetns, netnsExists, netnsPath, nft, runWithInput } from './host.js';
import { addSlotScript, policyScript, removeSlotScript, slotNames } from './rules.js';
import { readlinkSync } from 'node:fs';

export interface SlotPlace {
  slot: number;
  table: string;
  netns: string;
  link: string;
  /** The host's end of the /31, and the sandbox's. */
  host: string;
  addr: string;
}

/** Every nft object of a slot, as tableObjects names them. */
export function slotObjects(p: SlotPlace): string[] {
  const n = slotNames(p.slot);
  return [
    `element:${p.link}`,
    `intercept:${p.link}`,
    `chain:${n.chain}`,
    `chain:${n.natChain}`,
    ...[n.allow, n.deny, n.resolved, n.proxied].map((s) => `set:${s}`),
    ...[n.tx, n.denied].map((c) => `counter:${c}`),
  ];
}

/** The link's host end and the namespace's side of it (in two `ip -batch` calls). */
async function makeLink(p: SlotPlace, first: string[] = []): Promise<void> {
  await ipBatch([...first, `link add ${p.link} type veth peer name eth0 netns ${p.netns}`, `addr add ${p.host}/31 dev ${p.link}`, `link set ${p.link} up`]);
  await addressLink(p);
}

/**
 * The namespace's side of the link: up, its address and the default route. Again before each
 * boot: a user-space netstack (gVisor's) takes them off the link it takes over.
 */
export async function addressLink(p: SlotPlace): Promise<void> {
  await ipBatch(['link set lo up', `addr replace ${p.addr}/31 dev eth0`, 'link set eth0 up', `route replace default via ${p.host}`], p.netns);
}

/** Makes a slot's namespace, link, addresses, route and nft chain (its sets empty: the open policy). */
export async function makeSlot(p: SlotPlace): Promise<void> {
  await makeLink(p, [`netns add ${p.netns}`]);
  await nft(addSlotScript(p.table, p.slot, p.link));
}

/**
 * Removes what exists of one slot or several: their links (the host's end takes the
 * namespace's with it at once, where a namespace's own removal lets the kernel drop its links
 * later) and namespaces in one `ip` process, then their nft objects in one transaction.
 * `objects` lists the table when some of a single slot's objects may be missing (a crash
 * while making or releasing); with several slots, a failed transaction throws (run each alone).
 */
export async function removeSlots(ps: SlotPlace[], objects: () => Promise<Set<string>>): Promise<void> {
  const lines = ps.flatMap((p) => [...(linkExists(p.link) ? [`link del ${p.link}`] : []), ...(netnsExists(p.netns) ? [`netns del ${p.netns}`] : [])]);
  // -force: on through lines that fail (a link that went with its namespace meanwhile); what is left is checked below
  if (lines.length) await runWithInput('ip', ['-force', '-batch', '-'], lines.join('\n') + '\n').catch(() => undefined);
  const left = ps.flatMap((p) => [...(linkExists(p.link) ? [`link ${p.link}`] : []), ...(netnsExists(p.netns) ? [`netns ${p.netns}`] : [])]);
  if (left.length) throw new Error(`could not remove ${left.join(', ')}`);
  // every object at once; if some are missing (a crash while making or releasing), only those that exist
  const all = ps.map((p) => removeSlotScript(p.table, p.slot, p.link, new Set(slotObjects(p)))).join('\n');
  await nft(all).catch(async (err: unknown) => {
    if (ps.length > 1) throw err;
    const p = ps[0]!;
    const script = removeSlotScript(p.table, p.slot, p.link, await objects());
    if (script) await nft(script);
  });
}

/** What of a slot is missing: its namespace, its link, its nft chain (given the table's chains or objects). */
export function slotProblems(p: SlotPlace, chains: Set<string> | undefined): string[] {
  const out: string[] = [];
  if (!netnsExists(p.netns)) out.push('network namespace');
  if (!linkExists(p.link)) out.push('veth link');
  const n = slotNames(p.slot);
  // the nat chain too: a slot made before the egress proxy existed gets it (with its set) by repair
  if (chains && (!chains.has(`chain:${n.chain}`) || !chains.has(`chain:${n.natChain}`))) out.push('nft chain');
  return out;
}

/**
 * Makes a slot whole again, keeping its address. A namespace whose name was removed while a
 * process still lives in it (`pid`: the sandbox's first process) gets its name back; without
 * a process, a new one is made. A missing link is made again into the namespace; missing nft
 * objects are all made again, with the policy. Returns what it repaired.
 */
export async function repairSlot(p: SlotPlace, policy: EgressPolicy, pid: number | undefined, objects: Set<string>): Promise<string[]> {
  const repaired: string[] = [];
  if (!netnsExists(p.netns)) {
    if (pid !== undefined) {
      // never the host's own namespace (a sandbox without one of its own)
      if (readlinkSync(`/proc/${pid}/ns/net`) === readlinkSync('/proc/self/ns/net')) throw new Error(`process ${pid} is in the host's network namespace`);
      await attachNetns(p.netns, pid);
    } else {
      await ipBatch([`netns add ${p.netns}`]);
    }
    repaired.push(`network namespace ${netnsPath(p.netns)}`);
  }
  if (!linkExists(p.link)) {
    await makeLink(p);
    repaired.push(`veth link ${p.link}`);
  }
  if (slotObjects(p).some((o) => !objects.has(o))) {
    const stale = removeSlotScript(p.table, p.slot, p.link, objects);
    const lines = [stale, addSlotScript(p.table, p.slot, p.link)];
    if (!isOpenPolicy(policy)) lines.push(policyScript(p.table, p.slot, policy));
    await nft(lines.filter(Boolean).join('\n'));
    repaired.push(`nft chain ${slotNames(p.slot).chain}`);
  }
  return repaired;
}

/** Removes this instance's namespaces, links and slot chains whose slot number `stray` says no row names. */
export async function removeStrays(
  inst: { instanceId: string; table: string; linkPrefix: string },
  stray: (slot: number) => boolean,
  objects: Set<string>,
): Promise<string[]> {
  const removed: string[] = [];
  const nsPrefix = `cubebox-${inst.instanceId}-`;
  const slotOf = (name: string, prefix: string) => (name.startsWith(prefix) ? Number(name.slice(prefix.length)) : NaN);
  for (const ns of listNetns()) {
    const slot = slotOf(ns, nsPrefix);
    if (Number.isInteger(slot) && stray(slot)) {
      await deleteNetns(ns);
      removed.push(`netns ${ns}`);
    }
  }
  for (const link of listLinks()) {
    const slot = slotOf(link, inst.linkPrefix);
    if (Number.isInteger(slot) && stray(slot)) {
      await deleteLink(link);
      removed.push(`link ${link}`);
    }
  }
  for (const o of objects) {
    const slot = slotOf(o, 'chain:s');
    if (Number.isInteger(slot) && stray(slot)) {
      await nft(removeSlotScript(inst.table, slot, `${inst.linkPrefix}${slot}`, objects));
      removed.push(`nft chain s${slot}`);
    }
  }
  return removed;
}
