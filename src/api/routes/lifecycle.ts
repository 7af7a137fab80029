// A sandbox's lifecycle: pause, resume, connect (resumes a paused one), its timeout and refreshes.
import type { FastifyInstance, FastifyReply } from 'fastify';
import { invalid } from '../../util/errors.js';
import { checked, DEFAULT_TIMEOUT_SEC, timeoutOf, type Req, type RouteContext } from './context.js';
import { refreshBody, timeoutBody } from './schemas.js';

export function registerLifecycleRoutes(app: FastifyInstance, ctx: RouteContext): void {
  const { sandboxes, observe, idOf, usable, sandboxBody } = ctx;

  app.post('/sandboxes/:id/pause', async (req: Req, reply) => {
    const id = idOf(req);
    usable(req, id);
    await observe('pause', () => sandboxes.pause(id, { memory: req.body?.memory !== false }));
    return reply.code(204).send();
  });

  app.post('/sandboxes/:id/resume', { schema: { body: timeoutBody }, attachValidation: true }, async (req: Req, reply) => {
    const id = idOf(req);
    usable(req, id);
    checked(req);
    const timeoutSec = timeoutOf(req.body, 'timeout', DEFAULT_TIMEOUT_SEC);
    const info = await observe('resume', () => sandboxes.resume(id, { timeoutSec }));
    return reply.code(201).send(sandboxBody(info));
  });

  const connect = async (req: Req, reply: FastifyReply) => {
    const id = idOf(req);
    usable(req, id);
    checked(req);
    const timeoutSec = timeoutOf(req.body, 'timeout');
    const { info, resumed } = await observe('connect', () => sandboxes.connect(id, timeoutSec));
    return reply.code(resumed ? 201 : 200).send(sandboxBody(info));
  };
  app.post('/sandboxes/:id/connect', { schema: { body: timeoutBody }, attachValidation: true }, connect);
  app.post('/v2/sandboxes/:id/connect', { schema: { body: timeoutBody }, attachValidation: true }, connect);

  app.post('/sandboxes/:id/timeout', { schema: { body: timeoutBody }, attachValidation: true }, async (req: Req, reply) => {
    const id = idOf(req);
    usable(req, id);
    checked(req);
    const t = timeoutOf(req.body, 'timeout');
    // (a body without one passes the schema, which checks an object's fields only)
    if (t === undefined) throw invalid('timeout is required');
    await sandboxes.setTimeout(id, t);
    return reply.code(204).send();
  });

  app.post('/sandboxes/:id/refreshes', { schema: { body: refreshBody }, attachValidation: true }, async (req: Req, reply) => {
    const id = idOf(req);
    usable(req, id);
    checked(req);
    const d = timeoutOf(req.body, 'duration', 60)!;
    await sandboxes.refresh(id, d);
    return reply.code(204).send();
  });
}
