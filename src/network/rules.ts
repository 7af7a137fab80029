// The nftables ruleset of one instance: a table of its own (`inet cubebox_<instance>`) whose
// base chains are rebuilt at every start, and one chain with three sets per network slot.
//
//   from a sandbox link:  established -> accept; past its flow cap -> reject; blocked (link-local, metadata, other
//                         sandboxes, private networks) -> reject; IPv6 -> reject; then the
//                         slot's chain: allowed CIDRs, addresses resolved for allowed names,
//                         denied CIDRs, accept.
//   to the host itself:   only the DNS forwarder (reached by redirect, within the flow cap) and replies.
//   into a sandbox link:  only replies (ports are served through the proxy, from the host).
//   before routing:       TCP 80/443 to an address the forwarder resolved for a name with rules or
//                         a name allowOut grants (set p<N>) goes to the egress proxy on the host
//                         (egress-proxy.ts), which checks the name (SNI / Host) and applies the rules.
//                         With an upstream proxy (egressProxy), the rest of the TCP the slot's
//                         policy lets out goes to the proxy's tunnel port (the same order of checks
//                         as the slot's chain: what it would deny is left to the forward chain).
import { nft } from './host.js';
import type { EgressPolicy } from './policy.js';

export interface ProxyPorts {
  tls: number;
  http: number;
  tunnel: number;
}

export interface TableConfig {
  table: string;
  /** Interface-name prefix of every host-side sandbox link of this instance. */
  linkPrefix: string;
  subnet: string;
  /** Where DNS from sandboxes is redirected (the forwarder's port on the link's host address). */
  dnsPort: number;
  /** Never reachable from a sandbox (always includes the sandbox subnet). */
  blocked: string[];
  /** Connections one sandbox may have tracked at once (new ones past it are refused). */
  maxFlows: number;
  /** The egress proxy's ports (TLS for 443, HTTP for 80, the tunnel to upstream proxies); undefined: such connections are dropped. */
  proxyPorts?: ProxyPorts;
}

/**
 * Slot object names: chain s<N>, sets a<N> (allowed), r<N> (resolved), d<N> (denied), counters
 * tx<N>, dn<N>; the nat chain i<N> and set p<N> (addresses whose 80/443 go through the egress proxy).
 */
export const slotNames = (slot: number) => ({
  chain: `s${slot}`,
  natChain: `i${slot}`,
  proxied: `p${slot}`,
  allow: `a${slot}`,
  resolved: `r${slot}`,
  deny: `d${slot}`,
  tx: `tx${slot}`,
  denied: `dn${slot}`,
});

/** Makes the table if missing and (re)defines its base chains, keeping every slot's chain and sets. */
export async function installTable(c: TableConfig): Promise<void> {
  const t = `inet ${c.table}`;
  const links = `"${c.linkPrefix}*"`;
  const script = [
    `add table ${t}`,
    `add map ${t} egress { type ifname : verdict; }`,
    `add map ${t} intercept { type ifname : verdict; }`,
    `add set ${t} blocked { type ipv4_addr; flags interval; auto-merge; }`,
    `flush set ${t} blocked`,
    `add element ${t} blocked { ${c.blocked.join(', ')} }`,
    // per sandbox address: its tracked connections (nf_conncount), so that one cannot fill the host's table
    `add set ${t} flows { type ipv4_addr; size 65535; flags dynamic; }`,
    `add counter ${t} egress_bytes`,
    `add counter ${t} denied`,
    `add chain ${t} input { type filter hook input priority filter - 5; policy accept; }`,
    `add chain ${t} forward { type filter hook forward priority filter - 5; policy accept; }`,
    `add chain ${t} prerouting { type nat hook prerouting priority dstnat - 5; policy accept; }`,
    `add chain ${t} antispoof { type filter hook prerouting priority raw; policy accept; }`,
    `add chain ${t} postrouting { type nat hook postrouting priority srcnat - 5; policy accept; }`,
    ...['from_sandbox', 'to_host', 'deny', 'egress_proxy', 'tunnel'].map((ch) => `add chain ${t} ${ch}`),
    ...['input', 'forward', 'from_sandbox', 'to_host', 'deny', 'prerouting', 'postrouting', 'antispoof', 'egress_proxy', 'tunnel'].map(
      (ch) => `flush chain ${t} ${ch}`,
    ),
    `add rule ${t} deny counter name "denied" reject with icmpx type admin-prohibited`,
    // a sandbox sends only from its own address (IP_FREEBIND needs no privilege): a packet whose
    // source does not route back through the link it came in on is dropped before anything
    // (the DNS forwarder, the policy) reads its source
    `add rule ${t} antispoof iifname ${links} fib saddr . iif oif missing drop`,
    // to the host: the DNS forwarder (after the redirect below) and replies, nothing else
    `add rule ${t} input iifname ${links} jump to_host`,
    `add rule ${t} to_host ct state established,related accept`,
    `add rule ${t} to_host ct state new add @flows { ip saddr ct count over ${c.maxFlows} } jump deny`,
    `add rule ${t} to_host meta l4proto { tcp, udp } th dport ${c.dnsPort} ct status dnat accept`,
    ...(c.proxyPorts ? [`add rule ${t} to_host tcp dport { ${proxyPortList(c.proxyPorts)} } ct status dnat accept`] : []),
    `add rule ${t} to_host jump deny`,
    // the forwarder answers sandboxes only
    `add rule ${t} input iifname != ${links} meta l4proto { tcp, udp } th dport ${c.dnsPort} iifname != "lo" drop`,
    ...(c.proxyPorts ? [`add rule ${t} input iifname != ${links} tcp dport { ${proxyPortList(c.proxyPorts)} } iifname != "lo" drop`] : []),
    // out of a sandbox
    `add rule ${t} forward iifname ${links} jump from_sandbox`,
    `add rule ${t} forward oifname ${links} ct state established,related accept`,
    `add rule ${t} forward oifname ${links} jump deny`,
    `add rule ${t} from_sandbox counter name "egress_bytes"`,
    `add rule ${t} from_sandbox ct state established,related accept`,
    `add rule ${t} from_sandbox ct state new add @flows { ip saddr ct count over ${c.maxFlows} } jump deny`,
    `add rule ${t} from_sandbox meta nfproto ipv6 jump deny`,
    `add rule ${t} from_sandbox ip daddr @blocked jump deny`,
    `add rule ${t} from_sandbox iifname vmap @egress`,
    `add rule ${t} from_sandbox jump deny`,
    // every DNS query, to whatever server, goes to the forwarder: no resolver but ours
    `add rule ${t} prerouting iifname ${links} meta l4proto { tcp, udp } th dport 53 redirect to :${c.dnsPort}`,
    `add rule ${t} prerouting iifname vmap @intercept`,
    // without the proxy listening, what should go through it goes nowhere (fails closed)
    ...(c.proxyPorts
      ? [
          `add rule ${t} egress_proxy tcp dport 443 redirect to :${c.proxyPorts.tls}`,
          `add rule ${t} egress_proxy tcp dport 80 redirect to :${c.proxyPorts.http}`,
        ]
      : [`add rule ${t} egress_proxy tcp dport { 80, 443 } drop`]),
    c.proxyPorts ? `add rule ${t} tunnel meta l4proto tcp redirect to :${c.proxyPorts.tunnel}` : `add rule ${t} tunnel meta l4proto tcp drop`,
    `add rule ${t} postrouting ip saddr ${c.subnet} oifname != ${links} masquerade`,
  ];
  await nft(script.join('\n'));
}

const proxyPortList = (p: ProxyPorts) => [p.tls, p.http, p.tunnel].join(', ');

/** Removes the instance's whole table (every slot's chain and sets with it). */
export async function removeTable(table: string): Promise<void> {
  await nft(`delete table inet ${table}`).catch((e: Error) => {
    if (!/No such file or directory/.test(e.message)) throw e;
  });
}

/**
 * The script that adds one slot's chain and sets, hooked to its link. Its sets start empty
 * (the default policy): nothing runs in a slot before it is given to a sandbox, and a slot is
 * never given twice (it is destroyed on release), so a create with the default policy needs
 * no nft call of its own.
 */
export function addSlotScript(table: string, slot: number, link: string): string {
  const t = `inet ${table}`;
  const n = slotNames(slot);
  return [
    `add set ${t} ${n.allow} { type ipv4_addr; flags interval; auto-merge; }`,
    `add set ${t} ${n.deny} { type ipv4_addr; flags interval; auto-merge; }`,
    `add set ${t} ${n.resolved} { type ipv4_addr; flags timeout; size 4096; }`,
    `add counter ${t} ${n.tx}`,
    `add counter ${t} ${n.denied}`,
    `add chain ${t} ${n.chain}`,
    `add rule ${t} ${n.chain} counter name "${n.tx}"`,
    `add rule ${t} ${n.chain} ip daddr @${n.allow} accept`,
    `add rule ${t} ${n.chain} ip daddr @${n.resolved} accept`,
    `add rule ${t} ${n.chain} ip daddr @${n.deny} counter name "${n.denied}" jump deny`,
    `add rule ${t} ${n.chain} accept`,
    `add element ${t} egress { "${link}" : jump ${n.chain} }`,
    `add set ${t} ${n.proxied} { type ipv4_addr; flags timeout; size 4096; }`,
    `add chain ${t} ${n.natChain}`,
    `add rule ${t} ${n.natChain} ip daddr @${n.proxied} jump egress_proxy`,
    `add element ${t} intercept { "${link}" : jump ${n.natChain} }`,
  ].join('\n');
}

/** The script that removes one slot's chain and sets (only the objects named in `present`). */
export function removeSlotScript(table: string, slot: number, link: string, present: Set<string>): string {
  const t = `inet ${table}`;
  const n = slotNames(slot);
  const lines: string[] = [];
  if (present.has(`element:${link}`)) lines.push(`delete element ${t} egress { "${link}" }`);
  if (present.has(`intercept:${link}`)) lines.push(`delete element ${t} intercept { "${link}" }`);
  for (const ch of [n.chain, n.natChain]) if (present.has(`chain:${ch}`)) lines.push(`flush chain ${t} ${ch}`, `delete chain ${t} ${ch}`);
  for (const s of [n.allow, n.deny, n.resolved, n.proxied]) if (present.has(`set:${s}`)) lines.push(`delete set ${t} ${s}`);
  for (const c of [n.tx, n.denied]) if (present.has(`counter:${c}`)) lines.push(`delete counter ${t} ${c}`);
  return lines.join('\n');
}

/** Replaces a slot's allowed and denied sets and its nat chain (one transaction: the policy changes at once). */
export function policyScript(table: string, slot: number, p: EgressPolicy): string {
  const t = `inet ${table}`;
  const n = slotNames(slot);
  const lines = [`flush set ${t} ${n.allow}`, `flush set ${t} ${n.deny}`, `flush set ${t} ${n.resolved}`, `flush set ${t} ${n.proxied}`];
  if (p.allowCidrs.length) lines.push(`add element ${t} ${n.allow} { ${p.allowCidrs.join(', ')} }`);
  if (p.denyCidrs.length) lines.push(`add element ${t} ${n.deny} { ${p.denyCidrs.join(', ')} }`);
  lines.push(`flush chain ${t} ${n.natChain}`, `add rule ${t} ${n.natChain} ip daddr @${n.proxied} jump egress_proxy`);
  // through the upstream proxy: what the slot's chain would let out (a return leaves the
  // connection to the forward chain, which refuses it)
  if (p.tunnel)
    lines.push(
      `add rule ${t} ${n.natChain} ip daddr @blocked return`,
      `add rule ${t} ${n.natChain} ip daddr @${n.allow} jump tunnel`,
      `add rule ${t} ${n.natChain} ip daddr @${n.resolved} jump tunnel`,
      `add rule ${t} ${n.natChain} ip daddr @${n.deny} return`,
      `add rule ${t} ${n.natChain} jump tunnel`,
    );
  return lines.join('\n');
}

/** Adds addresses a sandbox resolved through the forwarder for an allowed name, for ttl seconds. */
export function resolvedScript(table: string, slot: number, addresses: string[], ttlSec: number): string {
  const t = `inet ${table}`;
  const els = addresses.map((a) => `${a} timeout ${ttlSec}s`).join(', ');
  return `add element ${t} ${slotNames(slot).resolved} { ${els} }`;
}

/** Adds addresses whose 80/443 go through the egress proxy, for ttl seconds. */
export function proxiedScript(table: string, slot: number, addresses: string[], ttlSec: number): string {
  const els = addresses.map((a) => `${a} timeout ${ttlSec}s`).join(', ');
  return `add element inet ${table} ${slotNames(slot).proxied} { ${els} }`;
}

/** What of the table exists: `chain:<name>`, `set:<name>`, `counter:<name>`, `element:<link>`. */
export function tableObjects(json: unknown): { objects: Set<string>; counters: Map<string, { packets: number; bytes: number }> } {
  const objects = new Set<string>();
  const counters = new Map<string, { packets: number; bytes: number }>();
  const items = (json as { nftables?: Record<string, unknown>[] }).nftables ?? [];
  for (const it of items) {
    const chain = it.chain as { name: string } | undefined;
    const set = it.set as { name: string } | undefined;
    const map = it.map as { name: string; elem?: unknown[] } | undefined;
    const counter = it.counter as { name: string; packets: number; bytes: number } | undefined;
    if (chain) objects.add(`chain:${chain.name}`);
    if (set) objects.add(`set:${set.name}`);
    if (counter) {
      objects.add(`counter:${counter.name}`);
      counters.set(counter.name, { packets: counter.packets, bytes: counter.bytes });
    }
    if (map?.name === 'egress') for (const e of map.elem ?? []) if (Array.isArray(e) && typeof e[0] === 'string') objects.add(`element:${e[0]}`);
    if (map?.name === 'intercept') for (const e of map.elem ?? []) if (Array.isArray(e) && typeof e[0] === 'string') objects.add(`intercept:${e[0]}`);
  }
  return { objects, counters };
}
