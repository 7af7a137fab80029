// The egress proxy: nftables sends a sandbox's TCP 80/443 to addresses of names with rules or
// names allowOut grants (rules.ts, set p<N>) here. The sandbox is known by the connection's
// source address (its link's, anti-spoofed), never by anything it sends. The name it asks for
// (SNI, Host) must be one its policy allows; the proxy connects to that name's own address.
// A name with rules over HTTPS: TLS is ended here with a certificate of the instance's CA, the
// rules' headers are set (secrets resolved now, on the host) and the request goes on over a
// verified TLS connection. Anything else passes through untouched (the sandbox's own TLS).
// A sandbox with an upstream proxy (egressProxy): the rest of its outbound TCP comes to the
// tunnel port; the proxy finds where it was going (conntrack.ts) and sends it through the
// upstream SOCKS5 proxy, as it does its own connections for that sandbox. The proxy's
// credentials are added here, on the host: the sandbox never sees them.
import { Agent, request as httpsRequest, type AgentOptions } from 'node:https';
import { ClientRequest, createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { connect as tlsConnect, TLSSocket, type ConnectionOptions } from 'node:tls';
import type { Logger } from 'pino';
import { createSecureServer, Http2ServerRequest, Http2ServerResponse } from 'node:http2';
import { hostOf, MAX_PEEK, offersH2, sniOf, type Peek } from './client-hello.js';
import type { EgressCa } from './egress-ca.js';
import { resolvePlaceholders, ruleHeaders, rulesFor } from './egress-rules.js';
import { parseCidr, contains, parseIp } from './cidr.js';
import { originalDst, type Endpoint } from './conntrack.js';
import { egressPolicy, nameAllowed, proxyHostPort, type NetworkSettings, type UpstreamProxy } from './policy.js';
import type { ProxyPorts } from './rules.js';
import { socks5Connect } from './socks5.js';

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
  /** Where a connection redirected to the tunnel port was going (default: the kernel's conntrack entry). */
  originalDst?(local: Endpoint, remote: Endpoint): Promise<Endpoint | undefined>;
  log: Logger;
}

/** What the proxy did, since start (no ids, no values): Prometheus reads them. */
export interface EgressCounts {
  injected: number;
  passedThrough: number;
  refusedName: number;
  refusedOther: number;
  /** Connections sent through an upstream proxy, and those it refused or could not be reached for. */
  tunnelled: number;
  tunnelFailed: number;
}

export const DEFAULT_MAX_PER_SANDBOX = 256;
const PEEK_TIMEOUT_MS = 10_000;
const IDLE_TIMEOUT_MS = 300_000;
const MAX_H2_STREAMS = 100;
/**
 * Stream buffers of the sandbox side of a terminated connection (Node's default is 16 KiB). With
 * the default, each 16 KiB TLS record of a body fills the buffer, so the upstream read stops and
 * starts again per record: a third of the proxy's CPU on a large body. Still a bound per connection.
 */
const SANDBOX_SIDE = { highWaterMark: 256 * 1024 };
/** Hop-by-hop headers: never passed on (RFC 9110 7.6.1), plus what the proxy sets itself. */
const HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'host']);

interface Terminated {
  /** The sandbox's address: its settings are read again for each request (live updates apply). */
  source: string;
  sandboxId: string;
  name: string;
  address: string;
}

/** How long a name's addresses are kept, and how many names. */
const NAME_TTL_MS = 30_000;
const NAME_CACHE = 4096;

export class EgressProxy {
  readonly counts: EgressCounts = { injected: 0, passedThrough: 0, refusedName: 0, refusedOther: 0, tunnelled: 0, tunnelFailed: 0 };
  private tls: Server | undefined;
  private http: Server | undefined;
  private tunnel: Server | undefined;
  private readonly perSource = new Map<string, number>();
  private readonly sockets = new Set<Socket>();
  private readonly terminated = new WeakMap<object, Terminated>();
  /** Upstream connections kept for reuse, per sandbox (never shared between sandboxes). */
  private readonly agents = new Map<string, Agent>();
  private readonly names = new Map<string, { addresses: string[]; until: number }>();
  /** Parses the requests of ended-TLS connections (it never listens). */
  private readonly inner = createHttpServer(
    { requestTimeout: 0, headersTimeout: 30_000, ...SANDBOX_SIDE },
    (req, res) => void this.forward(req, res).catch(() => res.destroy()),
  );
  /**
   * Ends the TLS of connections whose client offers HTTP/2 (it never listens): the sandbox's side
   * speaks h2, the destination's stays HTTP/1.1. Its certificate is the name's (SNI, checked before).
   */
  private readonly h2 = createSecureServer(
    {
      allowHTTP1: false,
      SNICallback: (name, cb) =>
        void this.deps.ca.contextFor(name).then(
          (c) => cb(null, c),
          (e: Error) => cb(e, undefined),
        ),
      // streams at once per connection: each may wait for one of the sandbox's upstream connections
      settings: { initialWindowSize: SANDBOX_SIDE.highWaterMark, maxConcurrentStreams: MAX_H2_STREAMS },
    },
    (req, res) => void this.forward(req, res).catch(() => res.destroy()),
  );

  constructor(private readonly deps: EgressProxyDeps) {
    this.inner.on('clientError', (_e, s) => s.destroy());
    this.h2.on('session', (s) => s.setTimeout(IDLE_TIMEOUT_MS, () => s.destroy()));
    this.h2.on('tlsClientError', (_e, s) => s.destroy());
    this.inner.on('upgrade', (req: IncomingMessage, sock: Socket, head: Buffer) => void this.upgrade(req, sock, head).catch(() => sock.destroy()));
  }

  /** Listens on three ports of every address (nftables lets only redirected sandbox connections in). */
  async start(): Promise<ProxyPorts> {
    // no Nagle: a request's or answer's last small segment goes at once (as Node's HTTP servers do)
    this.tls = createServer({ noDelay: true }, (s) => this.accept(s, 443));
    this.http = createServer({ noDelay: true }, (s) => this.accept(s, 80));
    this.tunnel = createServer({ noDelay: true }, (s) => this.accept(s, 'tunnel'));
    const listen = (srv: Server) =>
      new Promise<number>((resolve, reject) => {
        srv.once('error', reject);
        srv.listen(0, '0.0.0.0', () => resolve((srv.address() as { port: number }).port));
      });
    return { tls: await listen(this.tls), http: await listen(this.http), tunnel: await listen(this.tunnel) };
  }

  async close(): Promise<void> {
    for (const a of this.agents.values()) a.destroy();
    this.agents.clear();
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
    await Promise.all([this.tls, this.http, this.tunnel].map((srv) => new Promise<void>((r) => (srv ? srv.close(() => r()) : r()))));
    this.inner.close();
    this.h2.close();
  }

  /** Connections open now (for tests and the leak check). */
  open(): number {
    return this.sockets.size;
  }

  private accept(sock: Socket, port: 443 | 80 | 'tunnel'): void {
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
    if (port === 'tunnel') {
      sock.pause();
      void this.throughUpstream(sock, source, who.settings).catch((err: Error) => {
        this.counts.tunnelFailed++;
        this.deps.log.debug({ err: err.message }, 'egress proxy: tunnelled connection failed');
        sock.destroy();
      });
      return;
    }
    let buf = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      const name: Peek = port === 443 ? sniOf(buf) : hostOf(buf);
      if (name === undefined && buf.length < MAX_PEEK) return;
      sock.off('data', onData);
      sock.pause();
      void this.route(sock, port, buf, name || null, source, who.sandboxId, who.settings).catch((err: Error) => {
        this.deps.log.debug({ err: err.message }, 'egress proxy: connection failed');
        sock.destroy();
      });
    };
    sock.on('data', onData);
  }

  /** Where a connection goes, once its name is read. */
  private async route(
    sock: Socket,
    port: 443 | 80,
    head: Buffer,
    name: string | null,
    source: string,
    sandboxId: string,
    settings: NetworkSettings,
  ): Promise<void> {
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
    if (!rules) {
      this.pipe(sock, await this.dial(settings.egressProxy, address, port), head);
      this.counts.passedThrough++;
      return;
    }
    // end the sandbox's TLS here: the bytes read so far go back in front of the stream
    const context = await this.deps.ca.contextFor(name);
    sock.unshift(head);
    sock.setTimeout(0); // the TLS socket reads the connection from now on: its own activity keeps it
    if (offersH2(head)) return void this.h2.emit('connection', sock);
    const tls = new TLSSocket(sock, { isServer: true, secureContext: context, ALPNProtocols: ['http/1.1'], ...SANDBOX_SIDE });
    tls.setNoDelay(true);
    tls.setTimeout(IDLE_TIMEOUT_MS, () => tls.destroy());
    tls.on('error', () => tls.destroy());
    this.terminated.set(tls, { source, sandboxId, name, address });
    this.inner.emit('connection', tls);
  }

  /** The first address of the name that the sandbox may reach (never a blocked or denied one). */
  private async addressOf(name: string, settings: NetworkSettings): Promise<string | undefined> {
    const p = egressPolicy(settings);
    const allowed = p.allowCidrs.map((c) => parseCidr(c)!);
    const denied = p.denyCidrs.map((c) => parseCidr(c)!);
    const granted = p.domains.includes(name) || p.wildcards.some((w) => name.endsWith(`.${w}`));
    for (const a of await this.resolve(name)) {
      const ip = parseIp(a);
      if (ip === undefined || this.deps.blocked(a)) continue;
      if (granted || allowed.some((c) => contains(c, ip)) || !denied.some((c) => contains(c, ip))) return a;
    }
    return undefined;
  }

  private async resolve(name: string): Promise<string[]> {
    const now = Date.now();
    const hit = this.names.get(name);
    if (hit && hit.until > now) return hit.addresses;
    const addresses = await this.deps.resolve(name);
    if (this.names.size >= NAME_CACHE) this.names.clear();
    if (addresses.length) this.names.set(name, { addresses, until: now + NAME_TTL_MS });
    return addresses;
  }

  /**
   * The sandbox's pool of upstream connections (idle ones close after a while; pools of gone
   * sandboxes go), one per upstream proxy setting: a change of proxy takes no old connection.
   */
  private agentOf(sandboxId: string, proxy: UpstreamProxy | undefined): Agent {
    const key = proxy ? `${sandboxId} ${JSON.stringify(proxy)}` : sandboxId;
    let a = this.agents.get(key);
    if (!a) {
      if (this.agents.size >= 1024)
        for (const [id, x] of this.agents)
          if (!Object.keys(x.sockets).length && !Object.keys(x.freeSockets).length) {
            x.destroy();
            this.agents.delete(id);
          }
      a = this.agent(proxy, true);
      this.agents.set(key, a);
    }
    return a;
  }

  /** An agent whose connections go to the checked address (`via`, a request option), through the upstream proxy if any. */
  private agent(proxy: UpstreamProxy | undefined, keepAlive: boolean): Agent {
    const opts: AgentOptions = { keepAlive, maxSockets: 16, timeout: 30_000, ca: this.deps.upstreamCa };
    if (!proxy) return new Agent(opts);
    const a = new Agent(opts);
    // TLS over a socket through the proxy, instead of a TCP connection of the agent's own
    (a as unknown as { createConnection: unknown }).createConnection = (o: ConnectionOptions & { via: string }, cb: (e: Error | null, s?: Socket) => void) => {
      this.dial(proxy, o.via, 443).then(
        (raw) => cb(null, tlsConnect({ ...o, socket: raw })),
        (err: Error) => cb(err),
      );
      return undefined;
    };
    return a;
  }

  /** A connection to the destination: through the sandbox's upstream proxy if it has one, else direct. */
  private async dial(proxy: UpstreamProxy | undefined, address: string, port: number): Promise<Socket> {
    if (!proxy) {
      const up = connect({ host: address, port, noDelay: true });
      await new Promise<void>((resolve, reject) => {
        up.once('connect', resolve);
        up.once('error', reject);
      });
      return up;
    }
    const { host, port: proxyPort } = proxyHostPort(proxy.address);
    // a name is resolved at each dial, and the address is checked like any the sandbox reaches
    // (a proxy address is the tenant's to choose: it must not open the host's own networks)
    const at = parseIp(host) !== undefined ? host : (await this.resolve(host))[0];
    if (!at || this.deps.blocked(at)) throw new Error(`the upstream proxy ${proxy.address} has no address a sandbox may reach`);
    return await socks5Connect({ proxy: { address: at, port: proxyPort }, username: proxy.username, password: proxy.password, address, port });
  }

  /** A connection of the sandbox to the tunnel port: to where it was going, through its upstream proxy. */
  private async throughUpstream(sock: Socket, source: string, settings: NetworkSettings): Promise<void> {
    const proxy = settings.egressProxy;
    const dst =
      proxy &&
      (await (this.deps.originalDst ?? originalDst)(
        { address: (sock.localAddress ?? '').replace(/^::ffff:/, ''), port: sock.localPort ?? 0 },
        { address: source, port: sock.remotePort ?? 0 },
      ));
    if (!dst || this.deps.blocked(dst.address)) throw new Error('no upstream proxy or original destination for a tunnelled connection');
    sock.setTimeout(IDLE_TIMEOUT_MS, () => sock.destroy());
    this.pipe(sock, await this.dial(proxy, dst.address, dst.port), Buffer.alloc(0));
    this.counts.tunnelled++;
  }

  /** Bytes both ways between the sandbox's connection and one to its destination (`head`: what was read of the sandbox's already). */
  private pipe(sock: Socket, up: Socket, head: Buffer): void {
    this.sockets.add(up);
    up.once('close', () => this.sockets.delete(up));
    up.setTimeout(IDLE_TIMEOUT_MS, () => up.destroy());
    up.on('error', () => sock.destroy());
    sock.on('error', () => up.destroy());
    sock.once('close', () => up.destroy());
    up.once('close', () => sock.destroy());
    if (sock.destroyed) return void up.destroy();
    if (head.length) up.write(head);
    sock.pipe(up);
    up.pipe(sock);
    sock.resume();
  }

  /**
   * The request to the real destination for one request of an ended-TLS connection: the Host
   * checked, hop-by-hop headers dropped, the rules' headers set (secrets resolved now); or the
   * status and text to answer instead.
   */
  private async upstream(req: IncomingMessage | Http2ServerRequest, upgrade: boolean): Promise<ClientRequest | { status: number; text: string }> {
    const t = await this.terminatedOf(req);
    const who = t && this.deps.lookup(t.source);
    if (!t || !who) return { status: 502, text: 'the sandbox is gone' };
    const authority = req instanceof Http2ServerRequest ? req.authority : req.headers.host;
    const host = (authority ?? '').toLowerCase().replace(/:\d+$/, '').replace(/\.$/, '');
    if (host !== t.name) return { status: 421, text: 'the Host of this request is not the name the connection was made for' };
    const headers: Record<string, string | string[]> = {};
    for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) {
      const k = req.rawHeaders[i]!.toLowerCase();
      if (HOP.has(k) || k.startsWith(':')) continue; // (and HTTP/2's pseudo-headers)
      const prev = headers[k];
      headers[k] = prev === undefined ? req.rawHeaders[i + 1]! : [...(Array.isArray(prev) ? prev : [prev]), req.rawHeaders[i + 1]!];
    }
    // the rules of the name now (a live update applies to the next request)
    for (const [k, v] of Object.entries(ruleHeaders(rulesFor(who.settings.rules, t.name) ?? []))) {
      const value = await resolvePlaceholders(v, (n) => this.deps.secret(who.team, n));
      if (value === undefined) return { status: 502, text: `a secret the egress rules of ${t.name} name is missing` };
      headers[k] = value;
    }
    headers.host = authority!;
    if (upgrade) Object.assign(headers, { connection: 'Upgrade', upgrade: req.headers.upgrade ?? '' });
    this.counts.injected++;
    return httpsRequest({
      host: t.name,
      // the address checked for this sandbox, never a new lookup
      lookup: ((_h: string, o: { all?: boolean }, cb: (...a: unknown[]) => void) =>
        o.all ? cb(null, [{ address: t.address, family: 4 }]) : cb(null, t.address, 4)) as never,
      port: 443,
      method: req.method,
      path: req.url,
      headers,
      ...{ via: t.address }, // read by the agent of a sandbox with an upstream proxy
      agent: upgrade ? this.agent(who.settings.egressProxy, false) : this.agentOf(t.sandboxId, who.settings.egressProxy),
    });
  }

  /** Where an ended-TLS connection was going: recorded at its start (HTTP/1.1), or read again from its TLS socket (HTTP/2). */
  private async terminatedOf(req: IncomingMessage | Http2ServerRequest): Promise<Terminated | undefined> {
    if (!(req instanceof Http2ServerRequest)) return this.terminated.get(req.socket);
    const tls = req.stream.session?.socket as TLSSocket | undefined;
    const source = (tls?.remoteAddress ?? '').replace(/^::ffff:/, '');
    const name = typeof tls?.servername === 'string' ? tls.servername : '';
    const who = this.deps.lookup(source);
    // the name was checked when the connection came (route); checked again under the policy of now
    if (!who || !name || !nameAllowed(egressPolicy(who.settings), name)) return undefined;
    const address = await this.addressOf(name, who.settings);
    return address ? { source, sandboxId: who.sandboxId, name, address } : undefined;
  }

  /** One request: sent on, streamed both ways. */
  private async forward(req: IncomingMessage | Http2ServerRequest, res: ServerResponse | Http2ServerResponse): Promise<void> {
    const up = await this.upstream(req, false);
    if (!(up instanceof ClientRequest)) return this.answer(res, up.status, up.text);
    up.on('response', (r) => {
      if (res instanceof Http2ServerResponse) res.writeHead(r.statusCode ?? 502, endToEnd(r.rawHeaders) as never);
      else res.writeHead(r.statusCode ?? 502, r.statusMessage, endToEnd(r.rawHeaders));
      r.pipe(res);
      r.on('error', () => res.destroy());
    });
    up.on('error', (err) => {
      if (!res.headersSent) this.answer(res, 502, `the egress proxy could not reach the destination: ${err.message}`);
      else res.destroy();
    });
    req.on('error', () => up.destroy());
    res.on('close', () => {
      if (!res.writableFinished) up.destroy();
    });
    req.pipe(up);
  }

  /** A WebSocket (or other Upgrade) request: once the destination agrees, bytes flow both ways as they are. */
  private async upgrade(req: IncomingMessage, sock: Socket, head: Buffer): Promise<void> {
    const up = await this.upstream(req, true);
    const reply = (status: number, msg: string, raw: string[]) =>
      `HTTP/1.1 ${status} ${msg}\r\n${raw.map((v, i) => (i % 2 ? `${v}\r\n` : `${v}: `)).join('')}\r\n`;
    if (!(up instanceof ClientRequest)) return void sock.end(reply(up.status, 'Refused', ['connection', 'close', 'content-length', '0']));
    up.on('upgrade', (r, upSock, upHead) => {
      sock.write(reply(r.statusCode ?? 101, r.statusMessage ?? '', r.rawHeaders));
      if (upHead.length) sock.write(upHead);
      if (head.length) upSock.write(head);
      upSock.on('error', () => sock.destroy());
      sock.on('close', () => upSock.destroy());
      upSock.on('close', () => sock.destroy());
      upSock.pipe(sock);
      sock.pipe(upSock);
    });
    up.on('response', (r) => {
      sock.write(reply(r.statusCode ?? 502, r.statusMessage ?? '', [...endToEnd(r.rawHeaders), 'connection', 'close']));
      r.pipe(sock);
    });
    up.on('error', () => sock.destroy());
    sock.on('error', () => up.destroy());
    up.end();
  }

  private answer(res: ServerResponse | Http2ServerResponse, status: number, text: string): void {
    res.writeHead(status, { 'content-type': 'text/plain', ...(res instanceof Http2ServerResponse ? {} : { connection: 'close' }) });
    res.end(`${text}\n`);
  }
}

/** A response's headers less the hop-by-hop ones (Node sets its own framing). */
function endToEnd(raw: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) if (!HOP.has(raw[i]!.toLowerCase()) || /^host$/i.test(raw[i]!)) out.push(raw[i]!, raw[i + 1]!);
  return out;
}
