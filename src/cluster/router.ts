// An API replica (`serve --role api`): it holds no sandbox. A create goes to the node placement
// picks (placement.ts) and the sandbox's node is recorded in the shared store; every later call
// on that sandbox, control plane or data plane (envd HTTP and Connect streams, user ports,
// WebSocket), is forwarded to its node with the cluster secret. Lists fan out to every live
// node. Volumes are node-local: each is recorded as its node's at its create, calls on it go
// there, and a create that mounts volumes is placed on their node. Everything else (keys,
// teams, secrets, templates) goes to one live node, which answers it from the shared store or
// its own. Nodes authenticate the caller (API key, envd
// token) as they do alone: a replica only adds the hop.
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import https from 'node:https';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { collectDefaultMetrics, Registry } from 'prom-client';
import { ConnectionGuard, type ConnectionLimits } from '../api/connection-guard.js';
import { DEFAULT_CONNECTION_LIMITS } from '../api/server.js';
import { API_KEY_RE, hashApiKey } from '../api/keys.js';
import { sandboxIdOf } from '../protocol/ids.js';
import { endToEnd } from '../proxy/filter.js';
import { notFoundBody, rawResponse, sendJson } from '../proxy/replies.js';
import { classify, SIGNED_PROBE_HEADER } from '../proxy/routing.js';
import { RUNTIME_METADATA_KEY } from '../sandbox/types.js';
import { registerDatabaseMetrics } from '../store/pg/metrics.js';
import { describe } from '../store/pg/pool.js';
import { HEARTBEAT_MS } from './member.js';
import { place } from './placement.js';
import type { ClusterRegistry, NodeRecord } from '../store/pg/nodes.js';
import { CLUSTER_SECRET_HEADER } from './secret.js';
import { CubeboxError } from '../util/errors.js';

/** A node whose last heartbeat is older than this takes no creates (three missed beats and some). */
export const LIVE_MS = 3 * HEARTBEAT_MS + 4000;
/** When a client may try a create again that no node could take. */
const NO_NODE_RETRY_SEC = 5;
/** The largest create or fork body read to place it (the control plane's own bound). */
const MAX_BODY = 8 * 1024 * 1024;
/** A node's whole answer read by a replica (lists, a create's answer): more is cut as a failed answer. */
const MAX_NODE_ANSWER = 64 << 20;
/** Sandbox -> node entries kept in memory (a sandbox never moves; the oldest go first). */
const ROUTE_CACHE = 100_000;

export interface RouterOptions {
  registry: ClusterRegistry;
  secret: string;
  /** A node unheard for longer has its sandboxes reported lost (not found), and deletes of them are kept for it. */
  leaseMs: number;
  host: string;
  port: number;
  log: Logger;
  tls?: { cert: Buffer; key: Buffer };
  connections?: ConnectionLimits;
}

export interface RunningRouter {
  url: string;
  port: number;
  close(): Promise<void>;
}

class HttpFailure extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly retryAfterSec?: number,
  ) {
    super(message);
  }
}

export class ClusterRouter {
  private readonly routes = new Map<string, string>();
  private readonly nodes = new Map<string, { node: NodeRecord; at: number }>();
  /** Creates this replica sent to a node that its last heartbeat did not count: placement counts them as taken. */
  private readonly pending = new Map<string, { inFlight: number; done: number[] }>();
  private readonly agents = new Map<string, http.Agent>();
  /**
   * Whether the registry answered this replica's last read, when it last did, and its last
   * outage (from its last answer before to its first after): while it is away no node can
   * heartbeat, so that time does not count towards any node's lease.
   */
  private registry = { reachable: true, okAt: Date.now(), wentAt: 0, backAt: 0 };
  private readonly watch: NodeJS.Timeout;
  private refreshing = false;
  private lastWarn = 0;

  constructor(private readonly opts: RouterOptions) {
    // every node's record read at each heartbeat's pace: routes go on from the last copy while the
    // registry is away, and this replica knows it was away even when no request asked meanwhile
    this.watch = setInterval(() => void this.refresh(), HEARTBEAT_MS);
    this.watch.unref();
  }

  /** Reads every node's record (one statement) and notes whether the registry answered. */
  private async refresh(): Promise<void> {
    if (this.refreshing) return; // a database that hangs is not piled onto
    this.refreshing = true;
    try {
      const all = await this.read(() => this.opts.registry.live(Number.MAX_SAFE_INTEGER));
      const at = Date.now();
      for (const n of all) this.nodes.set(n.id, { node: n, at });
    } catch {
      // noted by read(); the records read before stand
    } finally {
      this.refreshing = false;
    }
  }

  /** A registry read, noting whether the registry could be reached. */
  private async read<T>(fn: () => Promise<T>): Promise<T> {
    const r = this.registry;
    try {
      const out = await fn();
      if (!r.reachable) r.backAt = Date.now();
      r.reachable = true;
      r.okAt = Date.now();
      return out;
    } catch (err) {
      if (unavailable(err) && r.reachable) {
        r.reachable = false;
        r.wentAt = r.okAt;
      }
      throw err;
    }
  }

  /**
   * How long a node has not been heard from, as far as this replica can tell: while the registry
   * is away, as of its last answer; the registry's last outage does not count.
   */
  private unheardMs(node: NodeRecord): number {
    const { reachable, okAt, wentAt, backAt } = this.registry;
    const asOf = reachable ? Date.now() : okAt;
    const away = Math.max(0, Math.min(asOf, backAt) - Math.max(node.heartbeatAt, wentAt));
    return asOf - node.heartbeatAt - away;
  }

  /** One request: the data plane when it names a sandbox, else the control plane. */
  async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      const target = classify(req);
      if (target?.kind === 'sandbox') return await this.toSandbox(target.sandboxId, req, res, 'data');
      if (target?.kind === 'signed') return await this.signed(req, res);
      if (target?.kind === 'preflight') return void (await this.forward(await this.anyNode(), req, res));
      await this.control(req, res);
    } catch (err) {
      if (err instanceof HttpFailure) {
        sendJson(
          res,
          err.status,
          JSON.stringify({ code: err.status, message: err.message }),
          err.retryAfterSec ? { 'Retry-After': String(err.retryAfterSec) } : {},
        );
        return;
      }
      // the shared store unreachable, and the like: a replica has nothing else to answer from (logged once in 10 s: an outage is not a log flood)
      if (!unavailable(err) || Date.now() - this.lastWarn > 10_000) {
        if (unavailable(err)) this.lastWarn = Date.now();
        this.opts.log.warn({ err: describe(err), url: req.url?.split('?')[0] }, 'cannot route the request');
      }
      sendJson(res, 503, JSON.stringify({ code: 503, message: 'the cluster cannot be reached now; try again shortly' }), {
        'Retry-After': String(NO_NODE_RETRY_SEC),
      });
    }
  }

  /** A WebSocket (or other upgrade) to a sandbox: a tunnel to its node, whose data plane checks the handshake. */
  async handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    socket.on('error', () => {});
    const target = classify(req);
    if (target?.kind !== 'sandbox') return void socket.destroy();
    let node: NodeRecord | undefined;
    try {
      node = await this.nodeOfSandbox(target.sandboxId);
    } catch {
      node = undefined;
    }
    if (!node) return rawResponse(socket, 502, notFoundBody(target.sandboxId));
    const url = new URL(node.address);
    const up = net.connect(Number(url.port || 80), url.hostname);
    const lines = [`${req.method} ${req.url} HTTP/1.1`];
    const raw = req.rawHeaders;
    for (let i = 0; i < raw.length; i += 2) if ((raw[i] as string).toLowerCase() !== CLUSTER_SECRET_HEADER) lines.push(`${raw[i]}: ${raw[i + 1]}`);
    lines.push(`${CLUSTER_SECRET_HEADER}: ${this.opts.secret}`);
    let connected = false;
    up.on('connect', () => {
      connected = true;
      up.write(lines.join('\r\n') + '\r\n\r\n');
      if (head.length) up.write(head);
      up.pipe(socket);
      socket.pipe(up);
    });
    // the node cannot be reached: the client gets the data plane's answer; a tunnel that breaks later just ends
    up.on('error', () => (connected ? socket.destroy() : rawResponse(socket, 502, notFoundBody(target.sandboxId))));
    socket.on('close', () => up.destroy());
    up.on('close', () => connected && socket.destroy());
  }

  private async control(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0]!;
    const method = req.method ?? 'GET';
    if (path === '/health') return sendJson(res, 200, JSON.stringify({ status: 'ok' }));
    if (method === 'POST' && (path === '/sandboxes' || path === '/v2/sandboxes')) return this.create(req, res);
    if (method === 'GET' && path === '/v2/sandboxes') return this.fanOutPaged(req, res);
    if (method === 'GET' && (path === '/sandboxes' || path === '/sandboxes/metrics' || path === '/volumes')) return this.fanOut(req, res);
    if (method === 'POST' && path === '/volumes') return this.createVolume(req, res);
    const v = /^\/(?:volumes|volumecontent)\/([^/]+)(?:\/.*)?$/.exec(path);
    if (v) return this.toVolume(decoded(v[1]!), req, res);
    const m = /^(?:\/v2)?\/sandboxes\/([^/]+)(\/.*)?$/.exec(path);
    if (m) {
      const id = sandboxIdOf(decoded(m[1]!)) ?? m[1]!;
      return this.toSandbox(id, req, res, 'control', m[2] === '/fork' && method === 'POST');
    }
    await this.forward(await this.anyNode(), req, res);
  }

  /** A create: placed on a node, forwarded there, and its sandbox's node recorded before the answer goes out. */
  private async create(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = await readBody(req);
    let ask: { templateID?: unknown; metadata?: Record<string, unknown>; volumeMounts?: unknown } = {};
    try {
      ask = JSON.parse(body.toString('utf8')) as typeof ask;
    } catch {
      // the node words the refusal of a malformed body
    }
    const runtime = ask?.metadata?.[RUNTIME_METADATA_KEY];
    const live = await this.opts.registry.live(LIVE_MS);
    for (const n of live) this.nodes.set(n.id, { node: n, at: Date.now() });
    const wanted = { template: typeof ask?.templateID === 'string' ? ask.templateID : 'base', runtime: typeof runtime === 'string' ? runtime : undefined };
    // a node that refuses the connection (gone since its last heartbeat) got nothing: the next one is tried
    for (let candidates = await this.holdingVolumes(req, ask.volumeMounts, live); ;) {
      const node = place(candidates, wanted, (id) => this.pendingFor(id, live));
      if (!node)
        throw new HttpFailure(
          503,
          'no node can take this sandbox now (none is live with a free slot and the runtime asked for); try again shortly',
          NO_NODE_RETRY_SEC,
        );
      const mine = this.pending.get(node.id) ?? { inFlight: 0, done: [] };
      this.pending.set(node.id, mine);
      mine.inFlight++;
      let outcome: 'refused' | undefined;
      try {
        outcome = await this.forward(node, req, res, body, this.sandboxesOf(node), true);
      } finally {
        mine.inFlight--;
        mine.done.push(Date.now()); // in the node's list from now: counted until a heartbeat after this
      }
      if (outcome !== 'refused') return;
      candidates = candidates.filter((n) => n.id !== node.id);
    }
  }

  /**
   * The nodes a create may go to given the volumes it mounts: volumes are node-local, so the one
   * node holding them (all of them: volumes of two nodes cannot be mounted together). Volumes
   * the cluster does not know leave every node: the node words the refusal.
   */
  private async holdingVolumes(req: IncomingMessage, mounts: unknown, live: NodeRecord[]): Promise<NodeRecord[]> {
    if (!Array.isArray(mounts) || !mounts.length) return live;
    const names = mounts.flatMap((m) => (m && typeof (m as { name?: unknown }).name === 'string' ? [(m as { name: string }).name] : []));
    const team = await this.teamOf(req);
    if (!team || !names.length) return live;
    const holders = await this.opts.registry.nodesOfVolumes(team, names);
    const nodeIds = new Set(holders.values());
    if (nodeIds.size > 1)
      throw new HttpFailure(
        400,
        `volumes are kept on the node that made them, and these are on different nodes: ${[...holders].map(([n, id]) => `'${n}' on ${id}`).join(', ')}; ` +
          'a sandbox mounts volumes of one node only',
      );
    const [holder] = nodeIds;
    if (holder === undefined) return live;
    const node = live.find((n) => n.id === holder);
    if (!node) throw new HttpFailure(503, `the volumes this sandbox mounts are on node ${holder}, which is not live now; try again shortly`, NO_NODE_RETRY_SEC);
    return [node];
  }

  /** Creates sent to a node that its last heartbeat could not count: still in flight, or done after it listed its sandboxes. */
  private pendingFor(id: string, live: NodeRecord[]): number {
    const mine = this.pending.get(id);
    if (!mine) return 0;
    const beat = live.find((n) => n.id === id)?.heartbeatAt ?? 0;
    mine.done = mine.done.filter((t) => t >= beat);
    return mine.inFlight + mine.done.length;
  }

  /** Records the sandboxes a create's or fork's answer names as the node's, here and in the shared store. */
  private sandboxesOf(node: NodeRecord): (status: number, answer: Buffer) => Promise<void> {
    return async (status, answer) => {
      const ids = status < 300 ? sandboxIdsIn(answer) : [];
      for (const id of ids) this.remember(id, node.id);
      await Promise.all(ids.map((id) => this.opts.registry.place(id, node.id)));
    };
  }

  /**
   * A new volume: made on the node that holds the team's volume of that name if there is one
   * (which answers the conflict), else on the same node as anything else; recorded as that
   * node's before the answer goes out, so a sandbox mounting it is placed there.
   */
  private async createVolume(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = await readBody(req);
    const team = await this.teamOf(req);
    const name = jsonField(body, 'name');
    const holder = team && typeof name === 'string' ? (await this.opts.registry.nodesOfVolumes(team, [name])).get(name) : undefined;
    const node = holder ? await this.liveNode(holder, `volume '${name}'`) : await this.anyNode();
    await this.forward(node, req, res, body, async (status, answer) => {
      const id = jsonField(answer, 'volumeID');
      if (status === 201 && typeof id === 'string' && typeof name === 'string') await this.opts.registry.placeVolume({ id, team: team ?? null, name }, node.id);
    });
  }

  /** A call on a volume (its record, its content): to the node holding it. */
  private async toVolume(id: string, req: IncomingMessage, res: ServerResponse): Promise<void> {
    const holder = await this.opts.registry.nodeOfVolume(id);
    if (!holder) throw new HttpFailure(404, `volume '${id}' not found`);
    const node = await this.liveNode(holder, `volume '${id}'`);
    await this.forward(node, req, res);
    if (req.method === 'DELETE' && res.statusCode === 204) await this.opts.registry.forgetVolume(id).catch(() => {}); // its node's next heartbeat drops it anyway
  }

  /** The team of the caller's API key (placement only: the node authenticates the request). */
  private async teamOf(req: IncomingMessage): Promise<string | undefined> {
    const key = req.headers['x-api-key'];
    return typeof key === 'string' && API_KEY_RE.test(key) ? this.opts.registry.teamOfKey(hashApiKey(key)) : undefined;
  }

  /** A node by id that must be live for the request (it holds what the request names). */
  private async liveNode(id: string, what: string): Promise<NodeRecord> {
    const node = await this.node(id);
    if (!node || Date.now() - node.heartbeatAt > LIVE_MS)
      throw new HttpFailure(503, `${what} is on node ${id}, which is not live now; try again shortly`, NO_NODE_RETRY_SEC);
    return node;
  }

  /** Every live node's whole answer to the request; undefined once a failed one was passed on to the client. */
  private async everyNode(
    req: IncomingMessage,
    res: ServerResponse,
  ): Promise<Array<{ status: number; body: Buffer; headers: http.IncomingHttpHeaders }> | undefined> {
    const live = await this.opts.registry.live(LIVE_MS);
    if (!live.length) throw new HttpFailure(503, 'no node of the cluster is live; try again shortly', NO_NODE_RETRY_SEC);
    const answers = await Promise.all(live.map((n) => this.fetchFrom(n, req)));
    const failed = answers.find((a) => a.status !== 200);
    if (!failed) return answers;
    sendJson(res, failed.status, failed.body.toString('utf8'));
    return undefined;
  }

  /** Every live node's answer to a list, merged (arrays joined, objects combined). */
  private async fanOut(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const answers = await this.everyNode(req, res);
    if (!answers) return;
    const parts = answers.map((a) => JSON.parse(a.body.toString('utf8')) as unknown);
    const merged = parts.every(Array.isArray) ? parts.flat() : Object.assign({}, ...parts);
    sendJson(res, 200, JSON.stringify(merged));
  }

  /**
   * A page of `GET /v2/sandboxes` across nodes. A node's page token is a cursor (the last
   * sandbox's start time and id) that means the same on every node, so each node is asked for
   * the same page, the answers are merged in the same order, the first `limit` kept, and the next
   * token is the cursor of the last one kept when any node has more.
   */
  private async fanOutPaged(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const answers = await this.everyNode(req, res);
    if (!answers) return;
    const q = new URL(req.url ?? '/', 'http://replica').searchParams;
    const limit = Number(q.get('limit') ?? 100); // the nodes checked it
    const desc = (q.get('order') ?? 'desc').toLowerCase() !== 'asc';
    type Listed = { sandboxID: string; startedAt: string };
    const key = (s: Listed) => [Date.parse(s.startedAt), s.sandboxID] as const;
    const merged = answers.flatMap((a) => JSON.parse(a.body.toString('utf8')) as Listed[]);
    merged.sort((a, b) => {
      const [ta, ia] = key(a);
      const [tb, ib] = key(b);
      const c = ta - tb || (ia < ib ? -1 : ia > ib ? 1 : 0);
      return desc ? -c : c;
    });
    const page = merged.slice(0, limit);
    const more = merged.length > limit || answers.some((a) => a.headers['x-next-token']);
    const headers: Record<string, string> = {};
    if (more && page.length) headers['X-Next-Token'] = Buffer.from(JSON.stringify(key(page[page.length - 1]!))).toString('base64url');
    sendJson(res, 200, JSON.stringify(page), headers);
  }

  /**
   * A header-less signed /files URL: its sandbox is known only to the node holding it, so each
   * node is asked in turn with a HEAD (the others answer 401): the same URL for a download, a
   * probe (SIGNED_PROBE_HEADER) for an upload. The request then streams to that node.
   */
  private async signed(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const live = await this.opts.registry.live(LIVE_MS);
    const probe = req.method === 'POST' ? { [SIGNED_PROBE_HEADER]: 'write' } : undefined;
    for (const n of live) if ((await this.fetchFrom(n, req, 'HEAD', probe)).status !== 401) return void (await this.forward(n, req, res));
    req.resume(); // an upload's body is not wanted
    sendJson(res, 401, JSON.stringify({ code: 401, message: 'invalid signature: it matches no running sandbox' }));
  }

  private async toSandbox(id: string, req: IncomingMessage, res: ServerResponse, plane: 'control' | 'data', records = false): Promise<void> {
    let node = await this.nodeOfSandbox(id);
    if (!node) {
      if (plane === 'data') return sendJson(res, 502, notFoundBody(id));
      throw new HttpFailure(404, `sandbox '${id}' not found`);
    }
    const deleted = plane === 'control' && req.method === 'DELETE' && /^(?:\/v2)?\/sandboxes\/[^/]+$/.test((req.url ?? '').split('?')[0]!);
    let unheardMs = this.unheardMs(node);
    if (unheardMs > this.opts.leaseMs && this.registry.reachable) {
      // the copy may be older than the node's return: read again before calling its sandboxes lost
      node = (await this.node(node.id, true)) ?? node;
      unheardMs = this.unheardMs(node);
    }
    if (unheardMs > this.opts.leaseMs) {
      // its node is lost: the sandbox is gone for clients; a delete is kept for the node's return
      if (deleted) {
        await this.opts.registry.bury(id, node.id);
        this.routes.delete(id);
        res.writeHead(204).end();
        return;
      }
      if (plane === 'data') return sendJson(res, 502, notFoundBody(id));
      return sendJson(
        res,
        404,
        JSON.stringify({
          code: 404,
          message: `sandbox '${id}' is lost: its node ${node.id} has not been heard from for ${Math.round(unheardMs / 1000)} s`,
          cubeboxState: 'lost',
        }),
      );
    }
    await this.forward(node, req, res, records ? await readBody(req) : undefined, records ? this.sandboxesOf(node) : undefined);
    if (deleted && (res.statusCode === 204 || res.statusCode === 404)) {
      this.routes.delete(id);
      await this.opts.registry.forget(id).catch(() => {}); // the node's next heartbeat drops it anyway
    }
  }

  /** The node holding a sandbox: this replica's memory, else the shared store (unreachable: a 503 to try again). */
  private async nodeOfSandbox(id: string): Promise<NodeRecord | undefined> {
    let nodeId = this.routes.get(id);
    if (!nodeId) {
      nodeId = await this.read(() => this.opts.registry.nodeOf(id));
      if (!nodeId) return undefined;
      this.remember(id, nodeId);
    }
    return this.node(nodeId);
  }

  private remember(sandboxId: string, nodeId: string): void {
    if (this.routes.size >= ROUTE_CACHE) this.routes.delete(this.routes.keys().next().value as string);
    this.routes.set(sandboxId, nodeId);
  }

  /** A node's record: read again when older than a heartbeat (or `fresh`); while the registry is away, the last one read. */
  private async node(id: string, fresh = false): Promise<NodeRecord | undefined> {
    const known = this.nodes.get(id);
    if (known && ((!fresh && Date.now() - known.at < HEARTBEAT_MS) || !this.registry.reachable)) return known.node;
    let node: NodeRecord | undefined;
    try {
      node = (await this.read(() => this.opts.registry.node(id))) ?? known?.node;
    } catch (err) {
      if (known && unavailable(err)) return known.node; // a sandbox never moves: its cached route still holds
      throw err;
    }
    if (node) this.nodes.set(id, { node, at: Date.now() });
    return node;
  }

  /** A live node for what any node answers alike (the one with the lowest id: the same for every replica). */
  private async anyNode(): Promise<NodeRecord> {
    const [node] = await this.opts.registry.live(LIVE_MS);
    if (!node) throw new HttpFailure(503, 'no node of the cluster is live; try again shortly', NO_NODE_RETRY_SEC);
    return node;
  }

  private agent(node: NodeRecord): http.Agent {
    let a = this.agents.get(node.address);
    if (!a) this.agents.set(node.address, (a = new http.Agent({ keepAlive: true })));
    return a;
  }

  private upstream(node: NodeRecord, req: IncomingMessage, body?: Buffer, method = req.method, extra?: Record<string, string>): http.ClientRequest {
    const url = new URL(node.address);
    const raw = endToEnd(req.rawHeaders);
    const headers: string[] = [];
    for (let i = 0; i < raw.length; i += 2) {
      const name = raw[i]!.toLowerCase();
      if (name === SIGNED_PROBE_HEADER || (body && name === 'content-length')) continue; // the probe is the replica's own, never a client's
      headers.push(raw[i]!, raw[i + 1]!);
    }
    if (body) headers.push('Content-Length', String(body.length));
    else if (/\bchunked\b/i.test(String(req.headers['transfer-encoding'] ?? ''))) headers.push('Transfer-Encoding', 'chunked');
    for (const [k, v] of Object.entries(extra ?? {})) headers.push(k, v);
    headers.push(CLUSTER_SECRET_HEADER, this.opts.secret);
    return http.request({
      agent: this.agent(node),
      host: url.hostname,
      port: Number(url.port || 80),
      method,
      path: req.url,
      headers,
      setHost: false,
    });
  }

  /** A whole answer of a node to the same request (lists, signed URLs). */
  private fetchFrom(
    node: NodeRecord,
    req: IncomingMessage,
    method = req.method,
    extra?: Record<string, string>,
  ): Promise<{ status: number; body: Buffer; headers: http.IncomingHttpHeaders }> {
    return new Promise((resolve, reject) => {
      const up = this.upstream(node, req, Buffer.alloc(0), method, extra);
      up.on('response', (r) => {
        const chunks: Buffer[] = [];
        let size = 0;
        r.on('data', (c: Buffer) => {
          if ((size += c.length) > MAX_NODE_ANSWER) return r.destroy(new Error(`node ${node.id} answered more than ${MAX_NODE_ANSWER} bytes`));
          chunks.push(c);
        });
        r.on('end', () => resolve({ status: r.statusCode ?? 502, body: Buffer.concat(chunks), headers: r.headers }));
        r.on('error', reject);
      });
      up.on('error', reject);
      up.end();
    });
  }

  /**
   * The request relayed to a node unbuffered both ways (a body given is sent instead of the
   * request's). `record`: the answer is read whole and given to it (to record what it made as
   * the node's) before it is passed on. `retryRefused`: a refused connection answers nothing and
   * resolves 'refused' (the body was buffered: the caller may send it elsewhere).
   */
  private forward(
    node: NodeRecord,
    req: IncomingMessage,
    res: ServerResponse,
    body?: Buffer,
    record?: (status: number, answer: Buffer) => Promise<void>,
    retryRefused = false,
  ): Promise<'refused' | undefined> {
    return new Promise((resolve) => {
      const up = this.upstream(node, req, body);
      res.once('close', () => {
        if (!res.writableFinished) up.destroy(); // the client went away: so does the request to the node
        resolve(undefined);
      });
      up.on('response', (upRes) => {
        const status = upRes.statusCode ?? 502;
        if (record) {
          const chunks: Buffer[] = [];
          let size = 0;
          upRes.on('data', (c: Buffer) => {
            if ((size += c.length) > MAX_NODE_ANSWER) return upRes.destroy(new Error(`node ${node.id} answered more than ${MAX_NODE_ANSWER} bytes`));
            chunks.push(c);
          });
          upRes.on('end', () => {
            const text = Buffer.concat(chunks);
            record(status, text)
              .catch((err: unknown) =>
                this.opts.log.warn({ err: describe(err), node: node.id }, 'cannot record what the node made; it reports it at its next heartbeat'),
              )
              .finally(() => {
                res.writeHead(status, upRes.statusMessage, endToEnd(upRes.rawHeaders));
                res.end(text);
              });
          });
          upRes.on('error', () => res.destroy());
          return;
        }
        res.writeHead(status, upRes.statusMessage, endToEnd(upRes.rawHeaders));
        if (upRes.headers['content-length'] === undefined && req.method !== 'HEAD' && status !== 204 && status !== 304) res.flushHeaders();
        upRes.pipe(res);
        // the node went away mid-answer: the client sees a broken stream, not a clean end
        upRes.on('close', () => !upRes.complete && res.destroy());
        upRes.on('error', () => res.destroy());
      });
      up.on('error', (err: NodeJS.ErrnoException) => {
        if (res.headersSent) return void res.destroy();
        this.opts.log.warn({ node: node.id, code: err.code }, 'node unreachable');
        this.nodes.delete(node.id);
        if (retryRefused && err.code === 'ECONNREFUSED') return resolve('refused'); // nothing reached it: the caller may go elsewhere
        sendJson(res, 502, JSON.stringify({ code: 502, message: `node ${node.id} holding this did not answer` }));
      });
      if (body) up.end(body);
      else req.pipe(up);
    });
  }

  close(): void {
    clearInterval(this.watch);
    for (const a of this.agents.values()) a.destroy();
  }
}

/** The shared store could not be reached (the pool's mapped error). */
const unavailable = (err: unknown): boolean => err instanceof CubeboxError && err.kind === 'unavailable';

/** The ids of the sandboxes a create's or fork's answer names. */
function sandboxIdsIn(body: Buffer): string[] {
  const ids: string[] = [];
  const walk = (v: unknown) => {
    if (Array.isArray(v)) v.forEach(walk);
    else if (v && typeof v === 'object') {
      const o = v as Record<string, unknown>;
      if (typeof o.sandboxID === 'string') ids.push(o.sandboxID);
      Object.values(o).forEach(walk);
    }
  };
  try {
    walk(JSON.parse(body.toString('utf8')));
  } catch {
    // not JSON: names none
  }
  return ids;
}

/** A path segment decoded; one that is not valid percent-encoding stays as it is (and names nothing). */
function decoded(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;
  }
}

/** A top-level field of a JSON body (undefined when it is not JSON or has none). */
function jsonField(body: Buffer, field: string): unknown {
  try {
    const v = JSON.parse(body.toString('utf8')) as unknown;
    return v && typeof v === 'object' ? (v as Record<string, unknown>)[field] : undefined;
  } catch {
    return undefined;
  }
}

/** A request body read whole, bounded. */
function readBody(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY) {
        req.destroy();
        reject(new HttpFailure(413, `the request body is larger than ${MAX_BODY} bytes`));
      } else chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

/** Starts an API replica's listener. */
export async function startRouter(opts: RouterOptions): Promise<RunningRouter> {
  const router = new ClusterRouter(opts);
  const guard = new ConnectionGuard(opts.connections ?? DEFAULT_CONNECTION_LIMITS, opts.log);
  // the replica's own metrics (the database statements it sends, its process), not a node's
  const metrics = new Registry();
  collectDefaultMetrics({ register: metrics, prefix: 'cubebox_process_' });
  registerDatabaseMetrics(metrics, { heartbeats: false });
  const handler = (req: IncomingMessage, res: ServerResponse) => {
    if (req.method === 'GET' && req.url === '/metrics')
      return void metrics.metrics().then((body) => res.writeHead(200, { 'Content-Type': metrics.contentType }).end(body));
    void router.handle(req, res);
  };
  const server = opts.tls ? https.createServer({ ...guard.serverOptions(), ...opts.tls }, handler) : http.createServer(guard.serverOptions(), handler);
  guard.attach(server);
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => void router.handleUpgrade(req, socket, head));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  const host = opts.host.includes(':') ? `[${opts.host}]` : opts.host;
  return {
    url: `${opts.tls ? 'https' : 'http'}://${host}:${port}`,
    port,
    async close() {
      const closed = new Promise<void>((r) => server.close(() => r()));
      guard.destroyAll();
      router.close();
      await closed;
    },
  };
}
