// The data plane's view of a node: which sandbox a request reaches and how (the resolver the
// proxy asks), with the rules of who may reach and wake one, over the node API's sandboxes
// and teams; and the proxy itself, whose log never shows a credential.
import type { IncomingMessage } from 'node:http';
import type { Logger } from 'pino';
import { DataPlaneProxy, type RouteResolver, type SandboxRoute } from '../proxy/proxy.js';
import { trafficAllowed } from '../proxy/ports.js';
import { ENVD_PORT } from '../proxy/routing.js';
import { fileOpOf, safeEqual, signatureMatches, signedFileRequest } from '../protocol/signature.js';
import type { SandboxInfo } from '../sandbox/types.js';
import type { NodeApi } from './node-api.js';

/**
 * Routes to running sandboxes; a paused auto-resuming one is woken by traffic that proves it
 * may use it; a team whose last key was revoked has its sandboxes unreachable (like unknown ones).
 */
export function dataPlaneResolver(node: Pick<NodeApi, 'sandboxes' | 'teams'>, log: Pick<Logger, 'warn'>): RouteResolver {
  const { sandboxes, teams } = node;
  return {
    async route(sandboxId: string, req?: IncomingMessage, port = ENVD_PORT): Promise<SandboxRoute | undefined> {
      let info;
      try {
        info = sandboxes.get(sandboxId);
      } catch {
        return undefined;
      }
      if (teams.blocked(info.team)) return undefined;
      if (info.state === 'paused' && info.lifecycle.autoResume) {
        // only traffic that proves it may use the sandbox wakes it: its token, a valid signature, or an insecure sandbox
        // (a sandbox port: the traffic it lets in, public or with its traffic token)
        if (port === ENVD_PORT ? !mayWake(info, req) : !trafficAllowed({ trafficToken: info.trafficAccessToken ?? undefined }, req)) return undefined;
        try {
          info = (await sandboxes.connect(sandboxId)).info; // traffic wakes an auto-resuming sandbox
        } catch (err) {
          log.warn({ sandbox: sandboxId, err: (err as Error).message }, 'auto-resume failed');
          return undefined;
        }
      }
      if (info.state !== 'running') return undefined;
      const socket = sandboxes.envdEndpoint(sandboxId);
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
      for (const s of sandboxes.list()) {
        const reachable = s.state === 'running' || (s.state === 'paused' && s.lifecycle.autoResume);
        if (reachable && s.accessToken && !teams.blocked(s.team)) yield { sandboxId: s.id, accessToken: s.accessToken };
      }
    },
  };
}

/**
 * The data-plane proxy over a resolver. Host routing accepts any domain suffix, so it needs no
 * final domain up front. Its log never shows a URL's query: signed /files URLs are credentials.
 */
export function dataPlaneProxy(resolver: RouteResolver, domain: string | undefined, log: Logger): DataPlaneProxy {
  const proxyLog = log.child({}, { serializers: { url: redactUrl, err: redactErr } });
  return new DataPlaneProxy(resolver, { domain: domain ?? 'localhost', log: proxyLog });
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
