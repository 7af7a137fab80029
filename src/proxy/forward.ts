// Plain HTTP through the data plane: a request is resolved to its sandbox (CORS preflights
// answered here, signed /files matched to the token that signed them), then relayed to envd
// unbuffered in both directions over the sandbox's keep-alive agent.
import { request as httpRequest, type ClientRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import { endToEnd } from './filter.js';
import { httpExchange } from './interrupt.js';
import { closedPortBody, portHeaders, portRefusal } from './ports.js';
import { notFoundBody, sendJson } from './replies.js';
import { matchSignature, type Target } from './routing.js';
import type { Exchange, ProxyContext, SandboxRoute } from './types.js';

/** Whether a request certainly has no body (then it can be retried on a stale keep-alive socket). */
function bodyless(req: IncomingMessage): boolean {
  const len = req.headers['content-length'];
  return req.headers['transfer-encoding'] === undefined && (len === undefined || len === '0');
}

const RETRYABLE = new Set(['ECONNRESET', 'EPIPE']);

/** The sandbox a target names (a signed /files request: the one whose token signed it). */
async function resolve(ctx: ProxyContext, target: Target, res: ServerResponse): Promise<{ sandboxId: string; port: number; rawPort: string } | undefined> {
  if (target.kind === 'preflight') {
    res.writeHead(204, {
      'Access-Control-Allow-Origin': '*',
      'Access-Control-Allow-Methods': 'GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS',
      'Access-Control-Allow-Headers': res.req.headers['access-control-request-headers'] ?? '*',
      'Access-Control-Max-Age': '7200',
    });
    res.end();
    return undefined;
  }
  if (target.kind === 'signed') {
    const sandboxId = matchSignature(target.url, target.op, ctx.resolver.signedCandidates());
    if (!sandboxId) {
      sendJson(res, 401, JSON.stringify({ code: 401, message: 'invalid signature: it matches no running sandbox' }));
      return undefined;
    }
    if (target.probe) return void res.writeHead(204).end();
    return { sandboxId, port: ctx.envdPort, rawPort: String(ctx.envdPort) };
  }
  return target;
}

/** One data-plane HTTP request, from its target to envd's answer. */
export async function dispatch(ctx: ProxyContext, target: Target, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const t = await resolve(ctx, target, res);
  if (!t) return;
  const { sandboxId } = t;
  const ex = httpExchange(sandboxId, req, res);
  const untrack = ctx.track(sandboxId, ex);
  res.once('close', () => {
    untrack();
    // The client went away (or cut() destroyed it): stop the upstream request too.
    if (!res.writableFinished) {
      ex.destroyed = true;
      ex.upstream?.destroy();
    }
  });

  let route: SandboxRoute | undefined;
  try {
    route = await ctx.resolver.route(sandboxId, req, t.port);
  } catch (err) {
    ctx.log?.warn({ err, sandboxId }, 'route lookup failed');
    route = undefined;
  }
  if (ex.destroyed || res.destroyed) return;
  if (!route) {
    ctx.dropAgent(sandboxId);
    sendJson(res, 502, notFoundBody(sandboxId));
    return;
  }
  const envd = t.port === ctx.envdPort;
  if (!envd) {
    const refusal = portRefusal(route, t.port, t.rawPort, req);
    if (refusal) {
      sendJson(res, refusal.status, refusal.body);
      return;
    }
  }
  forward(ctx, route, t.port, envd, req, res, ex);
}

function forward(ctx: ProxyContext, route: SandboxRoute, port: number, envd: boolean, req: IncomingMessage, res: ServerResponse, ex: Exchange): void {
  const sandboxId = route.sandboxId;
  const counters = ctx.counters(sandboxId);
  counters.requests++;
  const headers = envd ? endToEnd(req.rawHeaders) : portHeaders(route, port, endToEnd(req.rawHeaders));
  if (/\bchunked\b/i.test(String(req.headers['transfer-encoding'] ?? ''))) headers.push('Transfer-Encoding', 'chunked');
  const noBody = bodyless(req);
  const method = req.method ?? 'GET';

  const attempt = (retriesLeft: number): void => {
    const up = httpRequest({
      agent: envd ? ctx.agentFor(route) : ctx.portAgentFor(route, port),
      method,
      path: req.url ?? '/',
      headers,
      setHost: false,
    });
    ex.upstream = up;
    let responded = false;

    up.on('response', (upRes: IncomingMessage) => {
      responded = true;
      ex.upstreamResponse = upRes;
      if (ex.destroyed || res.destroyed) {
        upRes.destroy();
        return;
      }
      const status = upRes.statusCode ?? 502;
      res.writeHead(status, upRes.statusMessage, endToEnd(upRes.rawHeaders));
      // Streams (no Content-Length): let the client see the status and headers now.
      if (upRes.headers['content-length'] === undefined && method !== 'HEAD' && status !== 204 && status !== 304) res.flushHeaders();
      upRes.on('data', (c: Buffer) => (counters.bytesOut += c.length));
      upRes.pipe(res, { end: false });
      upRes.on('end', () => {
        const trailers = endToEnd(upRes.rawTrailers);
        if (trailers.length) {
          const pairs: [string, string][] = [];
          for (let i = 0; i < trailers.length; i += 2) pairs.push([trailers[i] as string, trailers[i + 1] as string]);
          try {
            res.addTrailers(pairs);
          } catch {
            /* not a chunked response: no trailers */
          }
        }
        res.end();
      });
      // envd went away mid-response: the client must see a broken stream, not a clean end.
      // (after interrupt() the client's answer is already written: leave it to finish)
      upRes.on('close', () => {
        if (!upRes.complete && !ex.destroyed) res.destroy();
      });
      upRes.on('error', () => {
        if (!ex.destroyed) res.destroy();
      });
    });

    up.on('error', (err: NodeJS.ErrnoException) => {
      if (ex.destroyed) return;
      if (!responded && retriesLeft > 0 && noBody && up.reusedSocket && RETRYABLE.has(err.code ?? '')) {
        // A keep-alive socket that envd closed just now: once more on a new socket.
        attempt(retriesLeft - 1);
        return;
      }
      if (responded || res.headersSent) {
        res.destroy();
        return;
      }
      if (!envd) {
        sendJson(res, 502, closedPortBody(sandboxId, port)); // nothing listens there (or it went away)
        return;
      }
      ctx.log?.warn({ sandboxId, code: err.code, url: req.url }, 'sandbox envd unreachable');
      sendJson(res, 502, notFoundBody(sandboxId));
    });

    if (noBody) up.end();
  };

  if (noBody) {
    attempt(1);
    if (!req.readableEnded) req.resume();
    return;
  }
  // A body streams into the one upstream request as it arrives (no retry).
  attempt(0);
  req.on('data', (c: Buffer) => (counters.bytesIn += c.length));
  req.pipe(ex.upstream as ClientRequest);
}
