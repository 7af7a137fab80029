// Which sandbox (and port) a data-plane request is for (contract sections 1 and 5.3).
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';

export const ENVD_PORT = 49983;

/** Sandbox ids are [a-z0-9]; a `<id>-<clientID>` form is accepted and the suffix dropped. */
const ID_RE = /^[a-z0-9]{1,64}$/;

export type Target =
  /** Routed by E2b-Sandbox-Id or by Host. `port` is NaN when the port header is not a number. */
  | { kind: 'sandbox'; sandboxId: string; port: number; rawPort: string; via: 'header' | 'host' }
  /** A header-less `/files` request carrying a signature: the sandbox is found by its token. */
  | { kind: 'signed'; url: URL; op: 'read' | 'write' }
  /** A CORS preflight for a data-plane request (browsers send no custom headers in it). */
  | { kind: 'preflight' };

function header(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

/** `abc123-clientid` -> `abc123`; anything else is returned as it came (and will not be found). */
export function normalizeSandboxId(raw: string): string {
  const v = raw.trim();
  const i = v.indexOf('-');
  const id = i > 0 ? v.slice(0, i) : v;
  return ID_RE.test(id) ? id : v;
}

/** `<port>-<id>[-<clientID>].<any domain>[:<listener port>]` -> port and id. */
export function parseSandboxHost(host: string | undefined): { port: number; sandboxId: string } | undefined {
  if (!host) return undefined;
  const m = /^(\d{1,5})-([a-z0-9]{1,64})(?:-[a-z0-9]+)?\.[^.:]/.exec(host.toLowerCase());
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
    const method = req.method ?? 'GET';
    const op = method === 'POST' ? 'write' : method === 'GET' || method === 'HEAD' ? 'read' : undefined;
    if (op) return { kind: 'signed', url: new URL(url, 'http://data-plane'), op };
  }
  if (req.method === 'OPTIONS' && /(^|[\s,])e2b-sandbox-id($|[\s,])/i.test(header(req, 'access-control-request-headers') ?? '')) {
    return { kind: 'preflight' };
  }
  return undefined;
}

/** The signature of a /files URL: "v1_" + base64(sha256(path:op:user:token[:exp])) without padding. */
export function fileSignature(path: string, op: 'read' | 'write', user: string | undefined, token: string, expiration?: number): string {
  let raw = `${path}:${op}:${user ?? ''}:${token}`;
  if (expiration !== undefined) raw += `:${expiration}`;
  return 'v1_' + createHash('sha256').update(raw).digest('base64').replace(/=+$/, '');
}

/** Constant-time string equality (digests first, so lengths do not leak either). */
export function safeEqual(a: string, b: string): boolean {
  const ha = createHash('sha256').update(a).digest();
  const hb = createHash('sha256').update(b).digest();
  return timingSafeEqual(ha, hb) && a.length === b.length;
}

/**
 * The candidate whose token makes the URL's signature valid. The expiration is part of what is
 * signed but is not checked here: envd checks it and answers "signature is already expired".
 */
export function matchSignature(
  url: URL,
  op: 'read' | 'write',
  candidates: Iterable<{ sandboxId: string; accessToken: string }>,
): string | undefined {
  const signature = url.searchParams.get('signature');
  if (!signature) return undefined;
  const path = url.searchParams.get('path') ?? '';
  const user = url.searchParams.get('username') ?? undefined;
  const expRaw = url.searchParams.get('signature_expiration');
  let exp: number | undefined;
  if (expRaw !== null && expRaw !== '') {
    exp = Number(expRaw);
    if (!Number.isInteger(exp)) return undefined;
  }
  for (const c of candidates) {
    if (!c.accessToken) continue;
    if (safeEqual(signature, fileSignature(path, op, user, c.accessToken, exp))) return c.sandboxId;
  }
  return undefined;
}
