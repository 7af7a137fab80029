// How a cluster's members authenticate to each other: API replicas send the cluster secret in
// one header with every request they forward to a node; a node refuses anything without it,
// compared in constant time, and drops the header before anything else sees the request (the
// data plane's filter also never passes it to a sandbox: proxy/filter.ts).
import type { IncomingMessage } from 'node:http';
import { safeEqual } from '../protocol/signature.js';

export const CLUSTER_SECRET_HEADER = 'x-cubebox-cluster-secret';

/** Whether the request carries the secret; the header is removed either way. */
export function admitted(req: IncomingMessage, secret: string): boolean {
  const given = req.headers[CLUSTER_SECRET_HEADER];
  delete req.headers[CLUSTER_SECRET_HEADER];
  const raw = req.rawHeaders;
  for (let i = raw.length - 2; i >= 0; i -= 2) if ((raw[i] as string).toLowerCase() === CLUSTER_SECRET_HEADER) raw.splice(i, 2);
  return typeof given === 'string' && safeEqual(given, secret);
}

/** The body of a node's refusal. */
export const REFUSED_BODY = JSON.stringify({
  code: 401,
  message: 'this is a cluster node: it answers its API replicas only (cluster secret missing or wrong)',
});
