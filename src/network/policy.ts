// E2B's network options (create's `allow_internet_access` and `network`, PUT .../network) as
// one validated settings object, and the egress policy the host enforces for it. Pure.
import { invalid } from '../util/errors.js';
import { contains, formatCidr, NEVER_REACHABLE, parseCidr, parseIp } from './cidr.js';
import { parseRules, type EgressRules } from './egress-rules.js';

/** What a sandbox was given, as GET /sandboxes/{id} reports it back. */
export interface NetworkSettings {
  allowInternetAccess: boolean;
  allowOut: string[];
  denyOut: string[];
  allowPublicTraffic: boolean;
  maskRequestHost?: string;
  httpsPorts: number[];
  /** Per-domain header transforms (placeholders kept as given), applied by the egress proxy. */
  rules?: EgressRules;
  /** The upstream SOCKS5 proxy all of the sandbox's outbound TCP goes through (its password is never shown). */
  egressProxy?: UpstreamProxy;
}

/** E2B's SandboxEgressProxyConfig: a SOCKS5 proxy, with RFC 1929 credentials or none. */
export interface UpstreamProxy {
  /** `host:port`: an IPv4 address or a DNS name (resolved at each dial). */
  address: string;
  username?: string;
  /** As given, before it is stored: the API seals it (network/egress-secrets.ts) and only the egress proxy opens it. */
  password?: string;
  /** The password as stored, sealed with the instance's secrets key for the team and this proxy. */
  sealedPassword?: string;
}

/** The egress policy of one sandbox, as nftables and the DNS forwarder apply it. */
export interface EgressPolicy {
  /** CIDRs always allowed (allow wins over deny). */
  allowCidrs: string[];
  denyCidrs: string[];
  /** Allowed names: exact ('example.com') and suffix ('*.example.com' -> 'example.com', subdomains only). */
  domains: string[];
  wildcards: string[];
  /**
   * Everything is denied but what is allowed: the DNS forwarder then answers only allowed
   * names (no lookups of others, so no data leaves in their queries), and addresses reached
   * by name are only those it resolved for this sandbox.
   */
  restricted: boolean;
  /** Domains with rules (exact, and wildcards as '*.example.com'): their HTTPS goes through the egress proxy. */
  ruleDomains: string[];
  /** Outbound TCP that the policy lets out goes to the egress proxy, which sends it through the upstream proxy. */
  tunnel: boolean;
}

export const DEFAULT_NETWORK: NetworkSettings = { allowInternetAccess: true, allowOut: [], denyOut: [], allowPublicTraffic: true, httpsPorts: [] };

const MAX_ENTRIES = 256;
const DOMAIN = /^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const ENVD_PORT = 49983;

export interface NetworkInput {
  allowInternetAccess?: unknown;
  allowOut?: unknown;
  denyOut?: unknown;
  allowPublicTraffic?: unknown;
  maskRequestHost?: unknown;
  httpsPorts?: unknown;
  egressProxy?: unknown;
  rules?: unknown;
}

function list(v: unknown, what: string): string[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v) || !v.every((e) => typeof e === 'string')) throw invalid(`network.${what} must be an array of strings`);
  if (v.length > MAX_ENTRIES) throw invalid(`network.${what} has ${v.length} entries; at most ${MAX_ENTRIES} are allowed`);
  return v.map((e: string) => e.trim().toLowerCase());
}

function cidrOrIp(entry: string, what: string): string {
  if (entry.includes(':')) throw invalid(`network.${what}: '${entry}' is an IPv6 address; sandboxes have IPv4 egress only`);
  const c = parseCidr(entry);
  if (!c) throw invalid(`network.${what}: '${entry}' is not an IPv4 address or CIDR block`);
  return formatCidr(c);
}

/** Validates create's or an update's options into settings (an update replaces the egress fields, keeps the ingress ones). */
export function networkSettings(input: NetworkInput, base: NetworkSettings = DEFAULT_NETWORK): NetworkSettings {
  const egressProxy = upstreamProxy(input.egressProxy);
  const rules = parseRules(input.rules);
  if (input.allowInternetAccess !== undefined && typeof input.allowInternetAccess !== 'boolean') throw invalid('allow_internet_access must be a boolean');
  const allowOut = list(input.allowOut, 'allowOut').map((e) => (parseCidr(e) || e.includes(':') ? cidrOrIp(e, 'allowOut') : domain(e)));
  const denyOut = list(input.denyOut, 'denyOut').map((e) => cidrOrIp(e, 'denyOut'));
  const out: NetworkSettings = {
    ...base,
    allowInternetAccess: input.allowInternetAccess === undefined ? true : input.allowInternetAccess,
    allowOut,
    denyOut,
  };
  if (rules) out.rules = rules;
  else delete out.rules;
  if (egressProxy) out.egressProxy = egressProxy;
  else delete out.egressProxy;
  if (input.allowPublicTraffic !== undefined) {
    if (typeof input.allowPublicTraffic !== 'boolean') throw invalid('network.allowPublicTraffic must be a boolean');
    out.allowPublicTraffic = input.allowPublicTraffic;
  }
  if (input.maskRequestHost !== undefined && input.maskRequestHost !== null) {
    const m = input.maskRequestHost;
    if (typeof m !== 'string' || m.length === 0 || m.length > 255 || !/^[A-Za-z0-9.:${}_-]+$/.test(m))
      throw invalid('network.maskRequestHost must be a host name (it may use ${PORT})');
    out.maskRequestHost = m;
  }
  if (input.httpsPorts !== undefined && input.httpsPorts !== null) {
    const p = input.httpsPorts;
    if (!Array.isArray(p) || !p.every((x) => Number.isInteger(x) && x >= 1 && x <= 65535))
      throw invalid('network.httpsPorts must be an array of ports (1-65535)');
    if (p.includes(ENVD_PORT)) throw invalid(`network.httpsPorts cannot list envd's port ${ENVD_PORT}`);
    out.httpsPorts = [...new Set(p as number[])];
  }
  return out;
}

/** The upstream proxy's `host:port`, split (for a valid address: see upstreamProxy). */
export function proxyHostPort(address: string): { host: string; port: number } {
  const i = address.lastIndexOf(':');
  return { host: address.slice(0, i), port: Number(address.slice(i + 1)) };
}

function upstreamProxy(v: unknown): UpstreamProxy | undefined {
  if (v === undefined || v === null) return undefined;
  const what = 'network.egressProxy';
  if (typeof v !== 'object' || Array.isArray(v)) throw invalid(`${what} must be an object ({ address, username?, password? })`);
  const o = v as Record<string, unknown>;
  for (const k of Object.keys(o)) if (!['address', 'username', 'password'].includes(k)) throw invalid(`${what}.${k} is not a field of egressProxy`);
  if (typeof o.address !== 'string') throw invalid(`${what}.address must be a string 'host:port'`);
  const address = o.address.trim().toLowerCase();
  const { host, port } = proxyHostPort(address);
  if (address.startsWith('[') || host.includes(':')) throw invalid(`${what}.address: IPv6 is not supported (sandboxes have IPv4 egress only)`);
  if (!host || (parseIp(host) === undefined && (host.length > 253 || host.startsWith('*') || !DOMAIN.test(host))))
    throw invalid(`${what}.address must be 'host:port' with an IPv4 address or a DNS name as host`);
  if (!/^\d{1,5}$/.test(address.slice(host.length + 1)) || port < 1 || port > 65535) throw invalid(`${what}.address: the port must be 1-65535`);
  const ip = parseIp(host);
  // the rest (private networks, the host's own) is checked at each dial, against what the host blocks
  if (ip !== undefined && NEVER_REACHABLE.some((c) => contains(parseCidr(c)!, ip)))
    throw invalid(`${what}.address: ${host} is a loopback, link-local or reserved address`);
  const out: UpstreamProxy = { address };
  // RFC 1929: a username of 1-255 bytes, a password of 0-255 (only with a username)
  const bytes = (k: 'username' | 'password', min: number) => {
    const x = o[k];
    if (x === undefined || x === null) return undefined;
    if (typeof x !== 'string' || Buffer.byteLength(x) < min || Buffer.byteLength(x) > 255)
      throw invalid(`${what}.${k} must be a string of ${min} to 255 bytes`);
    return x;
  };
  const username = bytes('username', 1);
  const password = bytes('password', 0);
  if (password !== undefined && username === undefined) throw invalid(`${what}.password is only valid together with ${what}.username`);
  if (username !== undefined) out.username = username;
  if (password !== undefined) out.password = password;
  return out;
}

/** The settings as they may be shown (API responses, the CLI): the upstream proxy's password left out. */
export function shownSettings(s: NetworkSettings): NetworkSettings {
  if (!s.egressProxy) return s;
  const { address, username } = s.egressProxy;
  return { ...s, egressProxy: username === undefined ? { address } : { address, username } };
}

function domain(entry: string): string {
  const name = entry.endsWith('.') ? entry.slice(0, -1) : entry;
  if (name === '*' || name.length > 253 || !DOMAIN.test(name))
    throw invalid(`network.allowOut: '${entry}' is not an IPv4 address, CIDR block, domain or *.domain`);
  return name;
}

/** The policy the host enforces for these settings. */
export function egressPolicy(s: NetworkSettings): EgressPolicy {
  const allowCidrs: string[] = [];
  const domains: string[] = [];
  const wildcards: string[] = [];
  for (const e of s.allowOut) {
    if (parseCidr(e)) allowCidrs.push(e);
    else if (e.startsWith('*.')) wildcards.push(e.slice(2));
    else domains.push(e);
  }
  const denyCidrs = [...s.denyOut];
  if (!s.allowInternetAccess && !denyCidrs.includes('0.0.0.0/0')) denyCidrs.push('0.0.0.0/0');
  return {
    allowCidrs,
    denyCidrs,
    domains,
    wildcards,
    restricted: denyCidrs.includes('0.0.0.0/0'),
    ruleDomains: Object.keys(s.rules ?? {}),
    tunnel: s.egressProxy !== undefined,
  };
}

/** Whether a name may be resolved for a sandbox under this policy. */
export function nameAllowed(p: EgressPolicy, name: string): boolean {
  if (!p.restricted) return true;
  const n = name.toLowerCase().replace(/\.$/, '');
  return p.domains.includes(n) || p.wildcards.some((w) => n.endsWith(`.${w}`));
}

/** Whether resolved addresses of this name join the sandbox's allowed addresses. */
export function nameGrantsAddresses(p: EgressPolicy, name: string): boolean {
  if (!p.domains.length && !p.wildcards.length) return false;
  const n = name.toLowerCase().replace(/\.$/, '');
  return p.domains.includes(n) || p.wildcards.some((w) => n.endsWith(`.${w}`));
}

/** Whether a name has egress rules (an exact domain or a wildcard over it). */
export function nameHasRules(p: EgressPolicy, name: string): boolean {
  const n = name.toLowerCase().replace(/\.$/, '');
  return p.ruleDomains.some((d) => (d.startsWith('*.') ? n.endsWith(d.slice(1)) : d === n));
}

/** The default policy: nothing allowed or denied beyond what is always blocked (a new slot's). */
export function isOpenPolicy(p: EgressPolicy): boolean {
  return !p.allowCidrs.length && !p.denyCidrs.length && !p.domains.length && !p.wildcards.length && !p.ruleDomains.length && !p.tunnel;
}
