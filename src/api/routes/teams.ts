// E2B's Team: the caller's own; an admin key sees every team.
import type { FastifyInstance } from 'fastify';
import type { RouteContext } from './context.js';

export function registerTeamRoutes(app: FastifyInstance, ctx: RouteContext): void {
  const { tenancy, callerOf } = ctx;
  app.get('/teams', async (req) => {
    const caller = callerOf(req);
    const rows = caller.admin ? tenancy.teams() : [tenancy.team(caller.team)].filter((t) => t !== undefined);
    return rows.map((t) => ({
      teamID: t.id,
      name: t.name,
      // the key is stored hashed: its prefix identifies it without handing a secret around
      apiKey: t.id === caller.team ? `${caller.keyPrefix}…` : '',
      isDefault: t.id === caller.team,
    }));
  });
}
