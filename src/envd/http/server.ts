// envd's HTTP server: the Connect services (process.Process, filesystem.Filesystem) and the
// REST routes /health, /files, /init, /envs and /metrics, on a unix socket and on TCP.
import { lstatSync, unlinkSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { safeEqual } from '../../protocol/signature.js';
import { checkToken } from '../auth.js';
import { INIT_SECRET_HEADER, SUSPEND_SOCKET_PATH } from '../host-contract.js';
import { EnvdState, type EnvdOptions } from '../state.js';
import { UserDb } from '../users.js';
import { HttpError, sendError, sendJson } from './respond.js';
import type { Services } from './services.js';

export interface Envd {
  state: EnvdState;
  /** The services of the first real request (loaded once, on demand; see services.ts). */
  services(): Promise<Services>;
  /** Listening addresses: the socket path and host:port of each TCP listener. */
  addresses: string[];
  /** Closes the unix socket and its connections (before a checkpoint: see SUSPEND_SOCKET_PATH). */
  suspendSocket(): void;
  /** Whether suspendSocket() let go of the socket and it is not listened on again yet. */
  suspended(): boolean;
  /** Listens on the unix socket again after suspendSocket() (after a restore); a no-op otherwise. */
  resumeSocket(): Promise<void>;
  close(): Promise<void>;
}

const MAX_INIT_BODY = 1024 * 1024;

async function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of req.iterator({ destroyOnReturn: false })) {
    n += (c as Buffer).length;
    if (n > limit) throw new HttpError(413, 'request body too large');
    chunks.push(c as Buffer);
  }
  return Buffer.concat(chunks);
}

function parseTimestamp(v: unknown): number | undefined {
  if (typeof v === 'number' && Number.isFinite(v)) return v > 1e12 ? v : v * 1000;
  if (typeof v === 'string' && v) {
    const t = Date.parse(v);
    return Number.isFinite(t) ? t : undefined;
  }
  return undefined;
}

export async function startEnvd(opts: EnvdOptions): Promise<Envd> {
  const users = new UserDb(opts.passwdPath, opts.groupPath);
  const state = new EnvdState(opts, users);

  // One load shared by every request that needs the services, concurrent first ones included.
  let loading: Promise<Services> | undefined;
  let loaded: Services | undefined;
  const services = (): Promise<Services> =>
    (loading ??= import('./services.js').then((m) => {
      loaded = m.createServices(state);
      return loaded;
    }));

  function requireToken(req: IncomingMessage): void {
    const t = req.headers['x-access-token'];
    const err = checkToken(state, typeof t === 'string' ? t : undefined);
    if (err) throw new HttpError(401, err);
  }

  async function handleInit(req: IncomingMessage, res: ServerResponse, viaSocket: boolean): Promise<void> {
    let body: Record<string, unknown> = {};
    const raw = await readBody(req, MAX_INIT_BODY);
    if (raw.length) {
      try {
        body = JSON.parse(raw.toString('utf8')) as Record<string, unknown>;
      } catch {
        throw new HttpError(400, 'invalid JSON body');
      }
      if (!body || typeof body !== 'object' || Array.isArray(body)) throw new HttpError(400, 'the body must be a JSON object');
    }
    const secret = state.opts.initSecret;
    if (secret) {
      // Under cubebox only the host, which alone knows the boot's secret, may init.
      const given = req.headers[INIT_SECRET_HEADER];
      if (!(typeof given === 'string' && safeEqual(given, secret))) throw new HttpError(401, '/init needs the host secret');
    } else if (state.accessToken && !viaSocket) {
      // Standalone envd: once a token is set, only the unix socket or a holder of the token may re-init.
      const t = req.headers['x-access-token'];
      const sameToken = typeof body.accessToken === 'string' && safeEqual(body.accessToken, state.accessToken);
      if (!(typeof t === 'string' && safeEqual(t, state.accessToken)) && !sameToken) throw new HttpError(401, 'invalid access token');
    }
    const ts = parseTimestamp(body.timestamp);
    if (ts !== undefined) {
      if (ts < state.lastInit) {
        res.writeHead(204).end();
        return;
      }
      state.lastInit = ts;
    }
    const envVars = body.envVars;
    if (envVars && typeof envVars === 'object' && !Array.isArray(envVars)) {
      for (const [k, v] of Object.entries(envVars as Record<string, unknown>)) {
        if (typeof v === 'string') state.envVars[k] = v;
      }
    }
    if (typeof body.accessToken === 'string' && body.accessToken !== '') state.accessToken = body.accessToken;
    if (typeof body.defaultUser === 'string' && body.defaultUser !== '') state.defaultUser = body.defaultUser;
    if (typeof body.defaultWorkdir === 'string' && body.defaultWorkdir !== '') state.defaultWorkdir = body.defaultWorkdir;
    res.writeHead(204).end();
  }

  async function route(req: IncomingMessage, res: ServerResponse, viaSocket: boolean): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://envd');
    const path = url.pathname;
    const method = req.method ?? 'GET';
    switch (path) {
      case '/health':
        res.writeHead(204, { 'Cache-Control': 'no-store' }).end();
        return;
      case '/files':
        if (method === 'GET' || method === 'HEAD') return (await services()).download(req, res, url);
        if (method === 'POST') return (await services()).upload(req, res, url);
        throw new HttpError(405, 'method not allowed');
      case '/init':
        if (method !== 'POST') throw new HttpError(405, 'method not allowed');
        return handleInit(req, res, viaSocket);
      case '/envs':
        if (method !== 'GET') throw new HttpError(405, 'method not allowed');
        requireToken(req);
        sendJson(res, 200, state.envVars);
        return;
      case '/metrics':
        if (method !== 'GET') throw new HttpError(405, 'method not allowed');
        requireToken(req);
        sendJson(res, 200, await (await services()).metrics.collect());
        return;
      case SUSPEND_SOCKET_PATH: {
        if (method !== 'POST') throw new HttpError(405, 'method not allowed');
        const secret = state.opts.initSecret;
        const given = req.headers[INIT_SECRET_HEADER];
        if (!viaSocket || !secret || !(typeof given === 'string' && safeEqual(given, secret))) throw new HttpError(401, 'only the host may suspend the socket');
        // nothing on the socket is left when the host has the answer and sees this connection close
        suspendSocket(req.socket);
        res.on('finish', () => req.socket.destroy());
        res.writeHead(204, { Connection: 'close' }).end();
        return;
      }
      default:
        throw new HttpError(404, `no route for ${path}`);
    }
  }

  const fail = (req: IncomingMessage, res: ServerResponse, e: unknown) => {
    const code = (e as NodeJS.ErrnoException)?.code;
    if (e instanceof HttpError) sendError(res, e.status, e.message);
    else if (code === 'ERR_STREAM_PREMATURE_CLOSE' || code === 'ECONNRESET' || code === 'EPIPE') res.destroy();
    else {
      process.stderr.write(`envd: ${req.method} ${req.url ?? ''}: ${(e as Error)?.stack ?? String(e)}\n`);
      sendError(res, 500, (e as Error)?.message ?? 'internal error');
    }
    // Drop whatever is left of the request body, keeping the connection usable.
    req.unpipe();
    if (!req.readableEnded) req.resume();
  };

  const handler = (viaSocket: boolean) => (req: IncomingMessage, res: ServerResponse) => {
    const p = req.url ?? '';
    // Browsers (the SDK's browser build, signed URLs) may call envd across origins.
    if (req.headers.origin) {
      res.setHeader('Access-Control-Allow-Origin', '*');
      res.setHeader('Access-Control-Expose-Headers', '*');
      if (req.method === 'OPTIONS') {
        res.writeHead(204, {
          'Access-Control-Allow-Methods': 'GET, HEAD, POST, OPTIONS',
          'Access-Control-Allow-Headers': req.headers['access-control-request-headers'] ?? '*',
          'Access-Control-Max-Age': '7200',
        });
        res.end();
        return;
      }
    }
    if (p.startsWith('/process.Process/') || p.startsWith('/filesystem.Filesystem/')) {
      if (loaded) loaded.connect(req, res);
      else
        services().then(
          (s) => s.connect(req, res),
          (e: unknown) => fail(req, res, e),
        );
      return;
    }
    route(req, res, viaSocket).catch((e: unknown) => fail(req, res, e));
  };

  const servers: Server[] = [];
  const addresses: string[] = [];
  const newServer = (viaSocket: boolean) => {
    // No request or headers timeout (streams last as long as their processes), so node's 30 s
    // check of them would only wake an idle envd: pushed out to the longest timer node allows.
    const s = createServer({ requestTimeout: 0, keepAliveTimeout: 30_000, connectionsCheckingInterval: 2 ** 31 - 1 }, handler(viaSocket));
    s.on('clientError', (_err, socket) => socket.destroy());
    servers.push(s);
    return s;
  };
  const listen = (s: Server, arg: { path?: string; port?: number; host?: string; ipv6Only?: boolean }) =>
    new Promise<void>((resolve, reject) => {
      const onError = (e: Error) => reject(e);
      s.once('error', onError);
      s.listen(arg, () => {
        s.off('error', onError);
        resolve();
      });
    });

  let socketServer: Server | undefined;
  const socketConnections = new Set<Socket>();
  let suspended: NodeJS.Timeout | undefined;
  const listenSocket = async (path: string) => {
    try {
      if (lstatSync(path).isSocket()) unlinkSync(path);
    } catch {
      /* no stale socket */
    }
    socketServer = newServer(true);
    socketServer.on('connection', (c: Socket) => {
      socketConnections.add(c);
      c.on('close', () => socketConnections.delete(c));
    });
    await listen(socketServer, { path });
  };
  const closeServer = (s: Server) =>
    new Promise<void>((resolve) => {
      s.close(() => resolve());
      s.closeAllConnections();
    });
  /** Stops listening on the socket and closes every connection on it but `keep`. */
  function suspendSocket(keep?: Socket): void {
    const s = socketServer;
    if (!s) return;
    socketServer = undefined;
    // with its only listener closed node would exit, and the sandbox with it
    suspended = setInterval(() => undefined, 2 ** 31 - 1);
    servers.splice(servers.indexOf(s), 1);
    s.close();
    for (const c of socketConnections) if (c !== keep) c.destroy();
  }

  // TCP only when asked for (--port), and never without an access token: without one, anybody
  // inside the sandbox could act as root through it. Without a token yet, TCP waits for /init.
  const startTcp = async () => {
    const tcp: Server[] = [];
    if (opts.hosts.length === 0) {
      const s = newServer(false);
      tcp.push(s);
      try {
        await listen(s, { port: opts.port, host: '::', ipv6Only: false });
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code !== 'EAFNOSUPPORT' && code !== 'EADDRNOTAVAIL') throw e;
        await listen(s, { port: opts.port, host: '0.0.0.0' });
      }
    } else {
      for (const host of opts.hosts) {
        const s = newServer(false);
        tcp.push(s);
        await listen(s, { port: opts.port, host });
      }
    }
    for (const s of tcp) {
      const a = s.address() as AddressInfo;
      addresses.push(a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`);
    }
  };
  try {
    if (opts.port > 0 && state.accessToken) await startTcp();
    if (opts.socketPath) {
      await listenSocket(opts.socketPath);
      addresses.push(opts.socketPath);
    }
  } catch (e) {
    for (const s of servers) s.close();
    throw e;
  }

  if (opts.port > 0 && !state.accessToken) {
    state.onToken = () => {
      state.onToken = undefined;
      startTcp().catch((e: Error) => process.stderr.write(`envd: cannot listen on TCP port ${opts.port}: ${e.message}\n`));
    };
  }

  return {
    state,
    services,
    addresses,
    suspendSocket,
    suspended: () => suspended !== undefined,
    async resumeSocket() {
      if (!suspended || !opts.socketPath) return;
      clearInterval(suspended);
      suspended = undefined;
      await listenSocket(opts.socketPath);
    },
    async close() {
      // a load still under way ends with the services, which must be closed too
      (loaded ?? (await loading?.catch(() => undefined)))?.close();
      await Promise.all(servers.map(closeServer));
      if (opts.socketPath) {
        try {
          unlinkSync(opts.socketPath);
        } catch {
          /* gone */
        }
      }
    },
  };
}
