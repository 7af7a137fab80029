// E2B's Team: the caller's own (an admin key sees every team), and the team's metrics over time
// (concurrent sandboxes, start rate) as the sampler records them.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { TeamSample } from '../../sandbox/metrics.js';
import { invalid, notFound } from '../../util/errors.js';
import { HttpError, QUOTA_KEYS, type Quota } from '../tenancy.js';
import { one, type Query, type RouteContext } from './context.js';

/** E2B's default window for team metrics when no start is given. */
const DEFAULT_WINDOW_MS = 60 * 60 * 1000;
const MAX_METRICS = { concurrent_sandboxes: 'concurrentSandboxes', sandbox_start_rate: 'sandboxStartRate' } as const;

interface TeamReq {
  Params: { teamID: string };
  Querystring: Query;
  Body: unknown;
}

/**
 * PATCH /teams/{teamID}/quota: a limit as a non-negative integer, or null for the default (as
 * `cubebox teams set-quota`). For the document: the route checks the body itself (quotaChange),
 * unknown limits included, which a schema would silently drop.
 */
const quotaBody = {
  type: 'object',
  properties: Object.fromEntries(QUOTA_KEYS.map((k) => [k, { type: ['integer', 'null'], minimum: 0 }])),
} as const;

/** The limits a PATCH body changes, checked with the words of the CLI's checks. */
function quotaChange(body: unknown): Partial<Record<keyof Quota, number | null>> {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) throw invalid('request body must be a JSON object of limits');
  const change: Partial<Record<keyof Quota, number | null>> = {};
  for (const [k, v] of Object.entries(body as Record<string, unknown>)) {
    if (!(QUOTA_KEYS as string[]).includes(k)) throw invalid(`unknown quota '${k}' (${QUOTA_KEYS.join(', ')})`);
    if (v !== null && (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || !Number.isSafeInteger(v)))
      throw invalid(`quota ${k} must be a non-negative integer or null (the default), got ${JSON.stringify(v)}`);
    change[k as keyof Quota] = v as number | null;
  }
  if (!Object.keys(change).length) throw invalid(`name at least one limit: ${QUOTA_KEYS.join(', ')}`);
  return change;
}

export function registerTeamRoutes(app: FastifyInstance, ctx: RouteContext): void {
  const { tenancy, callerOf, metrics } = ctx;
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

  /** The team of the path, by id: the caller's own, or any for an admin key; others are 404 like unknown ones. */
  const teamOf = (req: FastifyRequest<TeamReq>): string => {
    const caller = callerOf(req);
    const t = tenancy.team(req.params.teamID);
    if (!t || t.id !== req.params.teamID || (!caller.admin && t.id !== caller.team)) throw notFound(`team '${req.params.teamID}' not found`);
    return t.id;
  };
  /** start and end (unix seconds) as E2B takes them; the window defaults to the last hour. */
  const windowOf = (q: Query): { start: number; end: number } => {
    const sec = (k: string): number | undefined => {
      const v = one(q[k]);
      if (v === undefined || v === '') return undefined;
      const n = Number(v);
      if (!Number.isFinite(n) || n < 0) throw invalid(`${k} must be a unix timestamp in seconds`);
      return n * 1000;
    };
    const end = sec('end') ?? Date.now();
    const start = sec('start') ?? end - DEFAULT_WINDOW_MS;
    if (start > end) throw invalid('start must not be after end');
    return { start, end };
  };
  const stamp = (ts: number) => ({ timestamp: new Date(ts).toISOString(), timestampUnix: Math.floor(ts / 1000) });

  app.get<TeamReq>('/teams/:teamID/metrics', async (req) => {
    const team = teamOf(req);
    const { start, end } = windowOf(req.query);
    return metrics
      .teamRange(team, start, end)
      .map((m) => ({ ...stamp(m.ts), concurrentSandboxes: m.concurrentSandboxes, sandboxStartRate: m.sandboxStartRate }));
  });

  /** The team's quota and what its sandboxes and layers hold against it. */
  app.get<TeamReq>('/teams/:teamID/quota', async (req) => {
    const team = teamOf(req);
    return { quota: tenancy.quota(team), usage: await tenancy.usageEverywhere(team) };
  });

  /** An admin key sets (or with null resets) some of a team's limits; the body's checks are those of `cubebox teams set-quota`. */
  app.patch<TeamReq>('/teams/:teamID/quota', { schema: { body: quotaBody }, attachValidation: true }, async (req) => {
    if (!callerOf(req).admin) throw new HttpError(403, 'only an admin key changes quotas');
    const team = teamOf(req);
    const admin = ctx.node.admin;
    if (!admin) throw notFound('this server does not change quotas: use `cubebox teams set-quota`');
    const quota = await admin.setQuota(team, quotaChange(req.body));
    return { quota, usage: tenancy.usage(team) };
  });

  app.get<TeamReq>('/teams/:teamID/metrics/max', async (req) => {
    const team = teamOf(req);
    const name = one(req.query.metric);
    if (name === undefined) throw invalid('metric is required: concurrent_sandboxes or sandbox_start_rate');
    if (!(name in MAX_METRICS)) throw invalid(`unknown metric '${name}' (concurrent_sandboxes, sandbox_start_rate)`);
    const field = MAX_METRICS[name as keyof typeof MAX_METRICS];
    const { start, end } = windowOf(req.query);
    let best: TeamSample | undefined;
    for (const m of metrics.teamRange(team, start, end)) if (!best || m[field] > best[field]) best = m;
    // no point in the window: nothing ran, so the maximum is 0 at the window's end
    return { ...stamp(best?.ts ?? end), value: best?.[field] ?? 0 };
  });
}
