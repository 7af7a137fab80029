// The data-plane proxy: forwards E2B data-plane requests (envd's Connect RPCs, /files, /health,
// ...) to the envd unix socket of the sandbox they name, unbuffered in both directions, over
// one keep-alive agent per sandbox. Contract sections 1, 5.3 and 6.
//
// This class is the façade and owns the state (agents, open exchanges, traffic); the parts:
// routing.ts (which sandbox), filter.ts (headers and paths that never pass), forward.ts (HTTP),
// upgrade.ts (WebSocket), interrupt.ts (cutting open exchanges), replies.ts (own answers).
import { Agent, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type pino from 'pino';
import { connectGuarded, type GuardedSocket } from '../util/safe-socket.js';
import { INIT_REFUSED, isInitPath } from './filter.js';
import { dispatch } from './forward.js';
import { connectPort } from './ports.js';
import { interruptAll, type InterruptReason } from './interrupt.js';
import { rawResponse, sendJson } from './replies.js';
import { classify, ENVD_PORT } from './routing.js';
import type { DataPlaneProxyOptions, Exchange, ProxyContext, RouteResolver, SandboxRoute, SandboxTraffic, TrafficCounters } from './types.js';
import { isWebSocketUpgrade, upgrade } from './upgrade.js';

export type { DataPlaneProxyOptions, RouteResolver, SandboxRoute, SandboxTraffic } from './types.js';
export { connectEndStreamError, type InterruptReason } from './interrupt.js';
export { isInitPath } from './filter.js';
export { notFoundBody } from './replies.js';

export class DataPlaneProxy {
  private readonly envdPort: number;
  private readonly log?: pino.Logger;
  private readonly agents = new Map<string, { socket: GuardedSocket; agent: Agent }>();
  /** Keep-alive agents for sandboxes' own ports, by sandbox then port. */
  private readonly portAgents = new Map<string, Map<number, { address: string; agent: Agent }>>();
  private readonly open = new Map<string, Set<Exchange>>();
  private readonly traffic = new Map<string, TrafficCounters>();
  private readonly ctx: ProxyContext;
  private closed = false;

  constructor(
    private readonly resolver: RouteResolver,
    readonly opts: DataPlaneProxyOptions,
  ) {
    this.envdPort = opts.envdPort ?? ENVD_PORT;
    this.log = opts.log;
    this.ctx = {
      envdPort: this.envdPort,
      log: this.log,
      resolver: this.resolver,
      counters: (id) => this.counters(id),
      track: (id, ex) => this.track(id, ex),
      agentFor: (route) => this.agentFor(route),
      portAgentFor: (route, port) => this.portAgentFor(route, port),
      dropAgent: (id) => this.dropAgent(id),
    };
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
    dispatch(this.ctx, target, req, res).catch((err: unknown) => {
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
    upgrade(this.ctx, target, req, socket, head).catch((err: unknown) => {
      this.log?.error({ err, sandbox: target.sandboxId }, 'data-plane upgrade failure');
      socket.destroy();
    });
  }

  /** Cut every open proxied stream of the sandbox now (client and upstream sockets destroyed, no end-stream envelope). */
  cut(sandboxId: string, reason?: InterruptReason): void {
    const set = this.open.get(sandboxId);
    if (set) {
      this.open.delete(sandboxId);
      interruptAll(set, reason);
      if (set.size) this.log?.debug({ sandboxId, streams: set.size }, 'cut open data-plane streams');
    }
    const a = this.agents.get(sandboxId);
    if (a) {
      this.agents.delete(sandboxId);
      a.agent.destroy();
    }
    const ports = this.portAgents.get(sandboxId);
    if (ports) {
      this.portAgents.delete(sandboxId);
      for (const p of ports.values()) p.agent.destroy();
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
    const snapshot = (id: string, t: TrafficCounters): SandboxTraffic => ({ ...t, open: this.open.get(id)?.size ?? 0 });
    if (sandboxId !== undefined) {
      const t = this.traffic.get(sandboxId);
      return t && snapshot(sandboxId, t);
    }
    return new Map([...this.traffic].map(([k, v]) => [k, snapshot(k, v)]));
  }

  close(): void {
    this.closed = true;
    for (const id of [...new Set([...this.open.keys(), ...this.agents.keys(), ...this.portAgents.keys()])]) this.cut(id);
  }

  // --- internals (shared with forward.ts and upgrade.ts through this.ctx) ---

  /** Counters exist only for sandboxes that had a route (unknown ids leave nothing behind). */
  private counters(sandboxId: string): TrafficCounters {
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

  private portAgentFor(route: SandboxRoute, port: number): Agent {
    let ports = this.portAgents.get(route.sandboxId);
    if (!ports) this.portAgents.set(route.sandboxId, (ports = new Map()));
    const cur = ports.get(port);
    if (cur && cur.address === route.address) return cur.agent;
    cur?.agent.destroy();
    const agent = new Agent({ keepAlive: true, keepAliveMsecs: 10_000, maxFreeSockets: 16, timeout: 60_000, scheduling: 'lifo' });
    agent.createConnection = () => connectPort(route, port);
    ports.set(port, { address: route.address!, agent });
    return agent;
  }

  private dropAgent(sandboxId: string): void {
    const a = this.agents.get(sandboxId);
    if (a && !this.open.get(sandboxId)?.size) {
      this.agents.delete(sandboxId);
      a.agent.destroy();
    }
  }
}
