// What never passes the data plane as a client sent it: hop-by-hop headers, the host's init
// secret, and envd's /init.
import { INIT_SECRET_HEADER } from '../envd/host-contract.js';
import { CLUSTER_SECRET_HEADER } from '../cluster/secret.js';

/** Hop-by-hop headers (RFC 9110 7.6.1), plus Expect: this listener already answered it. */
export const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'http2-settings',
  'expect',
  // not hop-by-hop, but never a client's to send: only the host authenticates to envd with it
  INIT_SECRET_HEADER,
  // nor the cluster's: only API replicas authenticate to nodes with it (cluster/secret.ts)
  CLUSTER_SECRET_HEADER,
]);

/** rawHeaders minus hop-by-hop ones and those the Connection header names. */
export function endToEnd(raw: string[], keepUpgrade = false): string[] {
  const named = new Set<string>();
  for (let i = 0; i < raw.length; i += 2) {
    if ((raw[i] as string).toLowerCase() === 'connection') {
      for (const t of (raw[i + 1] as string).split(',')) named.add(t.trim().toLowerCase());
    }
  }
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const k = (raw[i] as string).toLowerCase();
    if (keepUpgrade && (k === 'connection' || k === 'upgrade')) {
      out.push(raw[i] as string, raw[i + 1] as string);
      continue;
    }
    if (HOP_BY_HOP.has(k) || (named.has(k) && !(keepUpgrade && k === 'upgrade'))) continue;
    out.push(raw[i] as string, raw[i + 1] as string);
  }
  return out;
}

/**
 * envd's /init gives a sandbox its identity (access token, env vars, default user): only the
 * manager calls it, on the sandbox's socket; never a client through the data plane. The path is
 * compared the way envd parses it (URL normalisation) and with runs of slashes collapsed.
 */
export function isInitPath(url: string | undefined): boolean {
  if (!url?.includes('init')) return false;
  const raw = url.split('?')[0] as string;
  const collapsed = raw.replace(/\/+/g, '/').replace(/(.)\/$/, '$1');
  let parsed = '';
  try {
    parsed = new URL(url, 'http://envd').pathname;
  } catch {
    /* unparsable: envd would not route it either */
  }
  return collapsed === '/init' || parsed === '/init' || parsed === '/init/';
}

export const INIT_REFUSED = JSON.stringify({ code: 403, message: '/init is not reachable through the data plane' });
