import http, { type IncomingMessage } from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import Fastify from 'fastify';
import type { Logger } from 'pino';
import { DataPlaneProxy, type InterruptReason, type RouteResolver, type SandboxRoute } from '../proxy/proxy.js';
import { trafficAllowed } from '../proxy/ports.js';
import { ENVD_PORT } from '../proxy/routing.js';
import { MetricsSampler } from '../sandbox/metrics.js';
import type { SandboxManager } from '../sandbox/manager.js';
import { fileOpOf, safeEqual, signatureMatches, signedFileRequest } from '../protocol/signature.js';
import type { SandboxInfo } from '../sandbox/manager.js';
import { ApiKeys } from './keys.js';
import { CONTROL_PLANE_AJV, registerControlPlane } from './control-plane.js';
import { Tenancy } from './tenancy.js';
import { ServiceMetrics } from './prometheus.js';
import { ConnectionGuard, type ConnectionLimits } from './connection-guard.js';

export interface ServerOptions {
  manager: SandboxManager;
  host: string;
  port: number;
  /** An optional second port that serves only the data plane. */
  dataPort?: number;
  /** Public sandbox domain reported to the SDK (getHost() builds <port>-<id>.<domain>). */
  domain?: string;
  log: Logger;
  /** Serve both planes over HTTPS with this certificate chain and key (PEM). */
  tls?: { cert: Buffer; key: Buffer };
  /** Bounds on each listener's connections (default DEFAULT_CONNECTION_LIMITS). */
  connections?: ConnectionLimits;
}

export const DEFAULT_CONNECTION_LIMITS: ConnectionLimits = { maxConnections: 8192, maxPerAddress: 1024, headerTimeoutMs: 10_000 };

export interface RunningServer {
  url: string;
  port: number;
  dataUrl?: string;
  close(): Promise<void>;
}

/**
 * One listener for both planes: a request that names a sandbox (E2b-Sandbox-Id header,
 * a <port>-<id>.<domain> Host, or a header-less signed /files) goes to the data-plane
 * proxy, everything else to the REST control plane.
 */
export async function startServer(opts: ServerOptions): Promise<RunningServer> {
  const { manager, log } = opts;
  const limits = opts.connections ?? DEFAULT_CONNECTION_LIMITS;
  // each listener bounds its connections; no request timeout: uploads and command streams may legitimately last long
  const guards: ConnectionGuard[] = [];
  const listener = (handler: http.RequestListener): http.Server => {
    const guard = new ConnectionGuard(limits, log);
    const options = guard.serverOptions();
    const server = opts.tls ? https.createServer({ ...options, cert: opts.tls.cert, key: opts.tls.key }, handler) : http.createServer(options, handler);
    guard.attach(server);
    guards.push(guard);
    return server;
  };
  const keys = new ApiKeys(manager.store);
  const tenancy = new Tenancy(manager.store, manager.templates, log);
  tenancy.attach(manager);
  const metrics = new MetricsSampler(manager);
  metrics.start();

  const resolver: RouteResolver = {
    async route(sandboxId: string, req?: IncomingMessage, port = ENVD_PORT): Promise<SandboxRoute | undefined> {
      let info;
      try {
        info = manager.get(sandboxId);
      } catch {
        return undefined;
      }
      // a team whose last key was revoked: its sandboxes are unreachable (like unknown ones)
      if (tenancy.blocked(info.team)) return undefined;
      if (info.state === 'paused' && info.lifecycle.autoResume) {
        // only traffic that proves it may use the sandbox wakes it: its token, a valid signature, or an insecure sandbox
        // (a sandbox port: the traffic it lets in, public or with its traffic token)
        if (port === ENVD_PORT ? !mayWake(info, req) : !trafficAllowed({ trafficToken: info.trafficAccessToken ?? undefined }, req)) return undefined;
        try {
          info = (await manager.connect(sandboxId)).info; // traffic wakes an auto-resuming sandbox
        } catch (err) {
          log.warn({ sandbox: sandboxId, err: (err as Error).message }, 'auto-resume failed');
          return undefined;
        }
      }
      if (info.state !== 'running') return undefined;
      const socket = manager.envdEndpoint(sandboxId);
      if (!socket) return undefined;
      return {
        sandboxId,
        socket,
        accessToken: info.accessToken ?? undefined,
        address: info.address ?? undefined,
        trafficToken: info.trafficAccessToken ?? undefined,
        maskRequestHost: info.network.maskRequestHost,
        httpsPorts: info.network.httpsPorts,
      };
    },
    *signedCandidates() {
      for (const s of manager.list()) {
        const reachable = s.state === 'running' || (s.state === 'paused' && s.lifecycle.autoResume);
        if (reachable && s.accessToken && !tenancy.blocked(s.team)) yield { sandboxId: s.id, accessToken: s.accessToken };
      }
    },
  };

  // Host routing accepts any domain suffix, so the proxy needs no final domain up front.
  // Its log never shows a URL's query: signed /files URLs are credentials.
  const proxyLog = log.child({}, { serializers: { url: redactUrl, err: redactErr } });
  const proxy = new DataPlaneProxy(resolver, { domain: opts.domain ?? 'localhost', log: proxyLog });
  const app = Fastify({
    logger: false,
    // the control plane's schemas check types as sent (no coercion)
    ajv: CONTROL_PLANE_AJV,
    bodyLimit: 8 * 1024 * 1024,
    serverFactory: (handler) => {
      // the proxy refuses envd's /init itself: only the manager gives a sandbox its identity
      return listener((req, res) => (proxy.matches(req) ? proxy.handle(req, res) : handler(req, res)));
    },
  });
  // the default address is filled in after listen, when the port is known
  const domainRef = { value: opts.domain ?? '' };
  const prom = new ServiceMetrics(manager, proxy);
  registerControlPlane(app, {
    manager,
    metrics,
    observe: (op, fn) => prom.time(op, fn),
    prometheus: async () => ({ contentType: prom.contentType, body: await prom.text() }),
    authenticate: (k) => {
      const info = keys.verify(k);
      return info && { keyId: info.id, keyPrefix: info.prefix, team: info.team, admin: info.admin };
    },
    tenancy,
    get domain() {
      return domainRef.value;
    },
    clientId: manager.paths.instanceId,
  });
  await app.listen({ host: opts.host, port: opts.port });
  const port = (app.server.address() as AddressInfo).port;
  if (!domainRef.value) domainRef.value = `localhost:${port}`;
  app.server.on('upgrade', (req, socket, head) => {
    if (proxy.matches(req)) proxy.handleUpgrade(req, socket, head);
    else socket.destroy();
  });
  const scheme = opts.tls ? 'https' : 'http';
  let dataServer: http.Server | undefined;
  let dataUrl: string | undefined;
  if (opts.dataPort !== undefined) {
    const dataHandler = (req: http.IncomingMessage, res: http.ServerResponse) => {
      if (proxy.matches(req)) return proxy.handle(req, res);
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({
          code: 404,
          message: 'this is the data-plane port: name a sandbox (E2b-Sandbox-Id header, <port>-<id>.<domain> Host, or a signed /files URL)',
        }),
      );
    };
    dataServer = listener(dataHandler);
    dataServer.on('upgrade', (req, socket, head) => (proxy.matches(req) ? proxy.handleUpgrade(req, socket, head) : socket.destroy()));
    await new Promise<void>((resolve, reject) => {
      dataServer!.once('error', reject);
      dataServer!.listen(opts.dataPort, opts.host, () => resolve());
    });
    const dp = (dataServer.address() as AddressInfo).port;
    dataUrl = `${scheme}://${opts.host.includes(':') ? `[${opts.host}]` : opts.host}:${dp}`;
  }
  const onInterrupt = (id: string, reason?: InterruptReason) => proxy.cut(id, reason);
  const onDeleted = (id: string) => {
    proxy.forget(id);
    metrics.forget(id);
  };
  manager.events.on('interrupt', onInterrupt);
  manager.events.on('deleted', onDeleted);

  return {
    url: `${scheme}://${opts.host.includes(':') ? `[${opts.host}]` : opts.host}:${port}`,
    port,
    dataUrl,
    async close() {
      manager.events.off('interrupt', onInterrupt);
      manager.events.off('deleted', onDeleted);
      metrics.stop();
      proxy.close();
      // every connection goes, tunnels included (closeAllConnections leaves upgraded ones, and close() waits for them)
      const cut = () => guards.forEach((g) => g.destroyAll());
      if (dataServer) {
        const closed = new Promise<void>((r) => dataServer!.close(() => r()));
        cut();
        await closed;
      }
      const closed = app.close();
      cut();
      await closed;
    },
  };
}

/** Whether a data-plane request may wake (auto-resume) a paused sandbox. */
function mayWake(info: SandboxInfo, req: IncomingMessage | undefined): boolean {
  const token = info.accessToken;
  if (!token) return true; // created with secure: false
  if (!req) return false;
  const header = req.headers['x-access-token'];
  const given = Array.isArray(header) ? header[0] : header;
  if (given !== undefined && safeEqual(given, token)) return true;
  // a signed /files URL (downloadUrl/uploadUrl) made with this sandbox's token, not expired
  let url: URL;
  try {
    url = new URL(req.url ?? '/', 'http://data-plane');
  } catch {
    return false;
  }
  if (url.pathname !== '/files') return false;
  const signed = signedFileRequest(url);
  const op = fileOpOf(req.method);
  if (!signed || signed === 'bad-expiration' || !op) return false;
  if (signed.expiration !== undefined && signed.expiration * 1000 < Date.now()) return false;
  return signatureMatches(signed, op, token);
}

/** A URL for logs: the query (signatures, tokens) replaced. */
export function redactUrl(url: unknown): unknown {
  if (typeof url !== 'string') return url;
  const q = url.indexOf('?');
  return q < 0 ? url : `${url.slice(0, q)}?[redacted]`;
}

/** Errors for logs: any URL query in the message redacted. */
function redactErr(err: unknown): unknown {
  if (!(err instanceof Error)) return err;
  const clean = (t: string | undefined) => t?.replace(/\?[^\s"']*(signature|token)=[^\s"']*/gi, '?[redacted]');
  return { type: err.name, message: clean(err.message), code: (err as NodeJS.ErrnoException).code, stack: clean(err.stack) };
}
