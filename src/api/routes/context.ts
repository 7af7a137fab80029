// What every control-plane route file shares: the options, the caller of a request, how a
// sandbox id is read and checked against the caller, and the bodies E2B's SDK reads.
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import type { SandboxInfo } from '../../sandbox/types.js';
import { cubeboxStateShown, e2bStateOf } from '../../sandbox/states.js';
import type { Template } from '../../template/store.js';
import { sandboxIdOf } from '../../protocol/ids.js';
import { shownSettings } from '../../network/policy.js';
import { notFound } from '../../util/errors.js';
import type { NodeApi } from '../node-api.js';
import { HttpError, type Caller } from '../tenancy.js';
import { MAX_TIMEOUT_SEC } from './schemas.js';

export { MAX_TIMEOUT_SEC };

/** The envd version cubebox answers: a semver the SDK compares against feature thresholds. */
export const ENVD_VERSION = '0.6.13';
export const DEFAULT_TIMEOUT_SEC = 300;

export interface ControlPlaneOptions {
  /** The node the routes act on: sandboxes, templates, volumes, secrets, teams, keys. */
  node: NodeApi;
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

export type Query = Record<string, string | string[] | undefined>;
export interface RouteTypes {
  Params: { id: string };
  Querystring: Query;
  Body: Record<string, unknown> | undefined;
}
export type Req = FastifyRequest<RouteTypes>;

/** running/paused as E2B reports them; undefined for sandboxes the API treats as gone (states.ts). */
export function e2bState(info: SandboxInfo): 'running' | 'paused' | undefined {
  return e2bStateOf(info.state);
}

/** An admin key acts on every team's objects; any other key on its own team's. */
export function owns(caller: Caller, team: string | null): boolean {
  return caller.admin || team === caller.team;
}

/** A query parameter given once or more: its last value. */
export function one(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[v.length - 1] : v;
}

/** The schema's verdict on the request (routes declare attachValidation), undefined if it passed. */
export function schemaError(req: FastifyRequest): FastifyError | undefined {
  return req.validationError as FastifyError | undefined;
}

/** Throws the schema's verdict: for the error handler, which answers it with a 400. */
export function checked(req: FastifyRequest): void {
  const err = schemaError(req);
  if (err) throw err;
}

/** A seconds field of a body the route's schema checked (0 to MAX_TIMEOUT_SEC, or null or absent: the fallback). */
export function timeoutOf(body: unknown, key = 'timeout', fallback?: number): number | undefined {
  const v = body !== null && typeof body === 'object' && !Array.isArray(body) ? (body as Record<string, unknown>)[key] : undefined;
  return typeof v === 'number' ? Math.floor(v) : fallback;
}

/** The helpers of one registerControlPlane call, over its options and the callers its auth hook recorded. */
export type RouteContext = ReturnType<typeof routeContext>;

export function routeContext(opts: ControlPlaneOptions, callers: WeakMap<FastifyRequest, Caller>) {
  const { sandboxes, templates, teams: tenancy } = opts.node;
  const callerOf = (req: FastifyRequest): Caller => {
    const c = callers.get(req);
    if (!c) throw new HttpError(401, 'Invalid API key');
    return c;
  };
  const observe = opts.observe ?? (<T>(_op: string, fn: () => Promise<T>) => fn());
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
      info = sandboxes.get(id);
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
    if (t.config.team !== undefined) return t.config.team === caller.team || t.config.public === true;
    return !t.config.snapshotOf && !t.config.ephemeral; // fork and host snapshots carry a sandbox's files: admins only
  };
  const isSnapshot = (t: Template) => !!t.config.snapshotOf && !t.config.ephemeral && !t.config.buildStep;
  const diskSizeMB = (info: SandboxInfo): number => templates.find(info.templateId)?.config.diskSizeMB ?? 1024;
  const sandboxBody = (info: SandboxInfo) => ({
    sandboxID: info.id,
    templateID: info.templateId,
    clientID: opts.clientId,
    alias: info.templateName,
    envdVersion: ENVD_VERSION,
    envdAccessToken: info.accessToken ?? undefined,
    trafficAccessToken: info.trafficAccessToken,
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
    diskSizeMB: diskSizeMB(info),
    envdVersion: ENVD_VERSION,
    metadata: info.metadata,
    volumeMounts: info.volumeMounts,
  });
  const detailBody = (info: SandboxInfo) => ({
    ...listedBody(info),
    envdAccessToken: info.accessToken ?? undefined,
    domain: opts.domain,
    allowInternetAccess: info.network.allowInternetAccess,
    network: {
      allowOut: info.network.allowOut,
      denyOut: info.network.denyOut,
      allowPublicTraffic: info.network.allowPublicTraffic,
      maskRequestHost: info.network.maskRequestHost,
      httpsPorts: info.network.httpsPorts,
      rules: info.network.rules,
      egressProxy: shownSettings(info.network).egressProxy,
    },
    lifecycle: { onTimeout: info.lifecycle.onTimeout, autoResume: info.lifecycle.autoResume },
  });
  // (not a spread of opts: `domain` may be a getter, read when a body is made)
  return {
    node: opts.node,
    sandboxes,
    templates,
    metrics: opts.node.metrics,
    tenancy,
    observe,
    callerOf,
    idOf,
    visible,
    usable,
    templateVisible,
    isSnapshot,
    diskSizeMB,
    sandboxBody,
    listedBody,
    detailBody,
  };
}
