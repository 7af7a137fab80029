// E2B's template build API, as the SDK's Template.build and `e2b template create` call it:
// POST /v3/templates (a build of a name), GET /templates/{id}/files/{hash} (an upload link for a
// step's files; `present` when the team has them) and the upload itself, POST
// /v2/templates/{id}/builds/{buildID} (the steps), the build's status and logs, and PATCH of the
// public flag. Names are per team and the public ones reserved (builder/builds.ts); a build and
// its files are its team's only (others get 404). The upload link carries its own signed token
// (the SDK sends no API key with it): the control plane's key check skips /templatefiles/.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Readable } from 'node:stream';
import type { TemplateBuilds } from '../../builder/builds.js';
import type { BuildLogRow } from '../../store/store.js';
import { invalid, notFound } from '../../util/errors.js';
import { HttpError } from '../tenancy.js';
import { checked, one, sendError, type Query, type RouteContext } from './context.js';

export const UPLOAD_PREFIX = '/templatefiles/';

interface BuildReq {
  Params: { templateID: string; buildID: string; hash: string; token: string };
  Querystring: Query;
  Body: Record<string, unknown> | undefined;
}

const requestBody = {
  type: 'object',
  properties: {
    name: { type: 'string', minLength: 1, maxLength: 130 },
    alias: { type: 'string', minLength: 1, maxLength: 130 },
    tags: { type: 'array', maxItems: 32, items: { type: 'string', minLength: 1, maxLength: 63 } },
    cpuCount: { type: 'integer', minimum: 1, maximum: 64 },
    memoryMB: { type: 'integer', minimum: 128, maximum: 262144 },
  },
} as const;

const LEVELS = ['debug', 'info', 'warn', 'error'];

export function registerTemplateBuildRoutes(app: FastifyInstance, ctx: RouteContext, builds: TemplateBuilds): void {
  const { callerOf, templates, templateVisible } = ctx;
  const entry = (l: BuildLogRow) => ({ timestamp: new Date(l.at).toISOString(), level: l.level, message: l.message, ...(l.step ? { step: l.step } : {}) });
  const num = (q: Query, key: string, fallback: number, max = Number.MAX_SAFE_INTEGER): number => {
    const v = one(q[key]);
    if (v === undefined || v === '') return fallback;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0) throw invalid(`${key} must be a whole number of 0 or more`);
    return Math.min(n, max);
  };
  const levelOf = (q: Query): number => {
    const l = one(q.level);
    if (l === undefined || l === '') return 0;
    if (!LEVELS.includes(l)) throw invalid(`level must be one of ${LEVELS.join(', ')}`);
    return LEVELS.indexOf(l);
  };
  const buildOf = (req: FastifyRequest<BuildReq>) => {
    const c = callerOf(req);
    return builds.get(req.params.buildID, req.params.templateID, c.team, c.admin);
  };

  app.post<BuildReq>('/v3/templates', { schema: { body: requestBody }, attachValidation: true }, async (req, reply) => {
    checked(req);
    const b = (req.body ?? {}) as { name?: string; alias?: string; tags?: string[]; cpuCount?: number; memoryMB?: number };
    const name = b.name ?? b.alias;
    if (!name) throw invalid('a template build needs a name');
    const r = builds.request(callerOf(req).team, { name, tags: b.tags, cpuCount: b.cpuCount, memoryMB: b.memoryMB });
    return reply.code(202).send({ ...r, aliases: r.names });
  });

  app.get<BuildReq>('/templates/:templateID/files/:hash', async (req, reply) => {
    const caller = callerOf(req);
    const ours = builds.ownsTemplate(req.params.templateID, caller.team);
    if (!ours) throw notFound(`template '${req.params.templateID}' not found`);
    const present = builds.files.present(caller.team, req.params.hash);
    const origin = `${req.protocol}://${req.headers.host ?? req.hostname}`;
    const token = builds.files.token(caller.team, req.params.hash);
    return reply.code(201).send({ present, url: `${origin}${UPLOAD_PREFIX}${req.params.hash}?token=${token}` });
  });

  app.register(async (sub) => {
    // the upload stays a stream: never parsed, never buffered (BuildFiles bounds and checks it)
    sub.removeAllContentTypeParsers();
    sub.addContentTypeParser('*', (_req, payload, done) => done(null, payload));
    sub.put<BuildReq>(`${UPLOAD_PREFIX}:hash`, async (req, reply) => {
      const t = builds.files.verify(one(req.query.token) ?? '');
      if (!t || t.hash !== req.params.hash) return sendError(reply, 403, 'this upload link is not valid (or has expired): ask for a new one');
      await builds.files.receive(t.team, t.hash, (req.body as Readable | undefined) ?? req.raw);
      return reply.code(201).send();
    });
  });

  app.post<BuildReq>('/v2/templates/:templateID/builds/:buildID', async (req, reply) => {
    const body = req.body;
    if (!body || typeof body !== 'object' || Array.isArray(body)) throw invalid('the build needs a JSON body (fromImage or fromTemplate, steps)');
    builds.start(buildOf(req), body);
    return reply.code(202).send();
  });

  app.get<BuildReq>('/templates/:templateID/builds/:buildID/status', async (req) => {
    const b = buildOf(req);
    const offset = num(req.query, 'logsOffset', 0);
    const limit = num(req.query, 'limit', 100, 1000);
    const min = levelOf(req.query);
    // read the status first: a ready or failed build has written all its lines by then
    const status = builds.current(b);
    const lines =
      min === 0
        ? builds.logs(b, offset, limit)
        : builds
            .logs(b, 0, 100_000)
            .filter((l) => LEVELS.indexOf(l.level) >= min)
            .slice(offset, offset + limit);
    const body: Record<string, unknown> = { buildID: b.id, templateID: b.templateId, status: status.status, logEntries: lines.map(entry), logs: [] };
    if (status.status === 'error') {
      const tail = builds.logs(b, 0, 100_000).slice(-20);
      body.reason = { message: status.reason ?? 'the build failed', ...(status.failedStep ? { step: status.failedStep } : {}), logEntries: tail.map(entry) };
    }
    return body;
  });

  app.get<BuildReq>('/templates/:templateID/builds/:buildID/logs', async (req) => {
    const b = buildOf(req);
    const limit = num(req.query, 'limit', 100, 1000);
    const cursor = num(req.query, 'cursor', 0);
    const direction = one(req.query.direction) ?? 'forward';
    if (direction !== 'forward' && direction !== 'backward') throw invalid("direction must be 'forward' or 'backward'");
    const min = levelOf(req.query);
    let lines = builds.logs(b, 0, 100_000).filter((l) => LEVELS.indexOf(l.level) >= min);
    if (direction === 'forward') lines = lines.filter((l) => l.at >= cursor).slice(0, limit);
    else
      lines = lines
        .filter((l) => !cursor || l.at <= cursor)
        .reverse()
        .slice(0, limit);
    return { logs: lines.map(entry) };
  });

  const patchPublic = (v2: boolean) => async (req: FastifyRequest<BuildReq>) => {
    const caller = callerOf(req);
    const t = templates.find(req.params.templateID, caller.team);
    if (!t || t.config.buildStep || t.config.ephemeral || !templateVisible(caller, t)) throw notFound(`template '${req.params.templateID}' not found`);
    if (t.config.team === undefined || (!caller.admin && t.config.team !== caller.team)) {
      throw new HttpError(403, `template '${t.name}' is not the team's own: only its team can change it`);
    }
    const pub = (req.body ?? {}).public;
    if (pub !== undefined && typeof pub !== 'boolean') throw invalid('public must be true or false');
    if (pub !== undefined) builds.setPublic(t, pub);
    return v2 ? { names: [t.name, ...(t.config.aliases ?? [])] } : {};
  };
  app.patch<BuildReq>('/templates/:templateID', patchPublic(false));
  app.patch<BuildReq>('/v2/templates/:templateID', patchPublic(true));
}
