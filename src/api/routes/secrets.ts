// E2B's secrets (`Secret` in the SDK): a team's named values, sealed at rest with the data
// directory's key (src/secrets/). No response, log line or error carries a value: the response
// schemas below have no field for it, so fastify's serializer could not send one either.
// Secrets belong to the caller's team only (an admin key included: names are unique per team),
// and another team's secret answers 404 like an unknown one. They are stored, not yet used:
// resolving `${e2b.secrets.<name>}` in outbound requests is the egress proxy's job.
import { randomBytes } from 'node:crypto';
import type { FastifyInstance, FastifyReply } from 'fastify';
import { seal } from '../../secrets/cipher.js';
import type { SecretRow } from '../../store/shared.js';
import { invalid, notFound } from '../../util/errors.js';
import { quotaExceeded } from '../tenancy.js';
import { one, schemaError, type Req, type RouteContext } from './context.js';

/** Bounds from E2B's API description (SecretMetadata), and for names and values our own. */
export const SECRET_LIMITS = {
  nameChars: 128,
  valueBytes: 64 * 1024,
  metadataEntries: 32,
  metadataKeyBytes: 128,
  metadataValueBytes: 1024,
  metadataBytes: 8192,
};
const L = SECRET_LIMITS;
/** Letters, digits, '.', '_', '-', a letter or digit first, any case (stored lower-cased); `sec_` starts ids only. */
const NAME_PATTERN = '^(?![sS][eE][cC]_)[A-Za-z0-9][A-Za-z0-9._-]*$';
const NAME = new RegExp(NAME_PATTERN);
const NAME_RULE = `secret name must be 1-${L.nameChars} letters, digits, '.', '_' or '-', starting with a letter or digit, and not start with 'sec_' (reserved for secret ids)`;

// what the schemas can say exactly; sizes in bytes are checked in checkedBody
const metadata = { type: ['object', 'null'], maxProperties: L.metadataEntries, additionalProperties: { type: 'string' } } as const;
const value = { type: 'string', minLength: 1 } as const;
export const newSecretBody = {
  type: 'object',
  required: ['name', 'value'],
  properties: { name: { type: 'string', minLength: 1, maxLength: L.nameChars, pattern: NAME_PATTERN }, value, metadata },
} as const;
export const secretUpdateBody = { type: 'object', required: ['value'], properties: { value, metadata } } as const;
const secretSchema = {
  type: 'object',
  required: ['secretID', 'name', 'currentVersion', 'metadata', 'createdAt', 'updatedAt'],
  properties: {
    secretID: { type: 'string' },
    name: { type: 'string' },
    currentVersion: { type: 'integer' },
    metadata: { type: 'object', additionalProperties: { type: 'string' } },
    createdAt: { type: 'string', format: 'date-time' },
    updatedAt: { type: 'string', format: 'date-time' },
  },
} as const;
const params = { type: 'object', properties: { id: { type: 'string' } } } as const;

const secretBody = (s: SecretRow) => ({
  secretID: s.id,
  name: s.name,
  currentVersion: s.version,
  metadata: s.metadata,
  createdAt: new Date(s.createdAt).toISOString(),
  updatedAt: new Date(s.updatedAt).toISOString(),
});

/** The message of a schema failure: it names the field, never its content. */
function schemaMessage(e: { keyword: string; instancePath: string; params: Record<string, unknown> } | undefined): string {
  if (!e) return 'request body is not valid';
  if (e.keyword === 'required') return `${String(e.params.missingProperty)} is required`;
  const field = e.instancePath.split('/')[1];
  if (!field) return 'request body must be a JSON object';
  if (field === 'name') return e.keyword === 'type' ? 'name must be a string' : NAME_RULE;
  if (field === 'value') return e.keyword === 'minLength' ? 'value must not be empty' : 'value must be a string';
  if (field === 'metadata' && e.keyword === 'maxProperties') return `metadata must have at most ${L.metadataEntries} entries`;
  return 'metadata must be an object of strings';
}

/** The body's fields once the schema and the byte bounds passed. */
function checkedBody(req: Req): { name?: string; value: string; metadata?: Record<string, string> } {
  const err = schemaError(req);
  if (err) throw invalid(schemaMessage(err.validation?.[0]));
  const body = req.body as { name?: string; value: string; metadata?: Record<string, string> | null };
  if (Buffer.byteLength(body.value) > L.valueBytes) throw invalid(`value must be at most ${L.valueBytes} bytes`);
  const md = body.metadata ?? undefined;
  if (md) checkMetadata(md);
  return { name: body.name?.toLowerCase(), value: body.value, metadata: md };
}

function checkMetadata(md: Record<string, string>): void {
  let total = 0;
  for (const [k, v] of Object.entries(md)) {
    const kb = Buffer.byteLength(k);
    const vb = Buffer.byteLength(v);
    if (kb === 0 || kb > L.metadataKeyBytes) throw invalid(`metadata keys must be 1-${L.metadataKeyBytes} bytes`);
    if (vb > L.metadataValueBytes) throw invalid(`metadata values must be at most ${L.metadataValueBytes} bytes`);
    total += kb + vb;
  }
  if (total > L.metadataBytes) throw invalid(`metadata must be at most ${L.metadataBytes} bytes in all`);
}

export function registerSecretRoutes(app: FastifyInstance, ctx: RouteContext): void {
  const { node, tenancy, callerOf } = ctx;
  // the key is opened on first use: `cubebox serve` made (or refused) it at start-up
  const secrets = () => node.secrets.rows;
  const sealingKey = () => node.secrets.sealingKey();
  const found = async (team: string, ref: string): Promise<SecretRow> => {
    const s = await secrets().find(team, ref);
    if (!s) throw notFound(`secret '${ref}' not found`);
    return s;
  };

  app.post('/secrets', { schema: { body: newSecretBody, response: { 201: secretSchema } }, attachValidation: true }, async (req: Req, reply: FastifyReply) => {
    const team = callerOf(req).team;
    const { name, value, metadata } = checkedBody(req);
    const id = `sec_${randomBytes(12).toString('hex')}`;
    const now = Date.now();
    const row: SecretRow = {
      id,
      team,
      name: name!,
      version: 1,
      sealed: seal(sealingKey(), value, { team, secretId: id, version: 1 }),
      metadata: metadata ?? {},
      createdAt: now,
      updatedAt: now,
    };
    // a name taken answers 409; the count and the insert it allows are one step of the store
    const limit = tenancy.quota(team).secrets;
    await secrets().insert(row, (n) => {
      if (n + 1 > limit)
        throw quotaExceeded(`quota exceeded: secrets of team '${tenancy.team(team)?.name ?? team}' would be ${n + 1}, its limit (secrets) is ${limit}`);
    });
    return reply.code(201).send(secretBody(row));
  });

  app.get('/secrets', { schema: { response: { 200: { type: 'array', items: secretSchema } } } }, async (req: Req, reply) => {
    const team = callerOf(req).team;
    const limit = Number(one(req.query.limit) ?? 100);
    if (!Number.isInteger(limit) || limit < 1 || limit > 100) throw invalid('limit must be an integer between 1 and 100');
    const token = one(req.query.nextToken);
    const after = token ? Buffer.from(token, 'base64url').toString('utf8') : undefined;
    if (token && (!after || !NAME.test(after))) throw invalid('nextToken is not a token this service gave');
    const page = await secrets().list(team, after, limit + 1);
    if (page.length > limit) {
      page.length = limit;
      reply.header('X-Next-Token', Buffer.from(page[limit - 1]!.name).toString('base64url'));
    }
    return page.map(secretBody);
  });

  app.get('/secrets/:id', { schema: { params, response: { 200: secretSchema } } }, async (req: Req) =>
    secretBody(await found(callerOf(req).team, req.params.id)),
  );

  // the SDK's Secret.update sends POST; PATCH is the same update
  app.route({
    method: ['POST', 'PATCH'],
    url: '/secrets/:id',
    schema: { params, body: secretUpdateBody, response: { 200: secretSchema } },
    attachValidation: true,
    handler: async (req: Req) => {
      const team = callerOf(req).team;
      const cur = await found(team, req.params.id);
      const { value, metadata } = checkedBody(req);
      const version = cur.version + 1;
      const next = {
        ...cur,
        version,
        sealed: seal(sealingKey(), value, { team, secretId: cur.id, version }),
        metadata: metadata ?? cur.metadata,
        updatedAt: Date.now(),
      };
      await secrets().update(next);
      return secretBody(next);
    },
  });

  app.delete('/secrets/:id', { schema: { params } }, async (req: Req, reply) => {
    const team = callerOf(req).team;
    const s = await found(team, req.params.id);
    await secrets().delete(team, s.id);
    return reply.code(204).send();
  });
}
