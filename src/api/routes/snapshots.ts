// Snapshots (templates made from a sandbox through the API) and fork; a snapshot is deleted as a
// template (DELETE /templates/{id}, routes/templates.ts).
import type { FastifyInstance } from 'fastify';
import type { Template } from '../../template/store.js';
import { CubeboxError, HTTP_STATUS, invalid } from '../../util/errors.js';
import { HttpError } from '../tenancy.js';
import { checked, DEFAULT_TIMEOUT_SEC, one, timeoutOf, type Req, type RouteContext } from './context.js';
import { forkBody, snapshotBody } from './schemas.js';

/**
 * cubebox's own field beside E2B's: "memory" when the snapshot keeps the sandbox's processes and
 * memory (its runtime checkpoints: gVisor), "filesystem" when it keeps its files only.
 */
const kindOf = (t: Template) => (t.config.checkpoint ? 'memory' : 'filesystem');

export function registerSnapshotRoutes(app: FastifyInstance, ctx: RouteContext): void {
  const { sandboxes, templates, tenancy, observe, callerOf, idOf, usable, isSnapshot, sandboxBody } = ctx;

  app.post('/sandboxes/:id/snapshots', { schema: { body: snapshotBody }, attachValidation: true }, async (req: Req, reply) => {
    const id = idOf(req);
    const info = usable(req, id);
    checked(req);
    const name = req.body?.name as string | undefined; // snapshotBody: a string if given
    // the snapshot belongs to the sandbox's team, and counts against its quota from now on
    const team = info.team ?? undefined;
    const release = team ? tenancy.reserveSnapshot(team, templates.list().filter((t) => isSnapshot(t) && t.config.team === team).length) : () => {};
    try {
      const t = await observe('snapshot', () => sandboxes.snapshot(id, { name, config: team ? { team } : {} }));
      return reply.code(201).send({ snapshotID: t.id, names: [t.name], kind: kindOf(t) });
    } finally {
      release();
    }
  });
  app.get('/snapshots', async (req: Req, reply) => {
    const caller = callerOf(req);
    const q = req.query;
    const sandboxId = one(q.sandboxID);
    const name = one(q.name);
    const limit = Number(one(q.limit) ?? 100);
    if (!Number.isInteger(limit) || limit < 1 || limit > 100) throw invalid('limit must be an integer between 1 and 100');
    const here = templates.list();
    const ids = new Set(here.map((t) => t.id));
    // in a cluster: the team's files-only snapshots taken on other nodes too
    const elsewhere = ((await templates.listShared?.(caller.team)) ?? []).filter((t) => !ids.has(t.id));
    let snaps = [...here, ...elsewhere]
      .filter((t) => isSnapshot(t) && (caller.admin || t.config.team === caller.team))
      .filter((t) => (!sandboxId || t.config.snapshotOf === sandboxId) && (!name || t.name === name))
      .sort((a, b) => b.createdAt - a.createdAt || (a.id < b.id ? -1 : 1));
    const token = one(q.nextToken);
    if (token) {
      const at = snaps.findIndex((t) => t.id === Buffer.from(token, 'base64url').toString('utf8'));
      snaps = at < 0 ? [] : snaps.slice(at + 1);
    }
    const page = snaps.slice(0, limit);
    if (snaps.length > limit) reply.header('X-Next-Token', Buffer.from(page[page.length - 1]!.id).toString('base64url'));
    return page.map((t) => ({
      snapshotID: t.id,
      names: [t.name],
      sandboxID: t.config.snapshotOf,
      createdAt: new Date(t.createdAt).toISOString(),
      kind: kindOf(t),
    }));
  });
  app.post('/sandboxes/:id/fork', { schema: { body: forkBody }, attachValidation: true }, async (req: Req, reply) => {
    // the body first, as E2B does: a bad count is a 400 whether or not the sandbox exists
    checked(req);
    const id = idOf(req);
    usable(req, id);
    const count = (req.body?.count ?? 1) as number; // forkBody: an integer from 1 to MAX_FORK_COUNT if given
    const timeoutSec = timeoutOf(req.body, 'timeout', DEFAULT_TIMEOUT_SEC);
    const src = sandboxes.get(id);
    const results = await observe('fork', () =>
      sandboxes.fork(id, count, { timeoutSec, metadata: src.metadata, lifecycle: src.lifecycle, extra: src.extra, network: src.network, team: src.team }),
    );
    const statusOf = (e: CubeboxError) => (e instanceof HttpError ? e.status : HTTP_STATUS[e.kind]);
    return reply
      .code(201)
      .send(results.map((r) => (r.info ? { sandbox: sandboxBody(r.info) } : { error: { code: statusOf(r.error!), message: r.error!.message } })));
  });
}
