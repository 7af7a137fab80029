// The control plane's OpenAPI 3.1 document, made from the routes themselves: an onRoute hook
// records every route registered after it (any file, any plugin), and GET /openapi.json turns
// their fastify schemas (the same ones that validate requests) into paths and operations.
// A route without a body schema still appears, with its path parameters; its query parameters
// appear once it declares a querystring schema. OpenAPI 3.1 takes JSON Schema as is, so the
// schemas go out unchanged (type unions and null included).
import { readFileSync } from 'node:fs';
import type { FastifyInstance, RouteOptions } from 'fastify';

export const OPENAPI_PATH = '/openapi.json';

type Schema = Record<string, unknown>;
interface RouteSchemas {
  body?: Schema;
  querystring?: Schema;
  params?: Schema;
  response?: Record<string, Schema>;
  // OpenAPI-only fields a route may add to its schema (fastify ignores them)
  summary?: string;
  description?: string;
  tags?: string[];
  deprecated?: boolean;
  /** e.g. [{ VolumeToken: [] }] for a route authenticated otherwise than by X-API-KEY. */
  security?: object[];
}

export interface OpenApiOptions {
  /** Whether a path answers without an API key (its operations get `security: []`). */
  isPublic: (path: string | undefined) => boolean;
  /** The document's version; default: cubebox's (package.json). */
  version?: string;
}

function packageVersion(): string {
  try {
    // dist/src/api/openapi.js -> the project's package.json
    return (JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    return '0.0.0';
  }
}

/** Records routes from now on and serves the document made from them. Call before any route is registered. */
export function registerOpenApi(app: FastifyInstance, opts: OpenApiOptions): void {
  const routes: RouteOptions[] = [];
  app.addHook('onRoute', (r) => {
    routes.push(r);
  });
  let doc: object | undefined; // routes cannot change once the listener is ready
  app.get(OPENAPI_PATH, async () => (doc ??= openApiDocument(routes, opts)));
}

const METHODS = ['get', 'put', 'post', 'delete', 'options', 'patch', 'trace'];

/** fastify's `/sandboxes/:id` as OpenAPI's `/sandboxes/{id}` (a parameter's regular expression dropped). */
export function openApiPath(url: string): string {
  return url.replace(/:(\w+)(\([^)]*\))?/g, '{$1}');
}

export function openApiDocument(routes: readonly RouteOptions[], opts: OpenApiOptions): object {
  const paths: Record<string, Record<string, object>> = {};
  for (const r of routes) {
    const path = openApiPath(r.url);
    const s = (r.schema ?? {}) as RouteSchemas;
    // fastify adds a HEAD route for every GET; it needs no entry of its own
    for (const method of [r.method].flat().map((m) => m.toLowerCase())) {
      if (!METHODS.includes(method)) continue;
      (paths[path] ??= {})[method] = operation(method, path, s, opts.isPublic(path));
    }
  }
  const sorted = Object.fromEntries(Object.entries(paths).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
  return {
    openapi: '3.1.0',
    info: {
      title: 'cubebox control plane',
      version: opts.version ?? packageVersion(),
      description: "E2B's REST control plane as cubebox serves it. Errors are E2B's {code, message}, code equal to the HTTP status.",
    },
    security: [{ ApiKeyAuth: [] }],
    paths: sorted,
    components: {
      securitySchemes: {
        ApiKeyAuth: { type: 'apiKey', in: 'header', name: 'X-API-KEY' },
        VolumeToken: { type: 'http', scheme: 'bearer', description: "a volume's own token (the volume content API)" },
      },
      schemas: {
        Error: {
          type: 'object',
          required: ['code', 'message'],
          properties: { code: { type: 'integer', description: 'the HTTP status' }, message: { type: 'string' } },
        },
      },
    },
  };
}

function operation(method: string, path: string, s: RouteSchemas, isPublic: boolean): object {
  const pathParams = [...path.matchAll(/\{(\w+)\}/g)].map((m) => m[1]!);
  const declared = (s.params?.properties ?? {}) as Record<string, Schema>;
  const parameters: object[] = pathParams.map((name) => ({ name, in: 'path', required: true, schema: plain(declared[name] ?? { type: 'string' }) }));
  const query = s.querystring;
  if (query) {
    const required = new Set((query.required as string[] | undefined) ?? []);
    for (const [name, schema] of Object.entries((query.properties ?? {}) as Record<string, Schema>)) {
      parameters.push({ name, in: 'query', required: required.has(name), schema: plain(schema) });
    }
  }
  const responses: Record<string, object> = {};
  for (const [code, schema] of Object.entries(s.response ?? {})) {
    responses[code.toUpperCase()] = { description: `${code} response`, content: { 'application/json': { schema: plain(schema) } } };
  }
  if (!Object.keys(responses).some((c) => c.startsWith('2'))) responses['2XX'] = { description: 'success' };
  responses.default = { description: "an error: E2B's {code, message}", content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } } };
  return {
    operationId: `${method}${path.replace(/[{}]/g, '').replace(/[^A-Za-z0-9]+(.)?/g, (_m, c: string | undefined) => (c ?? '').toUpperCase())}`,
    ...(s.summary ? { summary: s.summary } : {}),
    ...(s.description ? { description: s.description } : {}),
    ...(s.tags ? { tags: s.tags } : {}),
    ...(s.deprecated ? { deprecated: true } : {}),
    ...(parameters.length ? { parameters } : {}),
    ...(s.body
      ? {
          requestBody: {
            required: Array.isArray(s.body.required) && s.body.required.length > 0,
            content: { 'application/json': { schema: plain(s.body) } },
          },
        }
      : {}),
    responses,
    ...(isPublic ? { security: [] } : s.security ? { security: s.security } : {}),
  };
}

/** A schema as plain JSON (the route's own object is shared with its validator). */
function plain(schema: unknown): Schema {
  return JSON.parse(JSON.stringify(schema)) as Schema;
}
