// Templates as E2B's API shows them: list, one with its builds, tags, the alias check behind
// the SDK's Template.exists, and delete. A cubebox template is one finished build: its build
// id is derived from the template id, so it stays the same across calls.
//
// Who may do what: every key sees public templates (built-in and host-made) and its team's
// own (snapshots); other teams' are 404 like unknown ones. A name is looked up in the key's
// team first, then among the public ones: each team names its templates as it likes, and the
// public names are nobody's to take (template/store.ts). Changing or deleting a public
// template is the host's business: an admin key (or the CLI) only, others get a 403 saying so.
import { createHash } from 'node:crypto';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { RESERVED_TAGS, type Template } from '../../template/store.js';
import { notFound } from '../../util/errors.js';
import { HttpError, type Caller } from '../tenancy.js';
import { checked, ENVD_VERSION, one, type Query, type RouteContext } from './context.js';

const tagList = { type: 'array', minItems: 1, maxItems: 32, items: { type: 'string', minLength: 1, maxLength: 63 } } as const;
const assignTagsBody = {
  type: 'object',
  required: ['target', 'tags'],
  properties: { target: { type: 'string', minLength: 1, maxLength: 200 }, tags: tagList },
} as const;
const deleteTagsBody = {
  type: 'object',
  required: ['name', 'tags'],
  properties: { name: { type: 'string', minLength: 1, maxLength: 200 }, tags: tagList },
} as const;

interface TemplateReq {
  Params: { templateID: string; alias: string };
  Querystring: Query;
  Body: Record<string, unknown> | undefined;
}

/** A stable UUID-shaped build id for the template (E2B's builds are UUIDs). */
function buildIdOf(t: Template): string {
  const h = createHash('sha256').update(`cubebox-build:${t.id}`).digest('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-8${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

export function registerTemplateRoutes(app: FastifyInstance, ctx: RouteContext): void {
  const { templates, callerOf, templateVisible, isSnapshot } = ctx;
  const iso = (ms: number) => new Date(ms).toISOString();
  const isPublic = (t: Template) => t.config.team === undefined;
  /** Templates a user names: not build steps or fork snapshots (internal). */
  const listable = (t: Template) => !t.config.buildStep && !t.config.ephemeral;
  const names = (t: Template) => [t.name, ...(t.config.aliases ?? [])];

  /** The template a key names (id, name, alias or name:tag) and may see; 404 otherwise. */
  const visibleTemplate = (req: FastifyRequest, ref: string): Template => {
    const caller = callerOf(req);
    const t = templates.find(ref, caller.team);
    if (!t || !listable(t) || !templateVisible(caller, t)) throw notFound(`template '${ref}' not found`);
    return t;
  };
  /** visibleTemplate, or in a cluster a team's template only other nodes have (no layers here). */
  const visibleAnywhere = async (req: FastifyRequest, ref: string): Promise<Template> => {
    const caller = callerOf(req);
    const here = templates.find(ref, caller.team);
    const t = here ?? (await templates.findShared?.(ref, caller.team));
    if (!t || !listable(t) || !templateVisible(caller, t)) throw notFound(`template '${ref}' not found`);
    return t;
  };
  /** visibleTemplate, and the key may change it: its team's own, or any with an admin key. */
  const ownTemplate = (req: FastifyRequest, ref: string, what: string, found?: Template): Template => {
    const t = found ?? visibleTemplate(req, ref);
    const caller = callerOf(req);
    if (!caller.admin && t.config.team !== caller.team) {
      throw new HttpError(403, `template '${t.name}' is public (made on the host): only an admin key or the cubebox CLI can ${what} it`);
    }
    return t;
  };

  const templateBody = (t: Template) => ({
    templateID: t.id,
    buildID: buildIdOf(t),
    cpuCount: t.config.cpuCount,
    memoryMB: t.config.memoryMB,
    diskSizeMB: t.config.diskSizeMB,
    public: isPublic(t),
    aliases: names(t),
    names: names(t),
    createdAt: iso(t.createdAt),
    updatedAt: iso(t.createdAt),
    createdBy: null,
    // spawns are not recorded per template
    lastSpawnedAt: null,
    spawnCount: 0,
    buildCount: 1,
    buildStatus: 'ready',
    envdVersion: ENVD_VERSION,
  });

  const listTemplates = async (req: FastifyRequest<TemplateReq>) => {
    const caller = callerOf(req);
    const teamID = one(req.query.teamID);
    if (teamID !== undefined && teamID !== '' && !caller.admin && teamID !== caller.team) throw notFound(`team '${teamID}' not found`);
    const inTeam = (t: Template) => !teamID || isPublic(t) || t.config.team === teamID;
    const here = templates.list();
    const ids = new Set(here.map((t) => t.id));
    // in a cluster: the team's templates (and public-flagged ones) made on other nodes too
    const elsewhere = ((await templates.listShared?.(caller.team)) ?? []).filter((t) => !ids.has(t.id));
    return [...here, ...elsewhere]
      .filter((t) => listable(t) && !isSnapshot(t) && templateVisible(caller, t) && inTeam(t))
      .sort((a, b) => a.createdAt - b.createdAt || (a.id < b.id ? -1 : 1))
      .map(templateBody);
  };
  app.get<TemplateReq>('/templates', listTemplates);
  app.get<TemplateReq>('/v2/templates', listTemplates);

  app.get<TemplateReq>('/templates/:templateID', async (req) => {
    const t = await visibleAnywhere(req, req.params.templateID);
    const { buildID, cpuCount, memoryMB, diskSizeMB, envdVersion, buildStatus, createdAt, ...rest } = templateBody(t);
    const { buildCount: _c, ...summary } = rest;
    const caller = callerOf(req);
    // the builds made through the API (their ids answer the build status and logs routes); a host-made template has none
    const made = (ctx.node.builds?.ofTemplate(t.id, caller.team, caller.admin) ?? []).map((b) => ({
      buildID: b.id,
      status: b.status,
      createdAt: iso(b.createdAt),
      updatedAt: iso(b.updatedAt),
      finishedAt: b.finishedAt === null ? undefined : iso(b.finishedAt),
      cpuCount,
      memoryMB,
      diskSizeMB,
      envdVersion,
    }));
    return {
      ...summary,
      createdAt,
      builds: made.length
        ? made
        : [{ buildID, status: buildStatus, createdAt, updatedAt: createdAt, finishedAt: createdAt, cpuCount, memoryMB, diskSizeMB, envdVersion }],
    };
  });

  app.get<TemplateReq>('/templates/:templateID/tags', async (req) => {
    const t = visibleTemplate(req, req.params.templateID);
    const buildID = buildIdOf(t);
    return [
      { tag: 'default', buildID, createdAt: iso(t.createdAt) },
      ...(t.config.tags ?? []).map((tag) => ({ tag, buildID, createdAt: iso(t.config.tagsAt?.[tag] ?? t.createdAt) })),
    ];
  });

  app.post<TemplateReq>('/templates/tags', { schema: { body: assignTagsBody }, attachValidation: true }, async (req, reply) => {
    checked(req);
    const { target, tags } = req.body as { target: string; tags: string[] };
    const t = ownTemplate(req, target, 'tag');
    for (const tag of tags) templates.addTag(t.id, tag);
    return reply.code(201).send({ buildID: buildIdOf(t), tags });
  });

  app.delete<TemplateReq>('/templates/tags', { schema: { body: deleteTagsBody }, attachValidation: true }, async (req, reply) => {
    checked(req);
    const { name, tags } = req.body as { name: string; tags: string[] };
    const t = ownTemplate(req, name, 'untag');
    const missing = tags.filter((tag) => !RESERVED_TAGS.includes(tag) && !t.config.tags?.includes(tag));
    if (missing.length) throw notFound(`template '${t.name}' has no tag ${missing.map((m) => `'${m}'`).join(', ')}`);
    for (const tag of tags) templates.removeTag(t.id, tag);
    return reply.code(204).send();
  });

  // Template.exists: by name or alias only (not by id or name:tag)
  app.get<TemplateReq>('/templates/aliases/:alias', async (req) => {
    const alias = req.params.alias;
    const caller: Caller = callerOf(req);
    const t = templates.find(alias, caller.team) ?? (await templates.findShared?.(alias, caller.team));
    if (!t || !listable(t) || !names(t).includes(alias) || !templateVisible(caller, t)) throw notFound(`template '${alias}' not found`);
    return { templateID: t.id, public: isPublic(t) };
  });

  app.delete<TemplateReq>('/templates/:templateID', async (req, reply) => {
    const t = ownTemplate(req, req.params.templateID, 'delete', await visibleAnywhere(req, req.params.templateID));
    await templates.remove(t.id);
    return reply.code(204).send();
  });
}
