// The web dashboard at /dashboard: a page and the bundle built into dist/dashboard/, served on the
// API's own origin so the page reaches both planes without CORS. Served before the control
// plane's key check: the page and its assets hold nothing of a team's (the key is entered in it).
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { join } from 'node:path';
import { PROJECT_ROOT } from '../../config.js';

export const DASHBOARD_PATH = '/dashboard';
const ASSETS: Record<string, string> = { 'app.js': 'text/javascript; charset=utf-8', 'app.css': 'text/css; charset=utf-8' };

/**
 * Scripts only from this origin's bundle, no inline script, no eval. Styles from the bundle, and
 * the <style> elements xterm.js makes at run time carry this response's nonce (the page hands it
 * to the bundle); style attributes are refused. Requests go only to this origin (both planes).
 */
export function contentSecurityPolicy(nonce: string): string {
  return [
    "default-src 'none'",
    "script-src 'self'",
    `style-src 'self' 'nonce-${nonce}'`,
    "style-src-attr 'none'",
    "connect-src 'self'",
    "img-src 'self' data: blob:",
    "font-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
  ].join('; ');
}

function page(nonce: string): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="cubebox-style-nonce" content="${nonce}">
<title>cubebox</title>
<link rel="stylesheet" href="${DASHBOARD_PATH}/app.css">
<script type="module" src="${DASHBOARD_PATH}/app.js"></script>
</head>
<body><noscript>The cubebox dashboard needs JavaScript.</noscript><div id="app"></div></body>
</html>
`;
}

const cache = new Map<string, Buffer>();
function asset(name: string): Buffer | undefined {
  let b = cache.get(name);
  if (!b) {
    try {
      b = readFileSync(join(PROJECT_ROOT, 'dist', 'dashboard', name));
    } catch {
      return undefined;
    }
    cache.set(name, b);
  }
  return b;
}

function send(res: ServerResponse, status: number, type: string, body: string | Buffer, headers: Record<string, string> = {}): void {
  res.writeHead(status, {
    'content-type': type,
    'content-length': String(Buffer.byteLength(body)),
    'x-content-type-options': 'nosniff',
    'referrer-policy': 'no-referrer',
    'cross-origin-opener-policy': 'same-origin',
    'cache-control': 'no-cache',
    ...headers,
  });
  res.end(body);
}

/** Answers a request for the dashboard and returns true, or returns false for any other request. */
export function serveDashboard(req: IncomingMessage, res: ServerResponse): boolean {
  const path = (req.url ?? '').split('?')[0] ?? '';
  if (path !== DASHBOARD_PATH && !path.startsWith(`${DASHBOARD_PATH}/`)) return false;
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    send(res, 405, 'application/json', JSON.stringify({ code: 405, message: 'the dashboard answers GET only' }), { allow: 'GET, HEAD' });
    return true;
  }
  const name = path.slice(DASHBOARD_PATH.length + 1);
  if (name === '' || name === 'index.html' || path === DASHBOARD_PATH) {
    const nonce = randomBytes(16).toString('base64');
    send(res, 200, 'text/html; charset=utf-8', page(nonce), { 'content-security-policy': contentSecurityPolicy(nonce), 'cache-control': 'no-store' });
    return true;
  }
  const type = ASSETS[name];
  const body = type ? asset(name) : undefined;
  if (!type || !body) send(res, 404, 'application/json', JSON.stringify({ code: 404, message: `no dashboard asset '${name.slice(0, 100)}'` }));
  else send(res, 200, type, body, { 'content-security-policy': "default-src 'none'" });
  return true;
}
