// Which sandbox (and port) a data-plane request is for (contract sections 1 and 5.3).
import type { IncomingMessage } from 'node:http';
import { SANDBOX_ID_PATTERN, sandboxIdOf } from '../protocol/ids.js';
import { fileOpOf, signatureMatches, signedFileRequest, type FileOp } from '../protocol/signature.js';

export const ENVD_PORT = 49983;

export type Target =
  /** Routed by E2b-Sandbox-Id or by Host. `port` is NaN when the port header is not a number. */
  | { kind: 'sandbox'; sandboxId: string; port: number; rawPort: string; via: 'header' | 'host' }
  /** A header-less `/files` request carrying a signature: the sandbox is found by its token. */
  | { kind: 'signed'; url: URL; op: FileOp; probe?: boolean }
  /** A CORS preflight for a data-plane request (browsers send no custom headers in it). */
  | { kind: 'preflight' };

function header(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

/** `abc123-clientid` -> `abc123`; anything else is returned as it came (and will not be found). */
export function normalizeSandboxId(raw: string): string {
  return sandboxIdOf(raw) ?? raw.trim();
}

const HOST_RE = new RegExp(`^(\\d{1,5})-(${SANDBOX_ID_PATTERN})(?:-[a-z0-9]+)?\\.[^.:]`);

/** `<port>-<id>[-<clientID>].<any domain>[:<listener port>]` -> port and id. */
export function parseSandboxHost(host: string | undefined): { port: number; sandboxId: string } | undefined {
  if (!host) return undefined;
  const m = HOST_RE.exec(host.toLowerCase());
  if (!m) return undefined;
  const port = Number(m[1]);
  if (port < 1 || port > 65535) return undefined;
  return { port, sandboxId: m[2] as string };
}

/** Where a request goes, or undefined when it is not data-plane traffic. */
export function classify(req: IncomingMessage, envdPort = ENVD_PORT): Target | undefined {
  const idHeader = header(req, 'e2b-sandbox-id');
  if (idHeader !== undefined && idHeader.trim() !== '') {
    const rawPort = (header(req, 'e2b-sandbox-port') ?? '').trim();
    const port = rawPort === '' ? envdPort : /^\d{1,5}$/.test(rawPort) ? Number(rawPort) : NaN;
    return { kind: 'sandbox', sandboxId: normalizeSandboxId(idHeader), port, rawPort: rawPort || String(envdPort), via: 'header' };
  }
  const byHost = parseSandboxHost(header(req, 'host'));
  if (byHost) return { kind: 'sandbox', ...byHost, rawPort: String(byHost.port), via: 'host' };
  const url = req.url ?? '';
  if (url.startsWith('/files?') && /[?&]signature=/.test(url)) {
    // an API replica asking which node's sandbox signed an upload URL, before it sends the body there
    if (req.method === 'HEAD' && header(req, SIGNED_PROBE_HEADER) === 'write')
      return { kind: 'signed', url: new URL(url, 'http://data-plane'), op: 'write', probe: true };
    const op = fileOpOf(req.method ?? 'GET');
    if (op) return { kind: 'signed', url: new URL(url, 'http://data-plane'), op };
  }
  if (req.method === 'OPTIONS' && /(^|[\s,])e2b-sandbox-id($|[\s,])/i.test(header(req, 'access-control-request-headers') ?? '')) {
    return { kind: 'preflight' };
  }
  return undefined;
}

/**
 * A HEAD of a signed /files URL with this header set to `write` asks whether a sandbox here
 * signed it for an upload: 204 or 401, nothing relayed (it tells no more than the upload would).
 */
export const SIGNED_PROBE_HEADER = 'x-cubebox-signed-probe';

/**
 * The candidate whose token makes the URL's signature valid. The expiration is part of what is
 * signed but is not checked here: envd checks it and answers "signature is already expired".
 */
export function matchSignature(url: URL, op: FileOp, candidates: Iterable<{ sandboxId: string; accessToken: string }>): string | undefined {
  const signed = signedFileRequest(url);
  if (!signed || signed === 'bad-expiration') return undefined;
  for (const c of candidates) {
    if (!c.accessToken) continue;
    if (signatureMatches(signed, op, c.accessToken)) return c.sandboxId;
  }
  return undefined;
}
