// The DNS forwarder sandboxes use (nftables redirects every DNS packet from a sandbox link to
// it, whatever server it was sent to). Under a restricted policy it answers only allowed
// names and never forwards others, so no data leaves in their queries; the addresses it
// resolves for allowed names become reachable for that sandbox, for the record's TTL.
import { randomInt } from 'node:crypto';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { readFileSync } from 'node:fs';
import { createServer, connect as tcpConnect, type Server, type Socket } from 'node:net';
import type { Logger } from 'pino';
import { answerAddresses, answers, buildQuery, emptyAnswer, readQuery, RCODE_REFUSED, RCODE_SERVFAIL, TYPE_A, TYPE_AAAA } from './dns-wire.js';
import { nameAllowed, nameGrantsAddresses, nameHasRules, type EgressPolicy } from './policy.js';

export interface Upstream {
  host: string;
  port: number;
}

export interface ForwarderDeps {
  /** The sandbox at a source address and its policy; undefined for anything else. */
  lookup(address: string): { sandboxId: string; policy: EgressPolicy } | undefined;
  /** Makes resolved addresses of an allowed name reachable for the sandbox. */
  allowResolved(sandboxId: string, addresses: string[], ttlSec: number): Promise<void>;
  /** Sends the sandbox's 80/443 to resolved addresses of a name with rules or a granted name through the egress proxy. */
  proxyResolved?(sandboxId: string, addresses: string[], ttlSec: number): Promise<void>;
  upstreams: Upstream[];
  log: Logger;
}

const UPSTREAM_TIMEOUT_MS = 3000;
/** Queries in flight per sandbox address; more are refused (a flood slows only its sender). */
const MAX_IN_FLIGHT = 64;
const MAX_TCP_PER_SOURCE = 8;
/** Queries per second each sandbox address may send, and the burst it may save up; past it, queries are dropped. */
export const QUERY_RATE = 100;
export const QUERY_BURST = 200;
/** Tries at a port free for both UDP and TCP before giving up. */
const PORT_PAIR_TRIES = 64;

/** The host's resolvers from /etc/resolv.conf (the default upstreams). */
export function systemUpstreams(file = '/etc/resolv.conf'): Upstream[] {
  try {
    return readFileSync(file, 'utf8')
      .split('\n')
      .map((l) => /^\s*nameserver\s+(\d+\.\d+\.\d+\.\d+)\s*$/.exec(l)?.[1])
      .filter((h): h is string => !!h)
      .map((host) => ({ host, port: 53 }));
  } catch {
    return [];
  }
}

/** `ip[:port]` items, comma-separated. */
export function parseUpstreams(text: string): Upstream[] {
  return text
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
    .map((s) => {
      const m = /^(\d+\.\d+\.\d+\.\d+)(?::(\d+))?$/.exec(s);
      if (!m) throw new Error(`a DNS upstream must be an IPv4 address with an optional port, got '${s}'`);
      return { host: m[1]!, port: m[2] ? Number(m[2]) : 53 };
    });
}

export class DnsForwarder {
  private udp: UdpSocket | undefined;
  private tcp: Server | undefined;
  private readonly inFlight = new Map<string, number>();
  private readonly tcpConns = new Map<string, number>();
  private readonly sockets = new Set<Socket>();
  private readonly buckets = new Map<string, { tokens: number; at: number }>();
  private closed = false;
  port = 0;
  /** Queries dropped by the per-sandbox rate limit (since start). */
  dropped = 0;

  constructor(private readonly deps: ForwarderDeps) {}

  /**
   * Listens on one port for UDP and TCP on every address; nftables lets only sandbox links
   * reach it. Port 0: any port free for both (a free UDP port may be taken for TCP: then another).
   */
  async start(port = 0): Promise<number> {
    for (let attempt = 1; ; attempt++) {
      const udp = await bindUdp(port);
      const chosen = udp.address().port;
      const tcp = createServer((sock) => this.serveTcp(sock));
      try {
        await new Promise<void>((resolve, reject) => {
          tcp.once('error', reject);
          tcp.listen(chosen, '0.0.0.0', () => resolve());
        });
      } catch (err) {
        udp.close();
        if (port !== 0 || (err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || attempt >= PORT_PAIR_TRIES) throw err;
        continue;
      }
      this.port = chosen;
      this.listen(udp, tcp);
      return chosen;
    }
  }

  private listen(udp: UdpSocket, tcp: Server): void {
    udp.on('message', (msg, rinfo) => {
      void this.answer(msg, rinfo.address).then((out) => {
        if (out && !this.closed) udp.send(out, rinfo.port, rinfo.address);
      });
    });
    udp.on('error', (err) => this.deps.log.warn({ err: err.message }, 'DNS forwarder (udp) error'));
    tcp.on('error', (err) => this.deps.log.warn({ err: err.message }, 'DNS forwarder (tcp) error'));
    this.udp = udp;
    this.tcp = tcp;
  }

  /** Stops listening and ends every open TCP connection now (close does not wait for clients). */
  async close(): Promise<void> {
    this.closed = true;
    const udp = this.udp;
    const tcp = this.tcp;
    this.udp = this.tcp = undefined;
    const udpClosed = new Promise<void>((r) => (udp ? udp.close(() => r()) : r()));
    const tcpClosed = new Promise<void>((r) => (tcp ? tcp.close(() => r()) : r()));
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
    await Promise.all([udpClosed, tcpClosed]);
  }

  /** Whether a source may send one more query now (a token bucket per sandbox address). */
  private admit(source: string): boolean {
    const now = Date.now();
    let b = this.buckets.get(source);
    if (!b) {
      if (this.buckets.size >= 4096) for (const [k, v] of this.buckets) if (now - v.at > 10_000) this.buckets.delete(k);
      this.buckets.set(source, (b = { tokens: QUERY_BURST, at: now }));
    }
    b.tokens = Math.min(QUERY_BURST, b.tokens + ((now - b.at) / 1000) * QUERY_RATE);
    b.at = now;
    if (b.tokens < 1) {
      this.dropped++;
      return false;
    }
    b.tokens--;
    return true;
  }

  /** The answer to one query from a source address, or undefined to drop it. */
  async answer(msg: Buffer, source: string, transport: 'udp' | 'tcp' = 'udp'): Promise<Buffer | undefined> {
    const who = this.deps.lookup(source);
    if (who && !this.admit(source)) return undefined;
    const read = readQuery(msg);
    if (!read) return undefined;
    if ('refusal' in read) return read.refusal;
    const { q } = read;
    if (!who) return emptyAnswer(msg, q, RCODE_REFUSED);
    if (!nameAllowed(who.policy, q.name)) return emptyAnswer(msg, q, RCODE_REFUSED);
    // sandboxes have IPv4 egress only: an AAAA answer would only send clients down a dead path first
    if (q.type === TYPE_AAAA) return emptyAnswer(msg, q, 0);
    const n = this.inFlight.get(source) ?? 0;
    if (n >= MAX_IN_FLIGHT) return emptyAnswer(msg, q, RCODE_REFUSED);
    this.inFlight.set(source, n + 1);
    try {
      // only the rebuilt query leaves the host, under an id of the forwarder's
      const id = randomInt(0x10000);
      const reply = await this.forward(buildQuery(q, id), id, transport);
      if (!reply) return emptyAnswer(msg, q, RCODE_SERVFAIL);
      reply.writeUInt16BE(q.id, 0);
      const grants = nameGrantsAddresses(who.policy, q.name);
      const proxied = this.deps.proxyResolved && (grants || nameHasRules(who.policy, q.name));
      if (grants || proxied) {
        const { addresses, ttl } = answerAddresses(reply);
        // reachable (and proxied) before the sandbox reads the answer, so its first connect goes the right way
        if (addresses.length && proxied) await this.deps.proxyResolved!(who.sandboxId, addresses, ttl);
        if (addresses.length && grants) await this.deps.allowResolved(who.sandboxId, addresses, ttl);
      }
      return reply;
    } catch (err) {
      this.deps.log.debug({ err: (err as Error).message, name: q.name }, 'DNS forward failed');
      return emptyAnswer(msg, q, RCODE_SERVFAIL);
    } finally {
      const left = (this.inFlight.get(source) ?? 1) - 1;
      if (left) this.inFlight.set(source, left);
      else this.inFlight.delete(source);
    }
  }

  /** The IPv4 addresses of a name, asked of the upstreams (the egress proxy resolves the names it connects to). */
  async resolve4(name: string): Promise<string[]> {
    const id = randomInt(0x10000);
    const q = { id, name, labels: name.split('.'), type: TYPE_A, flags: 0x0100, end: 0 };
    const reply = await this.forward(buildQuery(q, id), id, 'udp');
    return reply ? answerAddresses(reply).addresses : [];
  }

  /** Asks the upstreams in turn. */
  private async forward(msg: Buffer, id: number, transport: 'udp' | 'tcp'): Promise<Buffer | undefined> {
    for (const up of this.deps.upstreams) {
      const reply = await (transport === 'udp' ? udpExchange(up, msg, id) : tcpExchange(up, msg, id)).catch(() => undefined);
      if (reply) return reply;
    }
    return undefined;
  }

  private serveTcp(sock: Socket): void {
    const source = (sock.remoteAddress ?? '').replace(/^::ffff:/, '');
    const open = (this.tcpConns.get(source) ?? 0) + 1;
    this.tcpConns.set(source, open);
    this.sockets.add(sock);
    sock.once('close', () => {
      this.sockets.delete(sock);
      const left = (this.tcpConns.get(source) ?? 1) - 1;
      if (left) this.tcpConns.set(source, left);
      else this.tcpConns.delete(source);
    });
    if (open > MAX_TCP_PER_SOURCE) {
      sock.destroy();
      return;
    }
    sock.setTimeout(10_000, () => sock.destroy());
    sock.on('error', () => sock.destroy());
    let buf = Buffer.alloc(0);
    sock.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      if (buf.length > 70_000) return sock.destroy();
      while (buf.length >= 2) {
        const len = buf.readUInt16BE(0);
        if (buf.length < 2 + len) break;
        const msg = buf.subarray(2, 2 + len);
        buf = buf.subarray(2 + len);
        void this.answer(Buffer.from(msg), source, 'tcp').then((out) => {
          if (!out || sock.destroyed) return;
          const head = Buffer.alloc(2);
          head.writeUInt16BE(out.length);
          sock.write(Buffer.concat([head, out]));
        });
      }
    });
  }
}

function bindUdp(port: number): Promise<UdpSocket> {
  const udp = createSocket({ type: 'udp4' });
  return new Promise((resolve, reject) => {
    udp.once('error', reject);
    udp.bind(port, '0.0.0.0', () => {
      udp.off('error', reject);
      resolve(udp);
    });
  });
}

function udpExchange(up: Upstream, msg: Buffer, id: number): Promise<Buffer | undefined> {
  return new Promise((resolve) => {
    const s = createSocket('udp4');
    const done = (v: Buffer | undefined) => {
      clearTimeout(timer);
      s.close();
      resolve(v);
    };
    const timer = setTimeout(() => done(undefined), UPSTREAM_TIMEOUT_MS);
    s.on('error', () => done(undefined));
    s.on('message', (m, rinfo) => {
      if (rinfo.address === up.host && answers(m, id)) done(m);
    });
    s.send(msg, up.port, up.host);
  });
}

function tcpExchange(up: Upstream, msg: Buffer, id: number): Promise<Buffer | undefined> {
  return new Promise((resolve) => {
    const s = tcpConnect({ host: up.host, port: up.port });
    let buf = Buffer.alloc(0);
    const done = (v: Buffer | undefined) => {
      clearTimeout(timer);
      s.destroy();
      resolve(v);
    };
    const timer = setTimeout(() => done(undefined), UPSTREAM_TIMEOUT_MS);
    s.on('error', () => done(undefined));
    s.on('connect', () => {
      const head = Buffer.alloc(2);
      head.writeUInt16BE(msg.length);
      s.write(Buffer.concat([head, msg]));
    });
    s.on('data', (c: Buffer) => {
      buf = Buffer.concat([buf, c]);
      if (buf.length > 70_000) return done(undefined);
      if (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        const m = buf.subarray(2, 2 + buf.readUInt16BE(0));
        done(answers(m, id) ? Buffer.from(m) : undefined);
      }
    });
  });
}
