// A sandbox's lifecycle: pause, resume, connect (resumes a paused one), its timeout and refreshes.
import type { FastifyInstance, FastifyReply } from 'fastify';
import { invalid } from '../../util/errors.js';
import { DEFAULT_TIMEOUT_SEC, timeoutOf, type Req, type RouteContext } from './context.js';

export function registerLifecycleRoutes(app: FastifyInstance, ctx: RouteContext): void {
  const { manager, observe, idOf, usable, sandboxBody } = ctx;

  app.post('/sandboxes/:id/pause', async (req: Req, reply) => {
    const id = idOf(req);
    usable(req, id);
    await observe('pause', () => manager.pause(id, { memory: req.body?.memory !== false }));
    return reply.code(204).send();
  });

  app.post('/sandboxes/:id/resume', async (req: Req, reply) => {
    const id = idOf(req);
    usable(req, id);
    const timeoutSec = timeoutOf(req.body, 'timeout', DEFAULT_TIMEOUT_SEC);
    const info = await observe('resume', () => manager.resume(id, { timeoutSec }));
    return reply.code(201).send(sandboxBody(info));
  });

  const connect = async (req: Req, reply: FastifyReply) => {
    const id = idOf(req);
    usable(req, id);
    const timeoutSec = timeoutOf(req.body, 'timeout');
    const { info, resumed } = await observe('connect', () => manager.connect(id, timeoutSec));
    return reply.code(resumed ? 201 : 200).send(sandboxBody(info));
  };
  app.post('/sandboxes/:id/connect', connect);
  app.post('/v2/sandboxes/:id/connect', connect);

  app.post('/sandboxes/:id/timeout', async (req: Req, reply) => {
    const id = idOf(req);
    usable(req, id);
    const t = timeoutOf(req.body, 'timeout');
    if (t === undefined) throw invalid('timeout is required');
    await manager.setTimeout(id, t);
    return reply.code(204).send();
  });

  app.post('/sandboxes/:id/refreshes', async (req: Req, reply) => {
    const id = idOf(req);
    usable(req, id);
    const d = timeoutOf(req.body, 'duration', 60)!;
    await manager.refresh(id, d);
    return reply.code(204).send();
  });
}
