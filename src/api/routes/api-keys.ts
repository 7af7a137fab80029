// E2B's team API keys (`/api-keys`, TeamAPIKey in E2B's API description): list, create (the key
// is in that one response and nowhere else, ever), rename, revoke. A team key manages its own
// team's keys but for admin keys, which it neither sees nor makes; an admin key sees every
// team's (`?teamID=` narrows the list) and may make a team's key. Revoked keys are gone, as
// E2B deletes them; revoking the key of the request itself is allowed (its next use is a 401).
// Only the response schemas' fields go out: never a key's hash.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { notFound } from '../../util/errors.js';
import type { ApiKeyInfo } from '../keys.js';
import type { Caller } from '../tenancy.js';
import { one, type Query, type RouteContext } from './context.js';

/** The key's value after 'e2b_': 40 hex characters, of which the store keeps the first 8. */
const VALUE_LENGTH = 40;
const KEY_PREFIX = 'e2b_';

const mask = {
  type: 'object',
  required: ['prefix', 'valueLength', 'maskedValuePrefix', 'maskedValueSuffix'],
  properties: {
    prefix: { type: 'string' },
    valueLength: { type: 'integer' },
    maskedValuePrefix: { type: 'string' },
    maskedValueSuffix: { type: 'string' },
  },
} as const;
const keyProps = {
  id: { type: 'string' },
  name: { type: 'string' },
  mask,
  createdAt: { type: 'string', format: 'date-time' },
  createdBy: { type: 'null' },
  lastUsed: { type: ['string', 'null'], format: 'date-time' },
  teamID: { type: 'string', description: "the key's team (cubebox)" },
  admin: { type: 'boolean', description: 'whether the key manages every team (cubebox; only admin keys see these)' },
} as const;
const teamApiKey = { type: 'object', required: ['id', 'name', 'mask', 'createdAt'], properties: keyProps } as const;
const createdKey = {
  type: 'object',
  required: ['id', 'key', 'name', 'mask', 'createdAt'],
  properties: { ...keyProps, key: { type: 'string', description: 'the key itself: shown in this response only' } },
} as const;
const name = { type: 'string', maxLength: 200 } as const;
const newKeyBody = {
  type: 'object',
  required: ['name'],
  properties: { name, teamID: { type: 'string', description: "admin keys only: the team of the new key (default: the caller's)" } },
} as const;
const updateKeyBody = { type: 'object', required: ['name'], properties: { name } } as const;
const params = { type: 'object', properties: { apiKeyID: { type: 'string' } } } as const;
const listQuery = { type: 'object', properties: { teamID: { type: 'string', description: "admin keys only: one team's keys" } } } as const;

interface KeyReq {
  Params: { apiKeyID: string };
  Body: { name: string };
}

function keyBody(k: ApiKeyInfo) {
  return {
    id: k.id,
    name: k.name,
    mask: { prefix: KEY_PREFIX, valueLength: VALUE_LENGTH, maskedValuePrefix: k.prefix.slice(KEY_PREFIX.length), maskedValueSuffix: '' },
    createdAt: new Date(k.createdAt).toISOString(),
    createdBy: null,
    lastUsed: k.lastUsedAt === null ? null : new Date(k.lastUsedAt).toISOString(),
    teamID: k.team,
    admin: k.admin,
  };
}

/** Whether the caller may see and manage the key: live, and its own team's (not an admin key) unless the caller is an admin. */
const manages = (caller: Caller, k: ApiKeyInfo) => k.revokedAt === null && (caller.admin || (k.team === caller.team && !k.admin));

export function registerApiKeyRoutes(app: FastifyInstance, ctx: RouteContext): void {
  const { callerOf, tenancy } = ctx;
  const store = () => {
    const keys = ctx.node.apiKeys;
    if (!keys) throw notFound('this server does not manage API keys: use `cubebox keys`');
    return keys;
  };
  /** A team named by id that the caller may act for (another team answers 404 like an unknown one). */
  const teamOf = (caller: Caller, id: string | undefined): string => {
    if (id === undefined || id === '') return caller.team;
    const t = tenancy.team(id);
    if (!t || t.id !== id || (!caller.admin && t.id !== caller.team)) throw notFound(`team '${id}' not found`);
    return t.id;
  };
  const keyOf = async (req: FastifyRequest<KeyReq>): Promise<ApiKeyInfo> => {
    const k = await store().get(req.params.apiKeyID);
    if (!k || !manages(callerOf(req), k)) throw notFound(`API key '${req.params.apiKeyID}' not found`);
    return k;
  };

  app.get<{ Querystring: Query }>('/api-keys', { schema: { querystring: listQuery, response: { 200: { type: 'array', items: teamApiKey } } } }, async (req) => {
    const caller = callerOf(req);
    const filter = one(req.query.teamID);
    // a team key's list is its own team's; an admin's is every team's unless it names one
    const team = caller.admin && !filter ? undefined : teamOf(caller, filter);
    const keys = (await store().list()).filter((k) => manages(caller, k) && (team === undefined || k.team === team));
    return keys.map(keyBody);
  });

  app.post<{ Body: { name: string; teamID?: string } }>('/api-keys', { schema: { body: newKeyBody, response: { 201: createdKey } } }, async (req, reply) => {
    const caller = callerOf(req);
    const team = teamOf(caller, req.body.teamID);
    const made = await store().create(req.body.name, { team, admin: false });
    return reply.code(201).send({ ...keyBody(made.info), key: made.key });
  });

  app.patch<KeyReq>('/api-keys/:apiKeyID', { schema: { params, body: updateKeyBody, response: { 200: teamApiKey } } }, async (req) => {
    const k = await keyOf(req);
    return keyBody(await store().rename(k.id, req.body.name));
  });

  app.delete<KeyReq>('/api-keys/:apiKeyID', { schema: { params } }, async (req, reply) => {
    const k = await keyOf(req);
    await store().revoke(k.id);
    return reply.code(204).send();
  });
}
