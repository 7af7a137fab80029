// What only an admin key reads: the host's capacity and state (api/host-status.ts).
import type { FastifyInstance } from 'fastify';
import { notFound } from '../../util/errors.js';
import { HttpError } from '../tenancy.js';
import type { RouteContext } from './context.js';

export function registerAdminRoutes(app: FastifyInstance, ctx: RouteContext): void {
  app.get('/admin/host', async (req) => {
    if (!ctx.callerOf(req).admin) throw new HttpError(403, 'only an admin key reads the host');
    const admin = ctx.node.admin;
    if (!admin) throw notFound('this server does not report its host');
    return admin.host();
  });
}
