import http from 'node:http';
import type { AddressInfo } from 'node:net';
import Fastify from 'fastify';
import type { Logger } from 'pino';
import { DataPlaneProxy, type RouteResolver, type SandboxRoute } from '../proxy/proxy.js';
import { MetricsSampler } from '../sandbox/metrics.js';
import type { SandboxManager } from '../sandbox/manager.js';
import { ApiKeys } from './keys.js';
import { registerControlPlane } from './control-plane.js';
import { ServiceMetrics } from './prometheus.js';

export interface ServerOptions {
  manager: SandboxManager;
  host: string;
  port: number;
  /** An optional second port that serves only the data plane. */
  dataPort?: number;
  /** Public sandbox domain reported to the SDK (getHost() builds <port>-<id>.<domain>). */
  domain?: string;
  log: Logger;
}

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
  const keys = new ApiKeys(manager.store.db);
  const metrics = new MetricsSampler(manager);
  metrics.start();

  const resolver: RouteResolver = {
    async route(sandboxId: string): Promise<SandboxRoute | undefined> {
      let info;
      try {
        info = manager.get(sandboxId);
      } catch {
        return undefined;
      }
      if (info.state === 'paused' && info.lifecycle.autoResume) {
        try {
          info = (await manager.connect(sandboxId)).info; // traffic wakes an auto-resuming sandbox
        } catch (err) {
          log.warn({ sandbox: sandboxId, err: (err as Error).message }, 'auto-resume failed');
          return undefined;
        }
      }
      if (info.state !== 'running') return undefined;
      return { sandboxId, socketPath: manager.envdSocket(sandboxId), accessToken: info.accessToken ?? undefined };
    },
    *signedCandidates() {
      for (const s of manager.list()) {
        const reachable = s.state === 'running' || (s.state === 'paused' && s.lifecycle.autoResume);
        if (reachable && s.accessToken) yield { sandboxId: s.id, accessToken: s.accessToken };
      }
    },
  };

  // Host routing accepts any domain suffix, so the proxy needs no final domain up front
  const proxy = new DataPlaneProxy(resolver, { domain: opts.domain ?? 'localhost', log });
  const app = Fastify({
    logger: false,
    bodyLimit: 8 * 1024 * 1024,
    serverFactory: (handler) =>
      // no request timeout: uploads and command streams may legitimately last long
      http.createServer({ requestTimeout: 0 }, (req, res) => {
        // the proxy refuses envd's /init itself: only the manager gives a sandbox its identity
        if (proxy.matches(req)) proxy.handle(req, res);
        else handler(req, res);
      }),
  });
  // the default address is filled in after listen, when the port is known
  const domainRef = { value: opts.domain ?? '' };
  const prom = new ServiceMetrics(manager, proxy);
  registerControlPlane(app, {
    manager,
    metrics,
    observe: (op, fn) => prom.time(op, fn),
    prometheus: async () => ({ contentType: prom.contentType, body: await prom.text() }),
    verifyKey: (k) => keys.verify(k) !== undefined,
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
  let dataServer: http.Server | undefined;
  let dataUrl: string | undefined;
  if (opts.dataPort !== undefined) {
    dataServer = http.createServer({ requestTimeout: 0 }, (req, res) => {
      if (proxy.matches(req)) return proxy.handle(req, res);
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ code: 404, message: 'this is the data-plane port: name a sandbox (E2b-Sandbox-Id header, <port>-<id>.<domain> Host, or a signed /files URL)' }));
    });
    dataServer.on('upgrade', (req, socket, head) => (proxy.matches(req) ? proxy.handleUpgrade(req, socket, head) : socket.destroy()));
    await new Promise<void>((resolve, reject) => {
      dataServer!.once('error', reject);
      dataServer!.listen(opts.dataPort, opts.host, () => resolve());
    });
    const dp = (dataServer.address() as AddressInfo).port;
    dataUrl = `http://${opts.host.includes(':') ? `[${opts.host}]` : opts.host}:${dp}`;
  }
  const onInterrupt = (id: string) => proxy.cut(id);
  const onDeleted = (id: string) => {
    proxy.forget(id);
    metrics.forget(id);
  };
  manager.events.on('interrupt', onInterrupt);
  manager.events.on('deleted', onDeleted);

  return {
    url: `http://${opts.host.includes(':') ? `[${opts.host}]` : opts.host}:${port}`,
    port,
    dataUrl,
    async close() {
      manager.events.off('interrupt', onInterrupt);
      manager.events.off('deleted', onDeleted);
      metrics.stop();
      proxy.close();
      if (dataServer) {
        dataServer.closeAllConnections();
        await new Promise<void>((r) => dataServer!.close(() => r()));
      }
      app.server.closeAllConnections();
      await app.close();
    },
  };
}
