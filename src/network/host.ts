// The host commands networking is made of: `ip` (namespaces, veth links, addresses, routes),
// `nft` (the policy) and `conntrack` (flow entries of a released address). Never through a
// shell; every call bounded in time.
import { spawnChild as spawn } from '../util/exec.js';
import { closeSync, existsSync, openSync, readdirSync, readFileSync, readSync, writeFileSync } from 'node:fs';
import { overlaps, parseCidr, type Cidr } from './cidr.js';

const CALL_TIMEOUT_MS = 20_000;

/** Runs a command with `input` on its stdin; rejects with its stderr on a non-zero exit. */
export function runWithInput(file: string, args: string[], input: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), CALL_TIMEOUT_MS);
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d.length + out.length < 64 << 20 ? d : ''));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += err.length < 65536 ? d : ''));
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve(out);
      else reject(new Error(`${file.split('/').pop()} ${args.join(' ')}: ${err.trim() || `exit ${code ?? signal}`}`));
    });
    child.stdin.on('error', () => undefined);
    child.stdin.end(input);
  });
}

let nftRunCount = 0;
/** How many nft processes this process started (instrumentation: policy updates must stay batched). */
export const nftRuns = (): number => nftRunCount;

export const nft = (script: string) => {
  nftRunCount++;
  return runWithInput('nft', ['-f', '-'], script);
};
export const nftJson = async (what: string): Promise<unknown> => {
  nftRunCount++;
  return JSON.parse(await runWithInput('nft', ['-j', ...what.split(' ')], '')) as unknown;
};
export const ipBatch = (lines: string[], netns?: string) => runWithInput('ip', [...(netns ? ['-n', netns] : []), '-batch', '-'], lines.join('\n') + '\n');

/** Network namespaces by name (the files `ip netns add` makes under /run/netns). */
export function listNetns(): string[] {
  try {
    return readdirSync('/run/netns');
  } catch {
    return [];
  }
}

export function netnsPath(name: string): string {
  return `/run/netns/${name}`;
}

export function netnsExists(name: string): boolean {
  return existsSync(netnsPath(name));
}

/** Interface names in the host's namespace. */
export function listLinks(): string[] {
  try {
    return readdirSync('/sys/class/net');
  } catch {
    return [];
  }
}

export function linkExists(name: string): boolean {
  return existsSync(`/sys/class/net/${name}`);
}

/** Removes a namespace (its end of the veth pair goes with it, and the host's end with that). */
export async function deleteNetns(name: string): Promise<void> {
  if (netnsExists(name)) await runWithInput('ip', ['netns', 'del', name], '');
}

export async function deleteLink(name: string): Promise<void> {
  if (listLinks().includes(name))
    await runWithInput('ip', ['link', 'del', name], '').catch((e: Error) => {
      if (listLinks().includes(name)) throw e;
    });
}

/** Drops the host's flow entries of an address (so a reused address starts with none). Needs conntrack(8); without it, entries time out. */
export async function flushConntrack(address: string): Promise<void> {
  if (!hasConntrack()) return;
  // two conntrack processes cost more CPU than the rest of a release: skip them when the table has no entry of the address
  if (!mayHaveFlows(address)) return;
  // exit 1 = no entries
  await Promise.all(['-s', '-d'].map((dir) => runWithInput('conntrack', ['-D', dir, address], '').catch(() => undefined)));
}

/** The most of the host's flow table read to rule an address out; a larger table is left to conntrack(8). */
const FLOW_TABLE_READ_MAX = 1 << 20;

/**
 * Whether the host's flow table (/proc/net/nf_conntrack, this network namespace's, as conntrack(8)
 * sees it) may hold an entry with the IPv4 address as a source or destination, either direction.
 * True whenever it cannot tell: no such file, an IPv6 address, a table over the bound.
 */
export function mayHaveFlows(address: string): boolean {
  if (!/^\d{1,3}(\.\d{1,3}){3}$/.test(address)) return true;
  let fd: number;
  try {
    fd = openSync('/proc/net/nf_conntrack', 'r');
  } catch {
    return true;
  }
  try {
    const buf = Buffer.allocUnsafe(FLOW_TABLE_READ_MAX + 1);
    let len = 0;
    for (let n = 1; n > 0 && len < buf.length; len += n) n = readSync(fd, buf, len, buf.length - len, null);
    if (len > FLOW_TABLE_READ_MAX) return true;
    const table = buf.toString('latin1', 0, len);
    return table.includes(`src=${address} `) || table.includes(`dst=${address} `);
  } catch {
    return true;
  } finally {
    closeSync(fd);
  }
}

let conntrackPresent: boolean | undefined;
export function hasConntrack(): boolean {
  conntrackPresent ??= ['/usr/sbin/conntrack', '/sbin/conntrack', '/usr/bin/conntrack'].some((p) => existsSync(p));
  return conntrackPresent;
}

/** IPv4 forwarding must be on for sandboxes to reach anything past the host. */
export function ensureForwarding(): boolean {
  const f = '/proc/sys/net/ipv4/ip_forward';
  if (readFileSync(f, 'utf8').trim() === '1') return false;
  writeFileSync(f, '1\n');
  return true;
}

/** The host's IPv4 routes' destinations (for choosing a subnet that collides with none). */
export async function hostRoutes(): Promise<{ dst: string; dev: string }[]> {
  const out = await runWithInput('ip', ['-j', '-4', 'route', 'show', 'table', 'all'], '');
  return (JSON.parse(out) as { dst?: string; dev?: string }[])
    .map((r) => ({ dst: r.dst ?? '', dev: r.dev ?? '' }))
    .filter((r) => r.dst && r.dst !== 'default' && /^\d/.test(r.dst));
}

/**
 * The host's own networks as sandboxes must not reach them: every IPv4 address of every
 * interface with its connected subnet, and the gateways of its routes (an uplink whose
 * gateway lies outside its subnet). Interfaces named with `skipPrefix` (this instance's
 * sandbox links) and networks inside the sandbox pool are left out.
 */
export async function hostNetworks(skipPrefix: string, pool: Cidr): Promise<string[]> {
  const addrs = JSON.parse(await runWithInput('ip', ['-j', '-4', 'addr', 'show'], '')) as {
    ifname?: string;
    addr_info?: { local?: string; prefixlen?: number }[];
  }[];
  const out = new Set<string>();
  for (const link of addrs) {
    if (!link.ifname || link.ifname.startsWith(skipPrefix)) continue;
    for (const a of link.addr_info ?? []) {
      if (!a.local || a.prefixlen === undefined) continue;
      out.add(`${a.local}/32`);
      out.add(`${a.local}/${a.prefixlen}`);
    }
  }
  const routes = JSON.parse(await runWithInput('ip', ['-j', '-4', 'route', 'show', 'table', 'all'], '')) as { gateway?: string; dev?: string }[];
  for (const r of routes) if (r.gateway && !(r.dev ?? '').startsWith(skipPrefix)) out.add(`${r.gateway}/32`);
  // inside the sandbox pool (other instances' sandbox links): blocked already, and ever changing
  return [...out].filter((n) => {
    const c = parseCidr(n);
    return !c || !(overlaps(c, pool) && c.prefix >= pool.prefix);
  });
}

/** Names the network namespace of a process (`ip netns attach`): a namespace whose name was removed while in use. */
export async function attachNetns(name: string, pid: number): Promise<void> {
  await runWithInput('ip', ['netns', 'attach', name, String(pid)], '');
}

/** The chains of an nft table (`chain:<name>`): a small listing, without rules or set elements. */
export async function tableChains(table: string): Promise<Set<string>> {
  const json = (await nftJson('list chains inet')) as { nftables?: { chain?: { table: string; name: string } }[] };
  return new Set((json.nftables ?? []).filter((i) => i.chain?.table === table).map((i) => `chain:${i.chain!.name}`));
}
