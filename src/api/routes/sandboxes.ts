// Sandboxes as a collection and one by one: create, list (v1 and the paginated v2), get, delete.
import { existsSync } from 'node:fs';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { CONNTRACK_FILE } from '../../network/conntrack.js';
import { HttpError } from '../tenancy.js';
import { RUNTIME_METADATA_KEY, type Lifecycle, type SandboxInfo } from '../../sandbox/types.js';
import { invalid, notFound } from '../../util/errors.js';
import { DEFAULT_TIMEOUT_SEC, e2bState, schemaError, one, owns, timeoutOf, type Query, type Req, type RouteContext, type RouteTypes } from './context.js';
import { networkSettings, type NetworkInput, type NetworkSettings } from '../../network/policy.js';
import { checkRuleSecrets, sealedSettings } from '../../network/egress-secrets.js';
import { createBody, invalidPath } from './schemas.js';

/** The network options of a create or update body (an object, or nothing). */
function networkInput(v: unknown): NetworkInput {
  if (v === undefined || v === null) return {};
  if (typeof v !== 'object' || Array.isArray(v)) throw invalid('network must be an object');
  return v as NetworkInput;
}

export function registerSandboxRoutes(app: FastifyInstance, ctx: RouteContext): void {
  const { sandboxes, templates, tenancy, observe, callerOf, idOf, visible, usable, templateVisible, sandboxBody, listedBody, detailBody } = ctx;

  // ---- create
  const create = async (req: Req, reply: FastifyReply) => {
    const caller = callerOf(req);
    // createBody checks an object whose templateID, metadata, envVars and timeout are well formed;
    // its verdict counts in that order, around the template lookup and the metadata quota
    const bad = schemaError(req);
    const badField = bad && (invalidPath(bad)[0] ?? '');
    if (bad && (badField === '' || badField === 'templateID')) throw bad;
    const b = req.body as Record<string, unknown>;
    const templateRef = (b.templateID ?? 'base') as string;
    await templates.ensure(templateRef); // a template built on first use (code-interpreter-v1)
    const template = templates.find(templateRef, caller.team); // the team's own name first, then the public one
    if (!template || !templateVisible(caller, template)) throw notFound(`template '${templateRef}' not found`);
    if (bad && badField === 'metadata') throw bad;
    const metadata = { ...(b.metadata as Record<string, string> | null | undefined) };
    tenancy.checkMetadata(caller.team, metadata);
    if (bad) throw bad;
    const envVars = { ...(b.envVars as Record<string, string> | null | undefined) };
    const timeoutSec = timeoutOf(b, 'timeout', DEFAULT_TIMEOUT_SEC)!;
    const autoPause = b.autoPause === true;
    const autoResume = typeof b.autoResume === 'object' && b.autoResume !== null && (b.autoResume as { enabled?: unknown }).enabled === true;
    const lifecycle: Lifecycle = { onTimeout: autoPause ? 'pause' : 'kill', autoResume, keepMemory: b.autoPauseMemory !== false };
    if (b.iam !== undefined && b.iam !== null) throw invalid('iam (workload identity tokens) is not supported by this service');
    const asked = networkSettings({ allowInternetAccess: b.allow_internet_access ?? undefined, ...networkInput(b.network) });
    await checkRuleSecrets(ctx.node.secrets, caller.team, asked.rules);
    const network = sealedSettings(ctx.node.secrets, caller.team, tunnelable(asked));
    const info = await observe('create', () =>
      sandboxes.create({
        template: template.id,
        timeoutSec,
        metadata,
        envVars,
        lifecycle,
        secure: b.secure !== false,
        team: caller.team,
        network,
        extra: { mcp: b.mcp ?? undefined },
        volumeMounts: (b.volumeMounts as { name: string; path: string }[] | null | undefined) ?? undefined, // createBody: checked
        runtime: metadata[RUNTIME_METADATA_KEY],
      }),
    );
    return reply.code(201).send(sandboxBody(info));
  };
  // no body is an empty one (a JSON null is not: the schema refuses it)
  const noBodyIsEmpty = async (req: FastifyRequest) => {
    if (req.body === undefined) req.body = {};
  };
  app.post<RouteTypes>('/sandboxes', { schema: { body: createBody }, attachValidation: true, preValidation: noBodyIsEmpty }, create);
  app.post<RouteTypes>('/v2/sandboxes', { schema: { body: createBody }, attachValidation: true, preValidation: noBodyIsEmpty }, create);

  // ---- list
  app.get('/sandboxes', async (req: Req) => {
    const caller = callerOf(req);
    const all = filterList(
      sandboxes.list().filter((s) => owns(caller, s.team)),
      req.query,
      { defaultStates: ['running'] },
    );
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
    let items = filterList(
      sandboxes.list().filter((s) => owns(caller, s.team)),
      q,
      { defaultStates: ['running', 'paused'] },
    );
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
    await observe('delete', () => sandboxes.delete(id));
    return reply.code(204).send();
  });

  // ---- not there yet: say so clearly
  // ---- egress policy, replaced live (omitted fields are cleared; ingress settings are kept)
  app.put('/sandboxes/:id/network', async (req: Req, reply) => {
    const id = idOf(req);
    const info = usable(req, id);
    const b = req.body;
    if (typeof b !== 'object' || b === null || Array.isArray(b)) throw invalid('the body must be a JSON object (NetworkUpdate)');
    const u = b as Record<string, unknown>;
    const settings = networkSettings({ ...networkInput(u), allowInternetAccess: u.allow_internet_access ?? undefined }, info.network);
    await checkRuleSecrets(ctx.node.secrets, info.team ?? '', settings.rules);
    await sandboxes.updateNetwork(id, sealedSettings(ctx.node.secrets, info.team ?? '', tunnelable(settings)));
    return reply.code(204).send();
  });
}

/**
 * Settings with an upstream proxy need the kernel's connection table to find where each of the
 * sandbox's connections was going: refused up front (501) on a host without it, rather than
 * every connection failing later.
 */
function tunnelable(s: NetworkSettings): NetworkSettings {
  if (s.egressProxy && !existsSync(CONNTRACK_FILE))
    throw new HttpError(
      501,
      `network.egressProxy needs the kernel's connection tracking table (${CONNTRACK_FILE}), which this host does not have (modprobe nf_conntrack)`,
    );
  return s;
}

/** The list filters: state, metadata (decoded as the SDK encodes it), template, startedAfter. */
function filterList(all: SandboxInfo[], q: Query, opts: { defaultStates: string[] }): SandboxInfo[] {
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
    // inclusive, as E2B's: the SDK passes back the very startedAt it got (both in ms)
    if (after !== undefined && (s.startedAt ?? s.createdAt) < after) return false;
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
