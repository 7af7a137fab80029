// The data-plane proxy: forwards E2B data-plane requests (envd's Connect RPCs, /files, /health,
// ...) to the envd unix socket of the sandbox they name, unbuffered in both directions, over
// one keep-alive agent per sandbox. Contract sections 1, 5.3 and 6.
import { Agent, request as httpRequest, STATUS_CODES, type ClientRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type pino from 'pino';
import { INIT_SECRET_HEADER } from '../envd/host-contract.js';
import { connectGuarded, type GuardedSocket } from '../util/safe-socket.js';
import { classify, ENVD_PORT, matchSignature, type Target } from './routing.js';

export interface SandboxRoute {
  sandboxId: string;
  /** envd's unix socket on the host, reached only through connectGuarded (never by a plain path). */
  socket: GuardedSocket;
  accessToken?: string;
}

export interface RouteResolver {
  /**
   * A running sandbox's envd route; may resume a paused sandbox that has autoResume (only for a
   * request that carries the sandbox's token or a valid signature: hence `req`). undefined =
   * unknown, paused, killed or blocked.
   */
  route(sandboxId: string, req?: IncomingMessage): Promise<SandboxRoute | undefined>;
  /** Running sandboxes with an envd access token, for header-less signed /files requests. */
  signedCandidates(): Iterable<{ sandboxId: string; accessToken: string }>;
}

export interface DataPlaneProxyOptions {
  /** The public sandbox domain (informational: Host routing accepts any domain suffix). */
  domain: string;
  /** envd's port, default 49983: the only port served until sandbox networking lands. */
  envdPort?: number;
  log?: pino.Logger;
}

export interface SandboxTraffic {
  requests: number;
  /** Request body bytes sent to the sandbox. */
  bytesIn: number;
  /** Response body bytes received from the sandbox. */
  bytesOut: number;
  /** Requests and streams open right now. */
  open: number;
}

/** Hop-by-hop headers (RFC 9110 7.6.1), plus Expect: this listener already answered it. */
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'http2-settings',
  'expect',
  // not hop-by-hop, but never a client's to send: only the host authenticates to envd with it
  INIT_SECRET_HEADER,
]);

/** rawHeaders minus hop-by-hop ones and those the Connection header names. */
function endToEnd(raw: string[], keepUpgrade = false): string[] {
  const named = new Set<string>();
  for (let i = 0; i < raw.length; i += 2) {
    if ((raw[i] as string).toLowerCase() === 'connection') {
      for (const t of (raw[i + 1] as string).split(',')) named.add(t.trim().toLowerCase());
    }
  }
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const k = (raw[i] as string).toLowerCase();
    if (keepUpgrade && (k === 'connection' || k === 'upgrade')) {
      out.push(raw[i] as string, raw[i + 1] as string);
      continue;
    }
    if (HOP_BY_HOP.has(k) || (named.has(k) && !(keepUpgrade && k === 'upgrade'))) continue;
    out.push(raw[i] as string, raw[i + 1] as string);
  }
  return out;
}

export function notFoundBody(sandboxId: string): string {
  return JSON.stringify({ sandboxId, message: 'The sandbox was not found', code: 502 });
}

function portBody(sandboxId: string, port: string, envdPort: number): string {
  return JSON.stringify({
    sandboxId,
    message: `Port ${port} of the sandbox is not reachable: only envd's port ${envdPort} is served (sandbox networking is not available yet)`,
    code: 502,
  });
}

function sendJson(res: ServerResponse, status: number, body: string, extra: Record<string, string> = {}): void {
  if (res.headersSent || res.destroyed) {
    res.destroy();
    return;
  }
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body), 'Cache-Control': 'no-store', ...extra });
  res.end(body);
}

function rawResponse(socket: Duplex, status: number, body: string): void {
  if (socket.destroyed) return;
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  );
}

/**
 * envd's /init gives a sandbox its identity (access token, env vars, default user): only the
 * manager calls it, on the sandbox's socket; never a client through the data plane. The path is
 * compared the way envd parses it (URL normalisation) and with runs of slashes collapsed.
 */
export function isInitPath(url: string | undefined): boolean {
  if (!url?.includes('init')) return false;
  const raw = url.split('?')[0] as string;
  const collapsed = raw.replace(/\/+/g, '/').replace(/(.)\/$/, '$1');
  let parsed = '';
  try {
    parsed = new URL(url, 'http://envd').pathname;
  } catch {
    /* unparsable: envd would not route it either */
  }
  return collapsed === '/init' || parsed === '/init' || parsed === '/init/';
}

const INIT_REFUSED = JSON.stringify({ code: 403, message: '/init is not reachable through the data plane' });

/** Whether a request certainly has no body (then it can be retried on a stale keep-alive socket). */
function bodyless(req: IncomingMessage): boolean {
  const len = req.headers['content-length'];
  return req.headers['transfer-encoding'] === undefined && (len === undefined || len === '0');
}

const RETRYABLE = new Set(['ECONNRESET', 'EPIPE']);

/** One proxied request or upgraded connection, so that cut() can destroy it. */
interface Exchange {
  destroyed: boolean;
  upstream?: ClientRequest | Socket;
  /** The sandbox's response being relayed, if it started. */
  upstreamResponse?: IncomingMessage;
  destroy(): void;
  /** Ends the exchange with an error the client can read (falls back to destroy()). */
  interrupt?(message: string): void;
}

/** Why a sandbox stopped serving, as cut() tells clients. */
export type InterruptReason = 'paused' | 'killed';

/**
 * A Connect end-of-stream message (flag 0x02, always JSON) carrying an error: a client
 * reading a server stream sees the reason instead of a broken connection.
 */
export function connectEndStreamError(code: string, message: string): Buffer {
  const body = Buffer.from(JSON.stringify({ error: { code, message } }));
  const head = Buffer.alloc(5);
  head.writeUInt8(0x02, 0);
  head.writeUInt32BE(body.length, 1);
  return Buffer.concat([head, body]);
}

export class DataPlaneProxy {
  private readonly envdPort: number;
  private readonly log?: pino.Logger;
  private readonly agents = new Map<string, { socket: GuardedSocket; agent: Agent }>();
  private readonly open = new Map<string, Set<Exchange>>();
  private readonly traffic = new Map<string, Omit<SandboxTraffic, 'open'>>();
  private closed = false;

  constructor(
    private readonly resolver: RouteResolver,
    readonly opts: DataPlaneProxyOptions,
  ) {
    this.envdPort = opts.envdPort ?? ENVD_PORT;
    this.log = opts.log;
  }

  /** Data plane: has an E2b-Sandbox-Id header, or Host `<port>-<id>.<anything>`, or is a header-less `/files` with a `signature` query. */
  matches(req: IncomingMessage): boolean {
    return classify(req, this.envdPort) !== undefined;
  }

  handle(req: IncomingMessage, res: ServerResponse): void {
    const target = classify(req, this.envdPort);
    if (!target) {
      sendJson(res, 404, JSON.stringify({ code: 404, message: 'not a data-plane request' }));
      return;
    }
    if (this.closed) {
      sendJson(res, 503, JSON.stringify({ code: 503, message: 'the service is shutting down' }), { Connection: 'close' });
      return;
    }
    if (isInitPath(req.url)) {
      sendJson(res, 403, INIT_REFUSED);
      return;
    }
    this.dispatch(target, req, res).catch((err: unknown) => {
      this.log?.error({ err, url: req.url }, 'data-plane proxy failure');
      sendJson(res, 502, JSON.stringify({ code: 502, message: 'data-plane proxy error' }));
    });
  }

  /**
   * Upgrade requests. Only WebSocket is tunnelled, and only after the sandbox answered 101:
   * a raw pipe opened before that would carry every later request on the connection past
   * this proxy's checks (the /init refusal first of all). Other upgrades are refused.
   */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', () => socket.destroy());
    const target = classify(req, this.envdPort);
    if (!target || target.kind !== 'sandbox') {
      rawResponse(socket, 404, JSON.stringify({ code: 404, message: 'not a data-plane request' }));
      return;
    }
    if (this.closed) {
      rawResponse(socket, 503, JSON.stringify({ code: 503, message: 'the service is shutting down' }));
      return;
    }
    if (isInitPath(req.url)) {
      rawResponse(socket, 403, INIT_REFUSED);
      return;
    }
    if (!isWebSocketUpgrade(req)) {
      rawResponse(socket, 400, JSON.stringify({ code: 400, message: 'only WebSocket upgrades (GET with Upgrade: websocket) are proxied' }));
      return;
    }
    this.upgrade(target, req, socket, head).catch((err: unknown) => {
      this.log?.error({ err, sandbox: target.sandboxId }, 'data-plane upgrade failure');
      socket.destroy();
    });
  }

  /** Cut every open proxied stream of the sandbox now (client and upstream sockets destroyed, no end-stream envelope). */
  cut(sandboxId: string, reason?: InterruptReason): void {
    const set = this.open.get(sandboxId);
    if (set) {
      this.open.delete(sandboxId);
      const message = reason && `the sandbox was ${reason} while the request was in flight`;
      for (const ex of set) {
        if (message && ex.interrupt) ex.interrupt(message);
        else ex.destroy();
      }
      if (set.size) this.log?.debug({ sandboxId, streams: set.size }, 'cut open data-plane streams');
    }
    const a = this.agents.get(sandboxId);
    if (a) {
      this.agents.delete(sandboxId);
      a.agent.destroy();
    }
  }

  /** cut() and drop the sandbox's traffic counters (for a deleted sandbox). */
  forget(sandboxId: string): void {
    this.cut(sandboxId);
    this.traffic.delete(sandboxId);
  }

  /** Traffic counters of one sandbox, or of every sandbox that had traffic. */
  stats(): Map<string, SandboxTraffic>;
  stats(sandboxId: string): SandboxTraffic | undefined;
  stats(sandboxId?: string): Map<string, SandboxTraffic> | SandboxTraffic | undefined {
    const snapshot = (id: string, t: Omit<SandboxTraffic, 'open'>): SandboxTraffic => ({ ...t, open: this.open.get(id)?.size ?? 0 });
    if (sandboxId !== undefined) {
      const t = this.traffic.get(sandboxId);
      return t && snapshot(sandboxId, t);
    }
    return new Map([...this.traffic].map(([k, v]) => [k, snapshot(k, v)]));
  }

  close(): void {
    this.closed = true;
    for (const id of [...new Set([...this.open.keys(), ...this.agents.keys()])]) this.cut(id);
  }

  // --- internals ---

  /** Counters exist only for sandboxes that had a route (unknown ids leave nothing behind). */
  private counters(sandboxId: string): Omit<SandboxTraffic, 'open'> {
    let t = this.traffic.get(sandboxId);
    if (!t) this.traffic.set(sandboxId, (t = { requests: 0, bytesIn: 0, bytesOut: 0 }));
    return t;
  }

  private track(sandboxId: string, ex: Exchange): () => void {
    let set = this.open.get(sandboxId);
    if (!set) this.open.set(sandboxId, (set = new Set()));
    set.add(ex);
    return () => {
      const s = this.open.get(sandboxId);
      if (s?.delete(ex) && !s.size) this.open.delete(sandboxId);
    };
  }

  private agentFor(route: SandboxRoute): Agent {
    const cur = this.agents.get(route.sandboxId);
    if (cur && cur.socket.path === route.socket.path && cur.socket.device === route.socket.device) return cur.agent;
    cur?.agent.destroy();
    // `timeout` makes the agent honour envd's Keep-Alive hint (it drops idle sockets a second
    // before envd would), and drops idle sockets after a minute anyway.
    const agent = new Agent({ keepAlive: true, keepAliveMsecs: 10_000, maxFreeSockets: 32, timeout: 60_000, scheduling: 'lifo' });
    // every new connection checks the socket again: the sandbox may have swapped it since
    const socket = route.socket;
    agent.createConnection = () => connectGuarded(socket);
    this.agents.set(route.sandboxId, { socket, agent });
    return agent;
  }

  /** The sandbox a target names (a signed /files request: the one whose token signed it). */
  private async resolve(target: Target, res: ServerResponse): Promise<{ sandboxId: string; port: number; rawPort: string } | undefined> {
    if (target.kind === 'preflight') {
      res.writeHead(204, {
        'Access-Control-Allow-Origin': '*',
        'Access-Control-Allow-Methods': 'GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS',
        'Access-Control-Allow-Headers': res.req.headers['access-control-request-headers'] ?? '*',
        'Access-Control-Max-Age': '7200',
      });
      res.end();
      return undefined;
    }
    if (target.kind === 'signed') {
      const sandboxId = matchSignature(target.url, target.op, this.resolver.signedCandidates());
      if (!sandboxId) {
        sendJson(res, 401, JSON.stringify({ code: 401, message: 'invalid signature: it matches no running sandbox' }));
        return undefined;
      }
      return { sandboxId, port: this.envdPort, rawPort: String(this.envdPort) };
    }
    return target;
  }

  private async dispatch(target: Target, req: IncomingMessage, res: ServerResponse): Promise<void> {
    const t = await this.resolve(target, res);
    if (!t) return;
    const { sandboxId } = t;
    const ex: Exchange = {
      destroyed: false,
      destroy() {
        this.destroyed = true;
        this.upstream?.destroy();
        res.destroy();
        req.socket?.destroy();
      },
      interrupt(message: string) {
        this.destroyed = true;
        this.upstreamResponse?.unpipe(res);
        const connect = /^application\/(connect\+|json|proto)/.test(String(req.headers['content-type'] ?? ''));
        if (!res.headersSent && !res.destroyed) {
          // not answered yet: a Connect error (unary form) or the data plane's JSON error
          const body = connect ? JSON.stringify({ code: 'unavailable', message }) : JSON.stringify({ sandboxId, message, code: 502 });
          sendJson(res, connect ? 503 : 502, body, { Connection: 'close' });
        } else if (!res.destroyed && /^application\/connect\+/.test(String(this.upstreamResponse?.headers['content-type'] ?? ''))) {
          // a server stream under way: end it with an error message of the stream's own
          res.end(connectEndStreamError('unavailable', message));
        } else {
          res.destroy();
        }
        this.upstream?.destroy();
      },
    };
    const untrack = this.track(sandboxId, ex);
    res.once('close', () => {
      untrack();
      // The client went away (or cut() destroyed it): stop the upstream request too.
      if (!res.writableFinished) {
        ex.destroyed = true;
        ex.upstream?.destroy();
      }
    });

    let route: SandboxRoute | undefined;
    try {
      route = await this.resolver.route(sandboxId, req);
    } catch (err) {
      this.log?.warn({ err, sandboxId }, 'route lookup failed');
      route = undefined;
    }
    if (ex.destroyed || res.destroyed) return;
    if (!route) {
      this.dropAgent(sandboxId);
      sendJson(res, 502, notFoundBody(sandboxId));
      return;
    }
    if (t.port !== this.envdPort) {
      sendJson(res, 502, portBody(sandboxId, t.rawPort, this.envdPort));
      return;
    }
    this.forward(route, req, res, ex);
  }

  private dropAgent(sandboxId: string): void {
    const a = this.agents.get(sandboxId);
    if (a && !this.open.get(sandboxId)?.size) {
      this.agents.delete(sandboxId);
      a.agent.destroy();
    }
  }

  private forward(route: SandboxRoute, req: IncomingMessage, res: ServerResponse, ex: Exchange): void {
    const sandboxId = route.sandboxId;
    const counters = this.counters(sandboxId);
    counters.requests++;
    const headers = endToEnd(req.rawHeaders);
    if (/\bchunked\b/i.test(String(req.headers['transfer-encoding'] ?? ''))) headers.push('Transfer-Encoding', 'chunked');
    const noBody = bodyless(req);
    const method = req.method ?? 'GET';

    const attempt = (retriesLeft: number): void => {
      const up = httpRequest({
        agent: this.agentFor(route),
        method,
        path: req.url ?? '/',
        headers,
        setHost: false,
      });
      ex.upstream = up;
      let responded = false;

      up.on('response', (upRes: IncomingMessage) => {
        responded = true;
        ex.upstreamResponse = upRes;
        if (ex.destroyed || res.destroyed) {
          upRes.destroy();
          return;
        }
        const status = upRes.statusCode ?? 502;
        res.writeHead(status, upRes.statusMessage, endToEnd(upRes.rawHeaders));
        // Streams (no Content-Length): let the client see the status and headers now.
        if (upRes.headers['content-length'] === undefined && method !== 'HEAD' && status !== 204 && status !== 304) res.flushHeaders();
        upRes.on('data', (c: Buffer) => (counters.bytesOut += c.length));
        upRes.pipe(res, { end: false });
        upRes.on('end', () => {
          const trailers = endToEnd(upRes.rawTrailers);
          if (trailers.length) {
            const pairs: [string, string][] = [];
            for (let i = 0; i < trailers.length; i += 2) pairs.push([trailers[i] as string, trailers[i + 1] as string]);
            try {
              res.addTrailers(pairs);
            } catch {
              /* not a chunked response: no trailers */
            }
          }
          res.end();
        });
        // envd went away mid-response: the client must see a broken stream, not a clean end.
        // (after interrupt() the client's answer is already written: leave it to finish)
        upRes.on('close', () => {
          if (!upRes.complete && !ex.destroyed) res.destroy();
        });
        upRes.on('error', () => {
          if (!ex.destroyed) res.destroy();
        });
      });

      up.on('error', (err: NodeJS.ErrnoException) => {
        if (ex.destroyed) return;
        if (!responded && retriesLeft > 0 && noBody && up.reusedSocket && RETRYABLE.has(err.code ?? '')) {
          // A keep-alive socket that envd closed just now: once more on a new socket.
          attempt(retriesLeft - 1);
          return;
        }
        if (responded || res.headersSent) {
          res.destroy();
          return;
        }
        this.log?.warn({ sandboxId, code: err.code, url: req.url }, 'sandbox envd unreachable');
        sendJson(res, 502, notFoundBody(sandboxId));
      });

      if (noBody) up.end();
    };

    if (noBody) {
      attempt(1);
      if (!req.readableEnded) req.resume();
      return;
    }
    // A body streams into the one upstream request as it arrives (no retry).
    attempt(0);
    req.on('data', (c: Buffer) => (counters.bytesIn += c.length));
    req.pipe(ex.upstream as ClientRequest);
  }

  private async upgrade(target: Extract<Target, { kind: 'sandbox' }>, req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const { sandboxId } = target;
    const ex: Exchange = {
      destroyed: false,
      destroy() {
        this.destroyed = true;
        this.upstream?.destroy();
        socket.destroy();
      },
    };
    const untrack = this.track(sandboxId, ex);
    socket.once('close', untrack);
    let route: SandboxRoute | undefined;
    try {
      route = await this.resolver.route(sandboxId, req);
    } catch (err) {
      this.log?.warn({ err, sandboxId }, 'route lookup failed');
    }
    if (ex.destroyed || socket.destroyed) return;
    if (!route) return rawResponse(socket, 502, notFoundBody(sandboxId));
    if (target.port !== this.envdPort) return rawResponse(socket, 502, portBody(sandboxId, target.rawPort, this.envdPort));
    const counters = this.counters(sandboxId);
    counters.requests++;
    const guarded = route.socket;
    const up = httpRequest({
      createConnection: () => connectGuarded(guarded),
      method: 'GET',
      path: req.url ?? '/',
      headers: endToEnd(req.rawHeaders, true),
      setHost: false,
    });
    ex.upstream = up;
    let answered = false;
    // 101 from the sandbox: from here on the connection is the WebSocket's, byte for byte.
    up.on('upgrade', (upRes: IncomingMessage, upSocket: Socket, upHead: Buffer) => {
      answered = true;
      ex.upstream = upSocket;
      if (ex.destroyed || socket.destroyed || !isWebSocketUpgrade(upRes)) {
        upSocket.destroy();
        socket.destroy();
        return;
      }
      const lines = [`HTTP/1.1 101 ${upRes.statusMessage || 'Switching Protocols'}`];
      const h = endToEnd(upRes.rawHeaders, true);
      for (let i = 0; i < h.length; i += 2) lines.push(`${h[i]}: ${h[i + 1]}`);
      socket.write(lines.join('\r\n') + '\r\n\r\n');
      if (upHead.length) socket.write(upHead);
      if (head.length) {
        counters.bytesIn += head.length;
        upSocket.write(head);
      }
      socket.on('data', (c: Buffer) => (counters.bytesIn += c.length));
      upSocket.on('data', (c: Buffer) => (counters.bytesOut += c.length));
      upSocket.on('error', () => socket.destroy());
      upSocket.on('close', () => socket.destroy());
      socket.on('close', () => upSocket.destroy());
      socket.pipe(upSocket);
      upSocket.pipe(socket);
    });
    // Any other answer is passed on as it is, and the connection ends with it.
    up.on('response', (upRes: IncomingMessage) => {
      answered = true;
      const chunks: Buffer[] = [];
      let size = 0;
      upRes.on('data', (c: Buffer) => {
        size += c.length;
        if (size <= MAX_REFUSAL_BODY) chunks.push(c);
        else upRes.destroy();
      });
      const finish = () => {
        if (socket.destroyed) return;
        const body = Buffer.concat(chunks).subarray(0, MAX_REFUSAL_BODY);
        const lines = [`HTTP/1.1 ${upRes.statusCode ?? 502} ${upRes.statusMessage ?? ''}`];
        const h = endToEnd(upRes.rawHeaders);
        for (let i = 0; i < h.length; i += 2) if ((h[i] as string).toLowerCase() !== 'content-length') lines.push(`${h[i]}: ${h[i + 1]}`);
        lines.push(`Content-Length: ${body.length}`, 'Connection: close');
        socket.end(Buffer.concat([Buffer.from(lines.join('\r\n') + '\r\n\r\n'), body]));
      };
      upRes.on('end', finish);
      upRes.on('close', () => {
        if (!upRes.complete) finish();
      });
    });
    up.on('error', () => {
      if (!answered) rawResponse(socket, 502, notFoundBody(sandboxId));
      else socket.destroy();
    });
    up.end();
  }
}

/** The largest body of a refused upgrade that is passed on. */
const MAX_REFUSAL_BODY = 64 * 1024;

/** A WebSocket handshake: GET, `Upgrade: websocket` and `Connection: upgrade` (RFC 6455 4.1, 4.2.2). */
function isWebSocketUpgrade(msg: IncomingMessage): boolean {
  const upgrade = String(msg.headers.upgrade ?? '').trim().toLowerCase();
  const connection = String(msg.headers.connection ?? '').toLowerCase().split(',').map((t) => t.trim());
  const isRequest = typeof msg.method === 'string'; // a response's method is null
  return upgrade === 'websocket' && connection.includes('upgrade') && (!isRequest || msg.method === 'GET');
}
