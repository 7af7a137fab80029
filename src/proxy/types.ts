// The proxy's interfaces: what it asks of the manager (routes), what it tells (traffic), and
// what its parts (forward.ts, upgrade.ts) share with the class that owns the state.
import type { Agent, ClientRequest, IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type pino from 'pino';
import type { GuardedSocket } from '../util/safe-socket.js';

export interface SandboxRoute {
  sandboxId: string;
  /** envd's unix socket on the host, reached only through connectGuarded (never by a plain path). */
  socket: GuardedSocket;
  accessToken?: string;
  /** The sandbox's address on its link, for its own ports; none without networking. */
  address?: string;
  /** Required on port traffic (network.allowPublicTraffic false). */
  trafficToken?: string;
  /** The Host its ports see (E2B's network.maskRequestHost; '${PORT}' is replaced). */
  maskRequestHost?: string;
  /** Ports reached over TLS (certificate not verified). */
  httpsPorts?: number[];
}

export interface RouteResolver {
  /**
   * A running sandbox's envd route; may resume a paused sandbox that has autoResume (only for a
   * request that carries the sandbox's token or a valid signature: hence `req`). undefined =
   * unknown, paused, killed or blocked.
   */
  route(sandboxId: string, req?: IncomingMessage, port?: number): Promise<SandboxRoute | undefined>;
  /** Running sandboxes with an envd access token, for header-less signed /files requests. */
  signedCandidates(): Iterable<{ sandboxId: string; accessToken: string }>;
}

export interface DataPlaneProxyOptions {
  /** The public sandbox domain (informational: Host routing accepts any domain suffix). */
  domain: string;
  /** envd's port, default 49983 (served on envd's socket; other ports on the sandbox's address). */
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

export type TrafficCounters = Omit<SandboxTraffic, 'open'>;

/** One proxied request or upgraded connection, so that cut() can destroy it. */
export interface Exchange {
  destroyed: boolean;
  upstream?: ClientRequest | Socket;
  /** The sandbox's response being relayed, if it started. */
  upstreamResponse?: IncomingMessage;
  destroy(): void;
  /** Ends the exchange with an error the client can read (falls back to destroy()); dropStreams: a stream under way is cut instead. */
  interrupt?(message: string, dropStreams?: boolean): void;
}

/** What the HTTP and upgrade paths use of the proxy's state (DataPlaneProxy provides it). */
export interface ProxyContext {
  readonly envdPort: number;
  readonly log?: pino.Logger;
  readonly resolver: RouteResolver;
  /** Counters exist only for sandboxes that had a route (unknown ids leave nothing behind). */
  counters(sandboxId: string): TrafficCounters;
  /** Registers an open exchange for cut(); returns its removal. */
  track(sandboxId: string, ex: Exchange): () => void;
  /** The sandbox's keep-alive agent, whose every connection goes through connectGuarded. */
  agentFor(route: SandboxRoute): Agent;
  /** The sandbox's keep-alive agent for one of its own ports. */
  portAgentFor(route: SandboxRoute, port: number): Agent;
  /** Drops the sandbox's agent if nothing of it is open. */
  dropAgent(sandboxId: string): void;
}
