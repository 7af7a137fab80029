// The egress proxy: nftables sends a sandbox's TCP 80/443 to addresses of names with rules or
// names allowOut grants (rules.ts, set p<N>) here. The sandbox is known by the connection's
// source address (its link's, anti-spoofed), never by anything it sends. The name it asks for
// (SNI, Host) must be one its policy allows; the proxy connects to that name's own address.
// A name with rules over HTTPS: TLS is ended here with a certificate of the instance's CA, the
// rules' headers are set (secrets resolved now, on the host) and the request goes on over a
// verified TLS connection. Anything else passes through untouched (the sandbox's own TLS).
import { Agent, request as httpsRequest } from 'node:https';
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import { hostOf, MAX_PEEK, sniOf, type Peek } from './client-hello.js';
import type { EgressCa } from './egress-ca.js';
import { resolvePlaceholders, ruleHeaders, rulesFor } from './egress-rules.js';
import { parseCidr, contains, parseIp } from './cidr.js';
import { egressPolicy, nameAllowed, type NetworkSettings } from './policy.js';

export interface EgressProxyDeps {
  /** The sandbox at a source address: its id, team and settings; undefined for anything else. */
  lookup(address: string): { sandboxId: string; team: string; settings: NetworkSettings } | undefined;
  /** The IPv4 addresses of a name (the DNS forwarder's upstreams). */
  resolve(name: string): Promise<string[]>;
  /** Whether no sandbox may reach the address at all. */
  blocked(address: string): boolean;
  /** A secret's value for a team, or undefined. */
  secret(team: string, name: string): Promise<string | undefined>;
  ca: EgressCa;
  /** CA certificates the destinations are verified against instead of the host's (tests). */
  upstreamCa?: Buffer;
  /** Connections one sandbox may have through the proxy at once. */
  maxPerSandbox?: number;
  log: Logger;
}

/** What the proxy did, since start (no ids, no values): Prometheus reads them. */
export interface EgressCounts {
  injected: number;
  passedThrough: number;
  refusedName: number;
  refusedOther: number;
}

export const DEFAULT_MAX_PER_SANDBOX = 256;
const PEEK_TIMEOUT_MS = 10_000;
const IDLE_TIMEOUT_MS = 300_000;
/** Hop-by-hop headers: never passed on (RFC 9110 7.6.1), plus what the proxy sets itself. */
const HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'host']);

interface Terminated {
  /** The sandbox's address: its settings are read again for each request (live updates apply). */
  source: string;
  name: string;
  address: string;
  agent: Agent;
}

export class EgressProxy {
  readonly counts: EgressCounts = { injected: 0, passedThrough: 0, refusedName: 0, refusedOther: 0 };
  private tls: Server | undefined;
  private http: Server | undefined;
  private readonly perSource = new Map<string, number>();
  private readonly sockets = new Set<Socket>();
  private readonly terminated = new WeakMap<object, Terminated>();
  /** Parses the requests of ended-TLS connections (it never listens). */
  private readonly inner = createHttpServer({ requestTimeout: 0, headersTimeout: 30_000 }, (req, res) => void this.forward(req, res));

  constructor(private readonly deps: EgressProxyDeps) {
    this.inner.on('clientError', (_e, s) => s.destroy());
  }

  /** Listens on two ports of every address (nftables lets only redirected sandbox connections in). */
  async start(): Promise<{ tls: number; http: number }> {
    this.tls = createServer((s) => this.accept(s, 443));
    this.http = createServer((s) => this.accept(s, 80));
    const listen = (srv: Server) =>
      new Promise<number>((resolve, reject) => {
        srv.once('error', reject);
        srv.listen(0, '0.0.0.0', () => resolve((srv.address() as { port: number }).port));
      });
    return { tls: await listen(this.tls), http: await listen(this.http) };
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
    await Promise.all([this.tls, this.http].map((srv) => new Promise<void>((r) => (srv ? srv.close(() => r()) : r()))));
    this.inner.close();
  }

  /** Connections open now (for tests and the leak check). */
  open(): number {
    return this.sockets.size;
  }

  private accept(sock: Socket, port: 443 | 80): void {
    const source = (sock.remoteAddress ?? '').replace(/^::ffff:/, '');
    const who = this.deps.lookup(source);
    const n = (this.perSource.get(source) ?? 0) + 1;
    this.perSource.set(source, n);
    this.sockets.add(sock);
    sock.once('close', () => {
      this.sockets.delete(sock);
      const left = (this.perSource.get(source) ?? 1) - 1;
      if (left) this.perSource.set(source, left);
      else this.perSource.delete(source);
    });
    sock.on('error', () => sock.destroy());
    if (!who || n > (this.deps.maxPerSandbox ?? DEFAULT_MAX_PER_SANDBOX)) {
      this.counts.refusedOther++;
      sock.destroy();
      return;
    }
    sock.setTimeout(PEEK_TIMEOUT_MS, () => sock.destroy());
    let buf = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      const name: Peek = port === 443 ? sniOf(buf) : hostOf(buf);
      if (name === undefined && buf.length < MAX_PEEK) return;
      sock.off('data', onData);
      sock.pause();
      void this.route(sock, port, buf, name || null, source, who.settings).catch((err: Error) => {
        this.deps.log.debug({ err: err.message }, 'egress proxy: connection failed');
        sock.destroy();
      });
    };
    sock.on('data', onData);
  }

  /** Where a connection goes, once its name is read. */
  private async route(sock: Socket, port: 443 | 80, head: Buffer, name: string | null, source: string, settings: NetworkSettings): Promise<void> {
    const policy = egressPolicy(settings);
    if (!name || !nameAllowed(policy, name)) {
      // a name the policy does not allow (or none) on an address an allowed name shares
      this.counts.refusedName++;
      sock.destroy();
      return;
    }
    const address = await this.addressOf(name, settings);
    if (!address) {
      this.counts.refusedOther++;
      sock.destroy();
      return;
    }
    sock.setTimeout(IDLE_TIMEOUT_MS, () => sock.destroy());
    const rules = port === 443 ? rulesFor(settings.rules, name) : undefined;
    if (!rules) return this.passThrough(sock, head, address, port);
    // end the sandbox's TLS here: the bytes read so far go back in front of the stream
    const context = await this.deps.ca.contextFor(name);
    sock.unshift(head);
    const tls = new TLSSocket(sock, { isServer: true, secureContext: context, ALPNProtocols: ['http/1.1'] });
    tls.on('error', () => tls.destroy());
    const agent = new Agent({ keepAlive: true, maxSockets: 8, ca: this.deps.upstreamCa });
    tls.once('close', () => agent.destroy());
    this.terminated.set(tls, { source, name, address, agent });
    this.inner.emit('connection', tls);
  }

  /** The first address of the name that the sandbox may reach (never a blocked or denied one). */
  private async addressOf(name: string, settings: NetworkSettings): Promise<string | undefined> {
    const p = egressPolicy(settings);
    const allowed = p.allowCidrs.map((c) => parseCidr(c)!);
    const denied = p.denyCidrs.map((c) => parseCidr(c)!);
    const granted = p.domains.includes(name) || p.wildcards.some((w) => name.endsWith(`.${w}`));
    for (const a of await this.deps.resolve(name)) {
      const ip = parseIp(a);
      if (ip === undefined || this.deps.blocked(a)) continue;
      if (granted || allowed.some((c) => contains(c, ip)) || !denied.some((c) => contains(c, ip))) return a;
    }
    return undefined;
  }

  private passThrough(sock: Socket, head: Buffer, address: string, port: number): void {
    const up = connect({ host: address, port });
    this.sockets.add(up);
    up.once('close', () => this.sockets.delete(up));
    up.setTimeout(IDLE_TIMEOUT_MS, () => up.destroy());
    up.on('error', () => sock.destroy());
    sock.on('error', () => up.destroy());
    sock.once('close', () => up.destroy());
    up.once('close', () => sock.destroy());
    up.once('connect', () => {
      this.counts.passedThrough++;
      up.write(head);
      sock.pipe(up);
      up.pipe(sock);
      sock.resume();
    });
  }

  /** One request of an ended-TLS connection: the rules' headers set, sent on to the real destination, streamed both ways. */
  private async forward(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const t = this.terminated.get(req.socket);
    const who = t && this.deps.lookup(t.source);
    if (!t || !who) return void res.destroy();
    const host = (req.headers.host ?? '').toLowerCase().replace(/:\d+$/, '').replace(/\.$/, '');
    if (host !== t.name) return this.answer(res, 421, 'the Host of this request is not the name the connection was made for');
    const headers: Record<string, string | string[]> = {};
    for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) {
      const k = req.rawHeaders[i]!;
      const lk = k.toLowerCase();
      if (HOP.has(lk)) continue;
      const prev = headers[lk];
      headers[lk] = prev === undefined ? req.rawHeaders[i + 1]! : [...(Array.isArray(prev) ? prev : [prev]), req.rawHeaders[i + 1]!];
    }
    // the rules of the name now (a live update applies to the next request)
    const rules = rulesFor(who.settings.rules, t.name) ?? [];
    for (const [k, v] of Object.entries(ruleHeaders(rules))) {
      const value = await resolvePlaceholders(v, (n) => this.deps.secret(who.team, n));
      if (value === undefined) return this.answer(res, 502, `a secret the egress rules of ${t.name} name is missing`);
      headers[k] = value;
    }
    headers.host = req.headers.host!;
    const up = httpsRequest({
      host: t.name,
      // the address checked for this sandbox, never a new lookup
      lookup: ((_h: string, o: { all?: boolean }, cb: (...a: unknown[]) => void) =>
        o.all ? cb(null, [{ address: t.address, family: 4 }]) : cb(null, t.address, 4)) as never,
      port: 443,
      method: req.method,
      path: req.url,
      headers,
      agent: t.agent,
    });
    this.counts.injected++;
    up.on('response', (r) => {
      const out: string[] = [];
      for (let i = 0; i + 1 < r.rawHeaders.length; i += 2)
        if (!HOP.has(r.rawHeaders[i]!.toLowerCase()) || /^host$/i.test(r.rawHeaders[i]!)) out.push(r.rawHeaders[i]!, r.rawHeaders[i + 1]!);
      res.writeHead(r.statusCode ?? 502, r.statusMessage, out);
      r.pipe(res);
      r.on('error', () => res.destroy());
    });
    up.on('error', (err) => {
      if (!res.headersSent) this.answer(res, 502, `the egress proxy could not reach ${t.name}: ${err.message}`);
      else res.destroy();
    });
    req.on('error', () => up.destroy());
    res.on('close', () => {
      if (!res.writableFinished) up.destroy();
    });
    req.pipe(up);
  }

  private answer(res: ServerResponse, status: number, text: string): void {
    res.writeHead(status, { 'content-type': 'text/plain', connection: 'close' });
    res.end(`${text}\n`);
  }
}
