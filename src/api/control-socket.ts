// The manager's API on the data directory's unix socket (root-only: 0600), for the CLI while
// `cubebox serve` runs. Routes declare their schemas; errors answer {kind, message} with the
// status of util/errors' HTTP_STATUS. The client is control-client.ts.
import { mkdtempSync, renameSync, readdirSync, rmSync, statSync, chmodSync, unlinkSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Recipe } from '../builder/recipe.js';
import type { CreateRequest } from '../sandbox/manager.js';
import type { TemplateConfig } from '../template/store.js';
import { CubeboxError, errorKind, errorMessage, HTTP_STATUS, type ErrorKind } from '../util/errors.js';
import { EXEC_HEADER } from './control-client.js';
import type { LocalApi, TemplateSource } from './manager-api.js';

const str = { type: 'string' } as const;
const bool = { type: 'boolean' } as const;
const obj = { type: 'object' } as const;
const stringMap = { type: 'object', additionalProperties: { type: 'string' } } as const;
const idParams = { type: 'object', required: ['id'], properties: { id: { type: 'string', minLength: 1 } } } as const;

const createBody = {
  type: 'object',
  required: ['template'],
  properties: {
    template: { type: 'string', minLength: 1 },
    limits: obj,
    env: stringMap,
    metadata: stringMap,
    agent: bool,
    command: { type: 'array', items: str },
    timeoutSec: { type: 'number' },
    envVars: stringMap,
    lifecycle: obj,
    secure: bool,
    extra: obj,
  },
} as const;
const pauseBody = { type: 'object', properties: { memory: bool } } as const;
const addTemplateBody = {
  type: 'object',
  required: ['name'],
  properties: {
    name: { type: 'string', minLength: 1 },
    dir: str,
    image: str,
    ref: str,
    registry: { type: 'object', required: ['username', 'password'], properties: { username: str, password: str }, additionalProperties: false },
    busybox: bool,
    base: bool,
    codeInterpreter: bool,
    config: obj,
  },
} as const;
const buildBody = {
  type: 'object',
  required: ['name', 'recipe'],
  properties: {
    name: { type: 'string', minLength: 1 },
    recipe: { type: 'object', required: ['from', 'steps'], properties: { from: str, steps: { type: 'array', items: obj } } },
    contextDir: str,
  },
} as const;
const namesBody = { type: 'object', properties: { alias: str, tag: str } } as const;

type IdReq = FastifyRequest<{ Params: { id: string } }>;

/** Serves a LocalApi on the data directory's unix socket (root-only: the socket is 0600). */
export class ControlServer {
  private app: FastifyInstance | undefined;

  constructor(
    private readonly api: LocalApi,
    private readonly socketPath: string,
  ) {}

  async listen(): Promise<void> {
    const app = routes(this.api);
    this.app = app;
    const dir = dirname(this.socketPath);
    // We hold the manager lock, so a socket file (or a staging directory) left here belongs to a dead manager.
    for (const n of readdirSync(dir)) if (n.startsWith(STAGING)) rmSync(join(dir, n), { recursive: true, force: true });
    try {
      unlinkSync(this.socketPath);
    } catch {
      /* none */
    }
    // bind(2) makes the socket 0777 & ~umask, and narrowing the process umask across fastify's
    // asynchronous listen would narrow every file made meanwhile. So the socket is bound in a
    // fresh 0700 directory, made 0600 there, and renamed into place: at its real path it is
    // 0600 from the moment it exists.
    const staging = mkdtempSync(join(dir, STAGING));
    try {
      const staged = join(staging, basename(this.socketPath));
      await app.listen({ path: staged });
      chmodSync(staged, 0o600);
      renameSync(staged, this.socketPath);
    } finally {
      rmSync(staging, { recursive: true, force: true });
    }
    const mode = statSync(this.socketPath).mode & 0o777;
    if (mode !== 0o600) throw new Error(`control socket ${this.socketPath} has mode ${mode.toString(8)}, not 600`);
  }

  /** Stops listening; in-flight requests finish first unless `abort` (then open streams are cut). */
  async close(abort = false): Promise<void> {
    if (!this.app) return;
    if (abort) this.app.server.closeAllConnections();
    await this.app.close();
    try {
      unlinkSync(this.socketPath);
    } catch {
      /* already gone */
    }
  }
}

const STAGING = '.control-socket-';

function sendError(reply: FastifyReply, kind: ErrorKind, message: string): FastifyReply {
  return reply.code(HTTP_STATUS[kind]).type('application/json').send({ kind, message });
}

/** The routes of the control socket, on a fastify instance of their own. */
export function routes(api: LocalApi): FastifyInstance {
  // HEAD /sandboxes is the client's "does a manager answer": a 404 is as good as anything.
  const app = Fastify({ logger: false, exposeHeadRoutes: false, bodyLimit: 64 * 1024 * 1024 });

  // An empty body is {}, as every route's schema expects an object.
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (_req, body, done) => {
    const text = String(body);
    if (!text) return done(null, {});
    try {
      done(null, JSON.parse(text) as unknown);
    } catch {
      done(new CubeboxError('invalid_argument', 'request body is not valid JSON'), undefined);
    }
  });
  app.setErrorHandler((err: Error & { validation?: unknown; statusCode?: number }, _req, reply) => {
    if (reply.sent || reply.raw.headersSent) {
      reply.raw.destroy();
      return;
    }
    if (err.validation) return sendError(reply, 'invalid_argument', err.message);
    if (!(err instanceof CubeboxError) && err.statusCode && err.statusCode >= 400 && err.statusCode < 500) {
      return sendError(reply, err.statusCode === 404 ? 'not_found' : 'invalid_argument', err.message);
    }
    return sendError(reply, errorKind(err), errorMessage(err));
  });
  app.setNotFoundHandler((req, reply) => sendError(reply, 'not_found', `no route ${req.method} ${req.url.split('?')[0]}`));

  app.get('/sandboxes', async () => api.list());
  app.post('/sandboxes', { schema: { body: createBody } }, async (req, reply) => reply.code(201).send(await api.create(req.body as CreateRequest)));
  app.get('/sandboxes/:id', { schema: { params: idParams } }, async (req: IdReq) => api.get(req.params.id));
  app.get('/sandboxes/:id/network', { schema: { params: idParams } }, async (req: IdReq) => api.network(req.params.id));
  app.delete('/sandboxes/:id', { schema: { params: idParams } }, async (req: IdReq, reply) => {
    await api.delete(req.params.id);
    return reply.code(204).send();
  });
  app.post('/sandboxes/:id/pause', { schema: { params: idParams, body: pauseBody } }, async (req: IdReq) =>
    api.pause(req.params.id, { memory: (req.body as { memory?: boolean }).memory !== false }),
  );
  app.post('/sandboxes/:id/resume', { schema: { params: idParams } }, async (req: IdReq) => api.resume(req.params.id));

  app.get('/templates', async () => api.listTemplates());
  app.post('/templates', { schema: { body: addTemplateBody } }, async (req, reply) => {
    const b = req.body as { name: string; config?: Partial<TemplateConfig> } & TemplateSource;
    const source = {
      dir: b.dir,
      busybox: b.busybox,
      base: b.base,
      codeInterpreter: b.codeInterpreter,
      image: b.image,
      ref: b.ref,
      ...(b.registry && { registry: b.registry }),
    };
    return reply.code(201).send(await api.addTemplate(b.name, source, b.config));
  });
  app.post('/templates/build', { schema: { body: buildBody } }, async (req, reply) => {
    const b = req.body as { name: string; recipe: Recipe; contextDir?: string };
    return reply.code(201).send(await api.buildRecipe(b.name, b.recipe, b.contextDir));
  });
  app.post('/templates/:id/names', { schema: { params: idParams, body: namesBody } }, async (req: IdReq) =>
    api.tagTemplate(req.params.id, req.body as { alias?: string; tag?: string }),
  );
  app.delete('/templates/:id', { schema: { params: idParams } }, async (req: IdReq, reply) => {
    await api.removeTemplate(req.params.id);
    return reply.code(204).send();
  });

  app.post('/reconcile', async () => api.reconcile());

  // exec: the request body is the command's stdin, passed through unparsed
  void app.register(async (raw) => {
    raw.removeAllContentTypeParsers();
    raw.addContentTypeParser('*', (_req, _payload, done) => done(null, undefined));
    raw.post('/sandboxes/:id/exec', { schema: { params: idParams } }, async (req: IdReq, reply) => exec(api, req, reply));
  });
  return app;
}

/** Streams a command's output as NDJSON frames: {o: base64} / {e: base64}, then {exit}. */
async function exec(api: LocalApi, req: IdReq, reply: FastifyReply): Promise<void> {
  let spec: { args?: string[]; env?: Record<string, string>; cwd?: string };
  try {
    spec = JSON.parse(Buffer.from(String(req.headers[EXEC_HEADER] ?? ''), 'base64').toString('utf8')) as typeof spec;
  } catch {
    throw new CubeboxError('invalid_argument', `exec needs its command in the ${EXEC_HEADER} header`);
  }
  const child = await api.manager.exec(req.params.id, spec.args ?? [], { stdio: ['pipe', 'pipe', 'pipe'], env: spec.env, cwd: spec.cwd });
  reply.hijack();
  const res = reply.raw;
  child.stdin!.on('error', () => undefined); // the command may exit without reading it all
  req.raw.pipe(child.stdin!);
  res.writeHead(200, { 'content-type': 'application/x-ndjson' });
  child.stdout!.on('data', (d: Buffer) => res.write(JSON.stringify({ o: d.toString('base64') }) + '\n'));
  child.stderr!.on('data', (d: Buffer) => res.write(JSON.stringify({ e: d.toString('base64') }) + '\n'));
  res.on('close', () => {
    if (child.exitCode === null) child.kill('SIGKILL'); // the runtime exec process, which we spawned
  });
  const code = await new Promise<number>((resolve) => child.on('close', (c, s) => resolve(c ?? (s ? 137 : 1))));
  res.end(JSON.stringify({ exit: code }) + '\n');
}
