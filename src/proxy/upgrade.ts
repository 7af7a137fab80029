// WebSocket through the data plane. The raw tunnel opens only after the sandbox answered the
// handshake with 101: a pipe opened before that would carry every later request on the
// connection past the proxy's checks (the /init refusal first of all). Any other answer is
// relayed, bounded, and ends the connection.
import { request as httpRequest, type IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { connectGuarded } from '../util/safe-socket.js';
import { endToEnd } from './filter.js';
import { closedPortBody, connectPort, portHeaders, portRefusal } from './ports.js';
import { notFoundBody, rawResponse } from './replies.js';
import type { Target } from './routing.js';
import type { Exchange, ProxyContext, SandboxRoute } from './types.js';

/** The largest body of a refused upgrade that is passed on. */
const MAX_REFUSAL_BODY = 64 * 1024;

/** A WebSocket handshake: GET, `Upgrade: websocket` and `Connection: upgrade` (RFC 6455 4.1, 4.2.2). */
export function isWebSocketUpgrade(msg: IncomingMessage): boolean {
  const upgrade = String(msg.headers.upgrade ?? '')
    .trim()
    .toLowerCase();
  const connection = String(msg.headers.connection ?? '')
    .toLowerCase()
    .split(',')
    .map((t) => t.trim());
  const isRequest = typeof msg.method === 'string'; // a response's method is null
  return upgrade === 'websocket' && connection.includes('upgrade') && (!isRequest || msg.method === 'GET');
}

/** A checked WebSocket handshake to a sandbox: the handshake goes to envd, the tunnel follows its 101. */
export async function upgrade(
  ctx: ProxyContext,
  target: Extract<Target, { kind: 'sandbox' }>,
  req: IncomingMessage,
  socket: Duplex,
  head: Buffer,
): Promise<void> {
  const { sandboxId } = target;
  const ex: Exchange = {
    destroyed: false,
    destroy() {
      this.destroyed = true;
      this.upstream?.destroy();
      socket.destroy();
    },
  };
  const untrack = ctx.track(sandboxId, ex);
  socket.once('close', untrack);
  let route: SandboxRoute | undefined;
  try {
    route = await ctx.resolver.route(sandboxId, req, target.port);
  } catch (err) {
    ctx.log?.warn({ err, sandboxId }, 'route lookup failed');
  }
  if (ex.destroyed || socket.destroyed) return;
  if (!route) return rawResponse(socket, 502, notFoundBody(sandboxId));
  const envd = target.port === ctx.envdPort;
  const refusal = envd ? undefined : portRefusal(route, target.port, target.rawPort, req);
  if (refusal) return rawResponse(socket, refusal.status, refusal.body);
  const counters = ctx.counters(sandboxId);
  counters.requests++;
  const r = route;
  const up = httpRequest({
    createConnection: () => (envd ? connectGuarded(r.socket) : connectPort(r, target.port)),
    method: 'GET',
    path: req.url ?? '/',
    headers: envd ? endToEnd(req.rawHeaders, true) : portHeaders(r, target.port, endToEnd(req.rawHeaders, true)),
    setHost: false,
  });
  ex.upstream = up;
  let answered = false;
  // 101 from the sandbox: from here on the connection is the WebSocket's, byte for byte.
  up.on('upgrade', (upRes: IncomingMessage, upSocket: Socket, upHead: Buffer) => {
    answered = true;
    ex.upstream = upSocket;
    if (ex.destroyed || socket.destroyed || !isWebSocketUpgrade(upRes)) {
      upSocket.destroy();
      socket.destroy();
      return;
    }
    const lines = [`HTTP/1.1 101 ${upRes.statusMessage || 'Switching Protocols'}`];
    const h = endToEnd(upRes.rawHeaders, true);
    for (let i = 0; i < h.length; i += 2) lines.push(`${h[i]}: ${h[i + 1]}`);
    socket.write(lines.join('\r\n') + '\r\n\r\n');
    if (upHead.length) socket.write(upHead);
    if (head.length) {
      counters.bytesIn += head.length;
      upSocket.write(head);
    }
    socket.on('data', (c: Buffer) => (counters.bytesIn += c.length));
    upSocket.on('data', (c: Buffer) => (counters.bytesOut += c.length));
    upSocket.on('error', () => socket.destroy());
    upSocket.on('close', () => socket.destroy());
    socket.on('close', () => upSocket.destroy());
    socket.pipe(upSocket);
    upSocket.pipe(socket);
  });
  // Any other answer is passed on as it is, and the connection ends with it.
  up.on('response', (upRes: IncomingMessage) => {
    answered = true;
    const chunks: Buffer[] = [];
    let size = 0;
    upRes.on('data', (c: Buffer) => {
      size += c.length;
      if (size <= MAX_REFUSAL_BODY) chunks.push(c);
      else upRes.destroy();
    });
    const finish = () => {
      if (socket.destroyed) return;
      const body = Buffer.concat(chunks).subarray(0, MAX_REFUSAL_BODY);
      const lines = [`HTTP/1.1 ${upRes.statusCode ?? 502} ${upRes.statusMessage ?? ''}`];
      const h = endToEnd(upRes.rawHeaders);
      for (let i = 0; i < h.length; i += 2) if ((h[i] as string).toLowerCase() !== 'content-length') lines.push(`${h[i]}: ${h[i + 1]}`);
      lines.push(`Content-Length: ${body.length}`, 'Connection: close');
      socket.end(Buffer.concat([Buffer.from(lines.join('\r\n') + '\r\n\r\n'), body]));
    };
    upRes.on('end', finish);
    upRes.on('close', () => {
      if (!upRes.complete) finish();
    });
  });
  up.on('error', () => {
    if (!answered) rawResponse(socket, 502, envd ? notFoundBody(sandboxId) : closedPortBody(sandboxId, target.port));
    else socket.destroy();
  });
  up.end();
}
