// Persistent volumes (E2B's /volumes): create, list, get, delete, all scoped to the caller's
// team (another team's volume answers 404, like an unknown id). The volume content API, which
// authenticates with each volume's own token, is in volume-content.ts.
import type { FastifyInstance } from 'fastify';
import type { VolumeRow } from '../../volume/volumes.js';
import { checked, type Req, type RouteContext } from './context.js';
import { volumeBody } from './schemas.js';
import { registerVolumeContentRoutes } from './volume-content.js';

export function registerVolumeRoutes(app: FastifyInstance, ctx: RouteContext): void {
  const { node, tenancy, callerOf } = ctx;
  const volumes = node.volumes;
  const withToken = (v: VolumeRow) => ({ volumeID: v.id, name: v.name, token: v.token });

  app.post('/volumes', { schema: { body: volumeBody }, attachValidation: true }, async (req: Req, reply) => {
    const caller = callerOf(req);
    checked(req);
    const name = req.body!.name as string; // volumeBody: a string
    const v = await volumes.create(caller.team, name, (existing) => tenancy.admitVolume(caller.team, existing, volumes.sizeMB));
    return reply.code(201).send(withToken(v));
  });
  app.get('/volumes', async (req: Req) => {
    const caller = callerOf(req);
    return volumes
      .list(caller.admin ? undefined : caller.team)
      .filter((v) => v.state === 'ready')
      .map((v) => ({ volumeID: v.id, name: v.name }));
  });
  app.get('/volumes/:id', async (req: Req) => {
    const caller = callerOf(req);
    return withToken(volumes.get(req.params.id, caller.team, caller.admin));
  });
  app.delete('/volumes/:id', async (req: Req, reply) => {
    const caller = callerOf(req);
    volumes.get(req.params.id, caller.team, caller.admin, true);
    await volumes.delete(req.params.id);
    return reply.code(204).send();
  });

  registerVolumeContentRoutes(app, volumes, node.log, (team) => tenancy.blocked(team));
}
