import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { MetricsSampler, MetricSample } from '../sandbox/metrics.js';
import type { Lifecycle, SandboxInfo, SandboxManager } from '../sandbox/manager.js';
import { cubeboxStateShown, e2bStateOf } from '../sandbox/states.js';
import type { Template } from '../template/store.js';
import { sandboxIdOf } from '../protocol/ids.js';
import { CubeboxError, errorMessage, HTTP_STATUS, invalid, notFound } from '../util/errors.js';
import { DEFAULT_LOG_LINES, MAX_LOG_LINES, readConsoleLog, type LogRange } from './logs.js';
import { HttpError, type Caller, type Tenancy } from './tenancy.js';

/** The envd version cubebox answers: a semver the SDK compares against feature thresholds. */
export const ENVD_VERSION = '0.6.13';
export const DEFAULT_TIMEOUT_SEC = 300;
export const MAX_TIMEOUT_SEC = 24 * 60 * 60;

export interface ControlPlaneOptions {
  manager: SandboxManager;
  metrics: MetricsSampler;
  /** The caller behind an X-API-KEY value (its team, whether it is an admin key); undefined: not a live key. */
  authenticate: (key: string | undefined) => Caller | undefined;
  /** Teams and quotas. */
  tenancy: Tenancy;
  domain: string;
  clientId: string;
  /** Wraps each lifecycle operation (for latency and failure metrics). */
  observe?: <T>(op: string, fn: () => Promise<T>) => Promise<T>;
  /** GET /metrics: Prometheus text (no API key needed; aggregates only). */
  prometheus?: () => Promise<{ contentType: string; body: string }>;
}

/** E2B's error body: {code, message}, code equal to the HTTP status (the SDK reads the body's code). */
export function sendError(reply: FastifyReply, status: number, message: string): FastifyReply {
  return reply.code(status).type('application/json').send({ code: status, message });
}

type Req = FastifyRequest<{ Params: { id: string }; Querystring: Record<string, string | string[] | undefined>; Body: Record<string, unknown> | undefined }>;

/** E2B's REST control plane (contract section 2) over the sandbox manager. */
export function registerControlPlane(app: FastifyInstance, opts: ControlPlaneOptions): void {
  const { manager, metrics, tenancy } = opts;
  const callers = new WeakMap<FastifyRequest, Caller>();
  const callerOf = (req: FastifyRequest): Caller => {
    const c = callers.get(req);
    if (!c) throw new HttpError(401, 'Invalid API key');
    return c;
  };
  const observe = opts.observe ?? (<T>(_op: string, fn: () => Promise<T>) => fn());

  app.setErrorHandler((err: Error & { statusCode?: number }, _req, reply) => {
    if (err instanceof HttpError) return sendError(reply, err.status, err.message);
    if (err instanceof CubeboxError) return sendError(reply, HTTP_STATUS[err.kind], err.message);
    const status = err.statusCode && err.statusCode >= 400 && err.statusCode < 600 ? err.statusCode : 500;
    if (status >= 500) manager.log.error({ err: errorMessage(err) }, 'control-plane request failed');
    return sendError(reply, status, status === 400 && /JSON/i.test(err.message) ? `malformed request body: ${err.message}` : err.message);
  });
  app.setNotFoundHandler((req, reply) => sendError(reply, 404, `no route ${req.method} ${req.url.split('?')[0]}`));

  app.addHook('onRequest', async (req, reply) => {
    const path = req.url.split('?')[0];
    if (path === '/health' || (path === '/metrics' && opts.prometheus)) return;
    const key = req.headers['x-api-key'];
    const caller = opts.authenticate(Array.isArray(key) ? key[0] : key);
    if (!caller) {
      return sendError(reply, 401, 'Invalid API key: pass a valid key (e2b_...) in the X-API-KEY header; create one with `cubebox keys create`');
    }
    callers.set(req, caller);
  });

  app.get('/health', async (_req, reply) => reply.code(200).send({ status: 'ok' }));
  if (opts.prometheus) {
    const prometheus = opts.prometheus;
    app.get('/metrics', async (_req, reply) => {
      const m = await prometheus();
      return reply.code(200).type(m.contentType).send(m.body);
    });
  }

  // ---- helpers
  const idOf = (req: Req): string => {
    const raw = req.params.id;
    const id = sandboxIdOf(raw); // accepts <id>-<clientID>
    if (!id) throw notFound(`sandbox '${raw}' not found`);
    return id;
  };
  /**
   * The sandbox as the E2B API sees it: stopped, failed or deleting sandboxes are gone, and so
   * are other teams' sandboxes (404 like an unknown id: ids do not leak) unless the key is an admin's.
   */
  const visible = (req: FastifyRequest, id: string): SandboxInfo => {
    const caller = callerOf(req);
    let info: SandboxInfo;
    try {
      info = manager.get(id);
    } catch {
      throw notFound(`sandbox '${id}' not found`);
    }
    if (e2bState(info) === undefined || !owns(caller, info.team)) throw notFound(`sandbox '${id}' not found`);
    return info;
  };
  /** visible(), and the sandbox's team still has a live key (a blocked team's sandboxes only answer get, list and kill). */
  const usable = (req: FastifyRequest, id: string): SandboxInfo => {
    const info = visible(req, id);
    if (tenancy.blocked(info.team)) throw new HttpError(403, `sandbox '${id}' is blocked: its team has no live API key`);
    return info;
  };
  /** Templates a caller may start sandboxes from: public ones (built-in, host-made) and its team's. */
  const templateVisible = (caller: Caller, t: Template): boolean => {
    if (caller.admin) return true;
    if (t.config.team !== undefined) return t.config.team === caller.team;
    return !t.config.snapshotOf && !t.config.ephemeral; // fork and host snapshots carry a sandbox's files: admins only
  };
  const isSnapshot = (t: Template) => !!t.config.snapshotOf && !t.config.ephemeral && !t.config.buildStep;
  const timeoutOf = (body: Record<string, unknown> | undefined, key = 'timeout', fallback?: number): number | undefined => {
    const v = body?.[key];
    if (v === undefined || v === null) return fallback;
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw invalid(`${key} must be a non-negative number of seconds`);
    if (v > MAX_TIMEOUT_SEC) throw invalid(`${key} cannot be greater than ${MAX_TIMEOUT_SEC} seconds (24 hours)`);
    return Math.floor(v);
  };
  const sandboxBody = (info: SandboxInfo) => ({
    sandboxID: info.id,
    templateID: info.templateId,
    clientID: opts.clientId,
    alias: info.templateName,
    envdVersion: ENVD_VERSION,
    envdAccessToken: info.accessToken ?? undefined,
    trafficAccessToken: null,
    domain: opts.domain,
  });
  const listedBody = (info: SandboxInfo) => ({
    sandboxID: info.id,
    templateID: info.templateId,
    clientID: opts.clientId,
    alias: info.templateName,
    startedAt: new Date(info.startedAt ?? info.createdAt).toISOString(),
    endAt: new Date(info.endAt ?? info.startedAt ?? info.createdAt).toISOString(),
    state: e2bState(info)!,
    ...(cubeboxStateShown(info.state) ? { cubeboxState: info.state, error: info.lastError ?? undefined } : {}),
    cpuCount: info.limits.cpuCount,
    memoryMB: info.limits.memoryMB,
    diskSizeMB: diskSizeMB(manager, info),
    envdVersion: ENVD_VERSION,
    metadata: info.metadata,
  });
  const detailBody = (info: SandboxInfo) => ({
    ...listedBody(info),
    envdAccessToken: info.accessToken ?? undefined,
    domain: opts.domain,
    allowInternetAccess: (info.extra.allowInternetAccess as boolean | undefined) ?? true,
    network: info.extra.network ?? undefined,
    lifecycle: { onTimeout: info.lifecycle.onTimeout, autoResume: info.lifecycle.autoResume },
    volumeMounts: [],
  });

  // ---- create
  const create = async (req: Req, reply: FastifyReply) => {
    const caller = callerOf(req);
    const raw: unknown = req.body;
    if (raw === null || (raw !== undefined && (typeof raw !== 'object' || Array.isArray(raw)))) throw invalid('request body must be a JSON object');
    const b = (raw ?? {}) as Record<string, unknown>;
    const templateRef = b.templateID ?? 'base';
    if (typeof templateRef !== 'string' || !templateRef) throw invalid('templateID must be a string');
    const template = manager.templates.find(templateRef);
    if (!template || !templateVisible(caller, template)) throw notFound(`template '${templateRef}' not found`);
    const metadata = stringMap(b.metadata, 'metadata');
    tenancy.checkMetadata(caller.team, metadata);
    const envVars = stringMap(b.envVars, 'envVars');
    const timeoutSec = timeoutOf(b, 'timeout', DEFAULT_TIMEOUT_SEC)!;
    const autoPause = b.autoPause === true;
    const autoResume = typeof b.autoResume === 'object' && b.autoResume !== null && (b.autoResume as { enabled?: unknown }).enabled === true;
    const lifecycle: Lifecycle = { onTimeout: autoPause ? 'pause' : 'kill', autoResume, keepMemory: b.autoPauseMemory !== false };
    const info = await observe('create', () => manager.create({
      template: template.id,
      timeoutSec,
      metadata,
      envVars,
      lifecycle,
      secure: b.secure !== false,
      team: caller.team,
      extra: { allowInternetAccess: b.allow_internet_access ?? true, network: b.network ?? undefined, mcp: b.mcp ?? undefined },
    }));
    return reply.code(201).send(sandboxBody(info));
  };
  app.post('/sandboxes', create);
  app.post('/v2/sandboxes', create);

  // ---- list
  app.get('/sandboxes', async (req: Req) => {
    const caller = callerOf(req);
    const all = filterList(manager.list().filter((s) => owns(caller, s.team)), req.query, { defaultStates: ['running'] });
    return all.map(listedBody);
  });
  app.get('/v2/sandboxes', async (req: Req, reply) => {
    const q = req.query;
    const limitRaw = one(q.limit);
    const limit = limitRaw === undefined ? 100 : Number(limitRaw);
    if (!Number.isInteger(limit) || limit < 1 || limit > 100) throw invalid('limit must be an integer between 1 and 100');
    const order = (one(q.order) ?? 'desc').toLowerCase();
    if (order !== 'asc' && order !== 'desc') throw invalid("order must be 'asc' or 'desc'");
    const caller = callerOf(req);
    let items = filterList(manager.list().filter((s) => owns(caller, s.team)), q, { defaultStates: ['running', 'paused'] });
    const key = (s: SandboxInfo) => [s.startedAt ?? s.createdAt, s.id] as const;
    items.sort((a, b) => {
      const [ta, ia] = key(a);
      const [tb, ib] = key(b);
      const c = ta - tb || (ia < ib ? -1 : ia > ib ? 1 : 0);
      return order === 'asc' ? c : -c;
    });
    const token = one(q.nextToken);
    if (token) {
      let after: [number, string];
      try {
        after = JSON.parse(Buffer.from(token, 'base64url').toString('utf8')) as [number, string];
        if (!Array.isArray(after) || typeof after[0] !== 'number' || typeof after[1] !== 'string') throw new Error();
      } catch {
        throw invalid('nextToken is not a token this server issued');
      }
      const idx = items.findIndex((s) => {
        const [t, i] = key(s);
        const c = t - after[0] || (i < after[1] ? -1 : i > after[1] ? 1 : 0);
        return order === 'asc' ? c > 0 : c < 0;
      });
      items = idx < 0 ? [] : items.slice(idx);
    }
    const page = items.slice(0, limit);
    if (items.length > limit) {
      const last = page[page.length - 1]!;
      reply.header('X-Next-Token', Buffer.from(JSON.stringify(key(last))).toString('base64url'));
    }
    return page.map(listedBody);
  });

  // ---- one sandbox
  app.get('/sandboxes/:id', async (req: Req) => detailBody(visible(req, idOf(req))));

  app.delete('/sandboxes/:id', async (req: Req, reply) => {
    const id = idOf(req);
    visible(req, id);
    await observe('delete', () => manager.delete(id));
    return reply.code(204).send();
  });

  app.post('/sandboxes/:id/pause', async (req: Req, reply) => {
    const id = idOf(req);
    usable(req, id);
    await observe('pause', () => manager.pause(id, { memory: req.body?.memory !== false }));
    return reply.code(204).send();
  });

  app.post('/sandboxes/:id/resume', async (req: Req, reply) => {
    const id = idOf(req);
    usable(req, id);
    const timeoutSec = timeoutOf(req.body, 'timeout', DEFAULT_TIMEOUT_SEC);
    const info = await observe('resume', () => manager.resume(id, { timeoutSec }));
    return reply.code(201).send(sandboxBody(info));
  });

  const connect = async (req: Req, reply: FastifyReply) => {
    const id = idOf(req);
    usable(req, id);
    const timeoutSec = timeoutOf(req.body, 'timeout');
    const { info, resumed } = await observe('connect', () => manager.connect(id, timeoutSec));
    return reply.code(resumed ? 201 : 200).send(sandboxBody(info));
  };
  app.post('/sandboxes/:id/connect', connect);
  app.post('/v2/sandboxes/:id/connect', connect);

  app.post('/sandboxes/:id/timeout', async (req: Req, reply) => {
    const id = idOf(req);
    usable(req, id);
    const t = timeoutOf(req.body, 'timeout');
    if (t === undefined) throw invalid('timeout is required');
    await manager.setTimeout(id, t);
    return reply.code(204).send();
  });

  app.post('/sandboxes/:id/refreshes', async (req: Req, reply) => {
    const id = idOf(req);
    usable(req, id);
    const d = timeoutOf(req.body, 'duration', 60)!;
    await manager.refresh(id, d);
    return reply.code(204).send();
  });

  // ---- metrics and logs
  const metricBody = (info: SandboxInfo, m: MetricSample) => ({
    timestamp: new Date(m.ts).toISOString(),
    timestampUnix: Math.floor(m.ts / 1000),
    cpuCount: m.cpuCount,
    cpuUsedPct: m.cpuUsedPct,
    memUsed: m.memUsed,
    memTotal: m.memTotal,
    memCache: m.memCache,
    diskUsed: m.diskUsed,
    diskTotal: diskSizeMB(manager, info) * 1024 * 1024,
  });
  app.get('/sandboxes/metrics', async (req: Req) => {
    const ids = (one(req.query.sandbox_ids) ?? '').split(',').filter(Boolean);
    if (!ids.length) throw invalid('sandbox_ids is required');
    const out: Record<string, unknown> = {};
    for (const id of ids) {
      try {
        const info = visible(req, id);
        const m = metrics.latest(id);
        if (m) out[id] = metricBody(info, m);
      } catch {
        /* unknown ids are left out */
      }
    }
    return { sandboxes: out };
  });
  app.get('/sandboxes/:id/metrics', async (req: Req) => {
    const id = idOf(req);
    const info = visible(req, id);
    const sec = (k: string) => {
      const v = one(req.query[k]);
      if (v === undefined) return undefined;
      const n = Number(v);
      if (!Number.isFinite(n)) throw invalid(`${k} must be a unix timestamp in seconds`);
      return n * 1000;
    };
    return metrics.range(id, sec('start'), sec('end')).map((m) => metricBody(info, m));
  });

  /**
   * The console log by range, read asynchronously and bounded (lines and bytes): E2B's `start`
   * (v1) or `cursor` (v2) in ms, `limit`, and v2's `direction`. Lines carry the log's last write
   * time (the console keeps no per-line times): with a start at or before it the read goes
   * forward from the beginning; with none (or `direction=backward`) it is the tail.
   */
  const logs = async (id: string, q: Record<string, string | string[] | undefined>, startKey: 'start' | 'cursor') => {
    const limitRaw = one(q.limit);
    const limit = limitRaw === undefined ? DEFAULT_LOG_LINES : Number(limitRaw);
    if (!Number.isInteger(limit) || limit < 0) throw invalid('limit must be a non-negative integer');
    const startRaw = one(q[startKey]);
    const start = startRaw === undefined || startRaw === '' ? undefined : Number(startRaw);
    if (start !== undefined && !Number.isFinite(start)) throw invalid(`${startKey} must be a timestamp in milliseconds`);
    const direction = one(q.direction);
    if (direction !== undefined && direction !== 'forward' && direction !== 'backward') throw invalid("direction must be 'forward' or 'backward'");
    const range: LogRange = {
      from: direction === 'backward' || (direction === undefined && start === undefined) ? 'tail' : 'head',
      limit: Math.min(limit, MAX_LOG_LINES),
    };
    const read = await readConsoleLog(manager.consoleLogPath(id), range);
    if (start !== undefined && read.mtime.getTime() < start) return [];
    const level = one(q.level);
    if (level !== undefined && level !== 'debug' && level !== 'info') return [];
    const search = one(q.search);
    const at = read.mtime.toISOString();
    return read.lines.filter((l) => !search || l.includes(search)).map((line) => ({ timestamp: at, line }));
  };
  app.get('/sandboxes/:id/logs', async (req: Req) => {
    const id = idOf(req);
    usable(req, id);
    const lines = await logs(id, req.query, 'start');
    return { logs: lines, logEntries: lines.map((l) => ({ timestamp: l.timestamp, level: 'info', message: l.line, fields: {} })) };
  });
  app.get('/v2/sandboxes/:id/logs', async (req: Req) => {
    const id = idOf(req);
    usable(req, id);
    return { logs: (await logs(id, req.query, 'cursor')).map((l) => ({ timestamp: l.timestamp, level: 'info', message: l.line, fields: {} })) };
  });

  // ---- snapshots, fork, templates
  app.post('/sandboxes/:id/snapshots', async (req: Req, reply) => {
    const id = idOf(req);
    const info = usable(req, id);
    const name = req.body?.name;
    if (name !== undefined && typeof name !== 'string') throw invalid('name must be a string');
    // the snapshot belongs to the sandbox's team, and counts against its quota from now on
    const team = info.team ?? undefined;
    const release = team ? tenancy.reserveSnapshot(team, manager.templates.list().filter((t) => isSnapshot(t) && t.config.team === team).length) : () => {};
    try {
      const t = await observe('snapshot', () => manager.snapshot(id, { name, config: team ? { team } : {} }));
      return reply.code(201).send({ snapshotID: t.id, names: [t.name] });
    } finally {
      release();
    }
  });
  app.get('/snapshots', async (req: Req, reply) => {
    const caller = callerOf(req);
    const q = req.query;
    const sandboxId = one(q.sandboxID);
    const name = one(q.name);
    const limit = Number(one(q.limit) ?? 100);
    if (!Number.isInteger(limit) || limit < 1 || limit > 100) throw invalid('limit must be an integer between 1 and 100');
    let snaps = manager.templates
      .list()
      .filter((t) => isSnapshot(t) && (caller.admin || t.config.team === caller.team))
      .filter((t) => (!sandboxId || t.config.snapshotOf === sandboxId) && (!name || t.name === name))
      .sort((a, b) => b.createdAt - a.createdAt || (a.id < b.id ? -1 : 1));
    const token = one(q.nextToken);
    if (token) {
      const at = snaps.findIndex((t) => t.id === Buffer.from(token, 'base64url').toString('utf8'));
      snaps = at < 0 ? [] : snaps.slice(at + 1);
    }
    const page = snaps.slice(0, limit);
    if (snaps.length > limit) reply.header('X-Next-Token', Buffer.from(page[page.length - 1]!.id).toString('base64url'));
    return page.map((t) => ({ snapshotID: t.id, names: [t.name], sandboxID: t.config.snapshotOf, createdAt: new Date(t.createdAt).toISOString() }));
  });
  app.delete('/templates/:id', async (req: Req, reply) => {
    const caller = callerOf(req);
    const t = manager.templates.find(req.params.id);
    if (!t || !templateVisible(caller, t)) throw notFound(`template '${req.params.id}' not found`);
    if (!caller.admin && t.config.team !== caller.team) throw new HttpError(403, `template '${req.params.id}' is public: only an admin key (or the CLI) can delete it`);
    await manager.removeTemplate(t.id);
    return reply.code(204).send();
  });
  app.post('/sandboxes/:id/fork', async (req: Req, reply) => {
    const id = idOf(req);
    usable(req, id);
    const count = req.body?.count ?? 1;
    if (typeof count !== 'number') throw invalid('count must be a number');
    const timeoutSec = timeoutOf(req.body, 'timeout', DEFAULT_TIMEOUT_SEC);
    const src = manager.get(id);
    const results = await observe('fork', () =>
      manager.fork(id, count, { timeoutSec, metadata: src.metadata, lifecycle: src.lifecycle, extra: src.extra, team: src.team }),
    );
    const statusOf = (e: CubeboxError) => (e instanceof HttpError ? e.status : HTTP_STATUS[e.kind]);
    return reply.code(201).send(
      results.map((r) => (r.info ? { sandbox: sandboxBody(r.info) } : { error: { code: statusOf(r.error!), message: r.error!.message } })),
    );
  });

  // ---- teams (E2B's Team: the caller's own; an admin key sees every team)
  app.get('/teams', async (req) => {
    const caller = callerOf(req);
    const rows = caller.admin ? tenancy.teams() : [tenancy.team(caller.team)].filter((t) => t !== undefined);
    return rows.map((t) => ({
      teamID: t.id,
      name: t.name,
      // the key is stored hashed: its prefix identifies it without handing a secret around
      apiKey: t.id === caller.team ? `${caller.keyPrefix}…` : '',
      isDefault: t.id === caller.team,
    }));
  });

  // ---- not there yet: say so clearly
  app.put('/sandboxes/:id/network', async (_req, reply) => sendError(reply, 501, 'network policies are not supported by this cubebox version'));
}

/** running/paused as E2B reports them; undefined for sandboxes the API treats as gone (states.ts). */
export function e2bState(info: SandboxInfo): 'running' | 'paused' | undefined {
  return e2bStateOf(info.state);
}

function diskSizeMB(manager: SandboxManager, info: SandboxInfo): number {
  return manager.templates.find(info.templateId)?.config.diskSizeMB ?? 1024;
}

/** An admin key acts on every team's objects; any other key on its own team's. */
function owns(caller: Caller, team: string | null): boolean {
  return caller.admin || team === caller.team;
}

function one(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[v.length - 1] : v;
}

function stringMap(v: unknown, name: string): Record<string, string> {
  if (v === undefined || v === null) return {};
  if (typeof v !== 'object' || Array.isArray(v)) throw invalid(`${name} must be an object of strings`);
  const out: Record<string, string> = {};
  for (const [k, val] of Object.entries(v)) {
    if (typeof val !== 'string') throw invalid(`${name}.${k} must be a string`);
    out[k] = val;
  }
  return out;
}

/** The list filters: state, metadata (decoded as the SDK encodes it), template, startedAfter. */
function filterList(all: SandboxInfo[], q: Record<string, string | string[] | undefined>, opts: { defaultStates: string[] }): SandboxInfo[] {
  const rawStates = q.state === undefined ? opts.defaultStates : (Array.isArray(q.state) ? q.state : [q.state]).flatMap((s) => s.split(','));
  for (const s of rawStates) if (s !== 'running' && s !== 'paused') throw invalid(`unknown state '${s}' (running, paused)`);
  const states = new Set(rawStates);
  const meta: [string, string][] = [];
  const m = one(q.metadata);
  if (m) {
    // key=value pairs joined by '&' (each part URL-encoded): anything else is a bad filter, not "no match"
    for (const part of m.split('&')) {
      const eq = part.indexOf('=');
      if (eq <= 0) throw invalid(`bad metadata filter '${m.slice(0, 200)}': use key=value pairs joined by '&'`);
    }
    for (const [k, v] of new URLSearchParams(m)) meta.push([safeDecode(k), safeDecode(v)]);
  }
  const template = one(q.template);
  const afterRaw = one(q.startedAfter);
  const after = afterRaw ? Date.parse(afterRaw) : undefined;
  if (afterRaw && !Number.isFinite(after)) throw invalid('startedAfter must be an RFC 3339 time');
  return all.filter((s) => {
    const st = e2bState(s);
    if (!st || !states.has(st)) return false;
    if (meta.some(([k, v]) => s.metadata[k] !== v)) return false;
    if (template && s.templateId !== template && s.templateName !== template) return false;
    if (after !== undefined && (s.startedAt ?? s.createdAt) <= after) return false;
    return true;
  });
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    throw invalid(`bad metadata filter: '${s.slice(0, 200)}' is not URL-encoded`);
  }
}
