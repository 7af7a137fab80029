// The listeners of a node: one for both planes (a request that names a sandbox goes to the
// data-plane proxy, everything else to the REST control plane), and an optional second one
// for the data plane only. What they serve is built by the composition root (app/node.ts).
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import Fastify from 'fastify';
import type { Logger } from 'pino';
import type { Duplex } from 'node:stream';
import { REFUSED_BODY } from '../cluster/secret.js';
import type { DataPlaneProxy } from '../proxy/proxy.js';
import { rawResponse, sendJson } from '../proxy/replies.js';
import { CONTROL_PLANE_AJV, registerControlPlane, type ControlPlaneOptions } from './control-plane.js';
import { ConnectionGuard, type ConnectionLimits } from './connection-guard.js';
import { serveDashboard } from './routes/dashboard.js';

export interface ServerOptions {
  /** The control plane's routes and the node they act on; the domain is the listener's. */
  controlPlane: Omit<ControlPlaneOptions, 'domain'>;
  /** The data plane; closed with the listeners. */
  proxy: DataPlaneProxy;
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
  /** A cluster node's: a request it refuses (401) before anything else sees it (cluster/secret.ts). */
  gate?: (req: http.IncomingMessage) => boolean;
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
  const { proxy, log } = opts;
  const limits = opts.connections ?? DEFAULT_CONNECTION_LIMITS;
  // each listener bounds its connections; no request timeout: uploads and command streams may legitimately last long
  const guards: ConnectionGuard[] = [];
  const { gate } = opts;
  const listener = (inner: http.RequestListener): http.Server => {
    const guard = new ConnectionGuard(limits, log);
    const options = guard.serverOptions();
    const handler: http.RequestListener = gate ? (req, res) => (gate(req) ? inner(req, res) : sendJson(res, 401, REFUSED_BODY)) : inner;
    const server = opts.tls ? https.createServer({ ...options, cert: opts.tls.cert, key: opts.tls.key }, handler) : http.createServer(options, handler);
    // an upgrade the gate refuses ends here; the 'upgrade' listeners below see only admitted ones
    if (gate) server.prependListener('upgrade', (req: http.IncomingMessage, socket: Duplex) => void (!gate(req) && rawResponse(socket, 401, REFUSED_BODY)));
    guard.attach(server);
    guards.push(guard);
    return server;
  };
  const app = Fastify({
    logger: false,
    // the control plane's schemas check types as sent (no coercion)
    ajv: CONTROL_PLANE_AJV,
    bodyLimit: 8 * 1024 * 1024,
    serverFactory: (handler) => {
      // the proxy refuses envd's /init itself: only the manager gives a sandbox its identity
      return listener((req, res) => (proxy.matches(req) ? proxy.handle(req, res) : serveDashboard(req, res) || handler(req, res)));
    },
  });
  // the default address is filled in after listen, when the port is known
  const domainRef = { value: opts.domain ?? '' };
  registerControlPlane(app, {
    ...opts.controlPlane,
    get domain() {
      return domainRef.value;
    },
  });
  await app.listen({ host: opts.host, port: opts.port });
  const port = (app.server.address() as AddressInfo).port;
  if (!domainRef.value) domainRef.value = `localhost:${port}`;
  app.server.on('upgrade', (req, socket, head) => {
    if (socket.destroyed || socket.writableEnded) return; // refused by the gate
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
    dataServer.on('upgrade', (req, socket, head) => {
      if (socket.destroyed || socket.writableEnded) return; // refused by the gate
      if (proxy.matches(req)) proxy.handleUpgrade(req, socket, head);
      else socket.destroy();
    });
    await new Promise<void>((resolve, reject) => {
      dataServer!.once('error', reject);
      dataServer!.listen(opts.dataPort, opts.host, () => resolve());
    });
    const dp = (dataServer.address() as AddressInfo).port;
    dataUrl = `${scheme}://${opts.host.includes(':') ? `[${opts.host}]` : opts.host}:${dp}`;
  }
  return {
    url: `${scheme}://${opts.host.includes(':') ? `[${opts.host}]` : opts.host}:${port}`,
    port,
    dataUrl,
    async close() {
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
