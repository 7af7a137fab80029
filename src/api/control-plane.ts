// E2B's REST control plane (contract section 2) over the sandbox manager: the listener-wide
// parts here (errors, authentication, health, Prometheus), the routes by resource in routes/.
import type { FastifyError, FastifyInstance, FastifyRequest } from 'fastify';
import { CubeboxError, diskFull, errorMessage, HTTP_STATUS } from '../util/errors.js';
import { routeContext, sendError, type ControlPlaneOptions } from './routes/context.js';
import { registerAdminRoutes } from './routes/admin.js';
import { registerApiKeyRoutes } from './routes/api-keys.js';
import { registerLifecycleRoutes } from './routes/lifecycle.js';
import { registerMetricsLogsRoutes } from './routes/metrics-logs.js';
import { registerSandboxRoutes } from './routes/sandboxes.js';
import { registerSecretRoutes } from './routes/secrets.js';
import { registerSnapshotRoutes } from './routes/snapshots.js';
import { registerTeamRoutes } from './routes/teams.js';
import { registerVolumeRoutes } from './routes/volumes.js';
import { registerTemplateRoutes } from './routes/templates.js';
import { registerTemplateBuildRoutes, UPLOAD_PREFIX } from './routes/template-builds.js';
import { validationMessage } from './routes/schemas.js';
import { HttpError, type Caller } from './tenancy.js';
import { OPENAPI_PATH, registerOpenApi } from './openapi.js';

export { CONTROL_PLANE_AJV } from './routes/schemas.js';
export { DEFAULT_TIMEOUT_SEC, e2bState, ENVD_VERSION, MAX_TIMEOUT_SEC, sendError, type ControlPlaneOptions } from './routes/context.js';

/** E2B's REST control plane (contract section 2) over the sandbox manager. */
export function registerControlPlane(app: FastifyInstance, opts: ControlPlaneOptions): void {
  const callers = new WeakMap<FastifyRequest, Caller>();

  app.setErrorHandler((err: FastifyError, _req, reply) => {
    // a route schema refused the request: 400, worded as the checks in the routes word theirs
    if (err.validation) return sendError(reply, 400, validationMessage(err));
    if (err instanceof HttpError) return sendError(reply, err.status, err.message);
    const known = diskFull(err) ?? err; // a full disk is the host's (503) or a sandbox's own (507), not a 500
    if (known instanceof CubeboxError) {
      if (known.retryAfterSec !== undefined) void reply.header('retry-after', String(known.retryAfterSec));
      return sendError(reply, HTTP_STATUS[known.kind], known.message);
    }
    const status = err.statusCode && err.statusCode >= 400 && err.statusCode < 600 ? err.statusCode : 500;
    if (status >= 500) opts.node.log.error({ err: errorMessage(err) }, 'control-plane request failed');
    // a JSON parse error quotes the body: say where it broke, never what it held (it may carry a secret)
    if (status === 400 && /JSON/i.test(err.message)) {
      const at = /position (\d+)/.exec(err.message)?.[1];
      return sendError(reply, 400, `malformed request body: not valid JSON${at ? ` (at byte ${at})` : ''}`);
    }
    return sendError(reply, status, err.message);
  });
  app.setNotFoundHandler((req, reply) => sendError(reply, 404, `no route ${req.method} ${req.url.split('?')[0]}`));

  // the OpenAPI document describes the API, nothing of a team's: no key needed
  const isPublic = (path: string | undefined) => path === '/health' || path === OPENAPI_PATH || (path === '/metrics' && !!opts.prometheus);
  registerOpenApi(app, { isPublic }); // before any route: it records them as they are registered
  app.addHook('onRequest', async (req, reply) => {
    const path = req.url.split('?')[0];
    if (isPublic(path)) return;
    if (path?.startsWith('/volumecontent/')) return; // the volume's own token instead (routes/volume-content.ts)
    if (path?.startsWith(UPLOAD_PREFIX)) return; // the upload link's own signed token (routes/template-builds.ts)
    const key = req.headers['x-api-key'];
    // both read the shared store (through short-lived copies): unreachable, the request is a 503
    const caller = await opts.node.keys.authenticate(Array.isArray(key) ? key[0] : key);
    if (!caller) {
      return sendError(reply, 401, 'Invalid API key: pass a valid key (e2b_...) in the X-API-KEY header; create one with `cubebox keys create`');
    }
    await opts.node.teams.fresh(caller.team); // the quota checks and blocked teams of this request read its copy
    callers.set(req, caller);
  });

  app.get('/health', async (_req, reply) => reply.code(200).send({ status: 'ok' }));
  if (opts.prometheus) {
    const prometheus = opts.prometheus;
    app.get('/metrics', async (_req, reply) => {
      const m = await prometheus();
      return reply.code(200).type(m.contentType).send(m.body);
    });
  }

  const ctx = routeContext(opts, callers);
  registerSandboxRoutes(app, ctx);
  registerLifecycleRoutes(app, ctx);
  registerMetricsLogsRoutes(app, ctx);
  registerSnapshotRoutes(app, ctx);
  registerTeamRoutes(app, ctx);
  registerApiKeyRoutes(app, ctx);
  registerAdminRoutes(app, ctx);
  registerVolumeRoutes(app, ctx);
  registerSecretRoutes(app, ctx);
  registerTemplateRoutes(app, ctx);
  if (opts.node.builds) registerTemplateBuildRoutes(app, ctx, opts.node.builds);
}
