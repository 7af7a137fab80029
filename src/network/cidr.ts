// IPv4 addresses and CIDR blocks: parsing (strict), containment, and the slot address plan.

export interface Cidr {
  /** Network address as an unsigned 32-bit number. */
  base: number;
  prefix: number;
}

const OCTET = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$/;

/** An IPv4 address in dotted form to a number; undefined if it is not one. */
export function parseIp(text: string): number | undefined {
  const parts = text.split('.');
  if (parts.length !== 4 || !parts.every((p) => OCTET.test(p))) return undefined;
  return parts.reduce((n, p) => n * 256 + Number(p), 0);
}

export function formatIp(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

function mask(prefix: number): number {
  return prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
}

/** `a.b.c.d/n` or a bare address (a /32); undefined if it is neither. Host bits are cleared. */
export function parseCidr(text: string): Cidr | undefined {
  const [ip, len, extra] = text.split('/');
  if (extra !== undefined || ip === undefined) return undefined;
  const addr = parseIp(ip);
  if (addr === undefined) return undefined;
  if (len === undefined) return { base: addr, prefix: 32 };
  if (!/^(3[0-2]|[12]?\d)$/.test(len)) return undefined;
  const prefix = Number(len);
  return { base: (addr & mask(prefix)) >>> 0, prefix };
}

export function formatCidr(c: Cidr): string {
  return `${formatIp(c.base)}/${c.prefix}`;
}

export function contains(c: Cidr, ip: number): boolean {
  return (ip & mask(c.prefix)) >>> 0 === c.base;
}

export function overlaps(a: Cidr, b: Cidr): boolean {
  const p = Math.min(a.prefix, b.prefix);
  return (a.base & mask(p)) >>> 0 === (b.base & mask(p)) >>> 0;
}

/** Addresses sandboxes must never reach unless the operator says so (link-local holds the metadata address). */
export const NEVER_REACHABLE = ['169.254.0.0/16', '0.0.0.0/8', '127.0.0.0/8', '224.0.0.0/4', '240.0.0.0/4'];
/** The host's private networks: blocked unless the operator allows them (--allow-private). */
export const PRIVATE_NETWORKS = ['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', '100.64.0.0/10'];

/** A sandbox address pool as --subnet gives it: a CIDR block between a /8 and a /24. */
export function parsePool(text: string): Cidr {
  const c = parseCidr(text);
  if (!c || !text.includes('/')) throw new Error(`--subnet must be an IPv4 CIDR block such as 10.200.0.0/16, got '${text}'`);
  if (c.prefix > 24 || c.prefix < 8) throw new Error(`--subnet must be between a /8 and a /24, got /${c.prefix}`);
  return c;
}

/** The prefix of one instance's block of a pool: 1024 slots, as many as an instance has sandboxes (ID_SLOTS). */
export const INSTANCE_BLOCK_PREFIX = 21;

/**
 * The address plan of a sandbox subnet: slot n is a point-to-point /31, the host's end at
 * base + 2n and the sandbox's at base + 2n + 1. Routed links (no bridge) put every packet
 * between two sandboxes through the host's forward hook, where the policy drops it.
 */
export class AddressPlan {
  readonly subnet: Cidr;
  readonly slots: number;

  constructor(subnet: string) {
    this.subnet = parsePool(subnet);
    this.slots = 2 ** (32 - this.subnet.prefix) / 2;
  }

  hostAddress(slot: number): string {
    return formatIp(this.subnet.base + 2 * slot);
  }

  sandboxAddress(slot: number): string {
    return formatIp(this.subnet.base + 2 * slot + 1);
  }

  /** The slot whose sandbox has this address, or undefined. */
  slotOf(address: string): number | undefined {
    const ip = parseIp(address);
    if (ip === undefined || !contains(this.subnet, ip)) return undefined;
    const off = ip - this.subnet.base;
    return off % 2 === 1 ? (off - 1) / 2 : undefined;
  }
}

/**
 * The CIDR blocks covering `from` less every address in `remove` (halving a block around
 * what is removed from it). Used to carve --allow-private out of the blocked networks.
 */
export function subtractCidrs(from: string[], remove: string[]): string[] {
  const cut = remove.map((text) => {
    const c = parseCidr(text.trim());
    if (!c) throw new Error(`--allow-private takes IPv4 addresses and CIDR blocks, got '${text}'`);
    return c;
  });
  const out: string[] = [];
  const walk = (c: Cidr): void => {
    const hits = cut.filter((r) => overlaps(r, c));
    if (!hits.length) out.push(formatCidr(c));
    else if (hits.some((r) => r.prefix <= c.prefix))
      return; // all of it is allowed
    else {
      const half = 2 ** (32 - c.prefix - 1);
      walk({ base: c.base, prefix: c.prefix + 1 });
      walk({ base: c.base + half, prefix: c.prefix + 1 });
    }
  };
  for (const text of from) {
    const c = parseCidr(text);
    if (c) walk(c);
  }
  return out;
}
