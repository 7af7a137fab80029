// A sandbox's own ports (anything but envd's): who may reach them (the traffic token when public
// traffic is off), how (plain TCP, or TLS without verification for network.httpsPorts), and
// what Host they see (network.maskRequestHost).
import type { IncomingMessage } from 'node:http';
import { connect as tcpConnect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { safeEqual } from '../protocol/signature.js';
import type { SandboxRoute } from './types.js';

export const TRAFFIC_TOKEN_HEADER = 'e2b-traffic-access-token';

/** Why a request may not reach a sandbox port, as status and JSON body; undefined when it may. */
export function portRefusal(route: SandboxRoute, port: number, rawPort: string, req: IncomingMessage): { status: number; body: string } | undefined {
  const { sandboxId } = route;
  if (!Number.isInteger(port) || port < 1 || port > 65535)
    return { status: 400, body: JSON.stringify({ sandboxId, message: `'${rawPort}' is not a port (1-65535)`, code: 400 }) };
  if (!route.address)
    return { status: 502, body: JSON.stringify({ sandboxId, message: `the sandbox has no network: port ${port} cannot be reached`, code: 502 }) };
  if (!trafficAllowed(route, req)) {
    return {
      status: 403,
      body: JSON.stringify({
        sandboxId,
        message: `the sandbox does not allow public traffic: send its traffic access token in '${TRAFFIC_TOKEN_HEADER}'`,
        code: 403,
      }),
    };
  }
  return undefined;
}

/** Public traffic, or the sandbox's traffic token in the request. */
export function trafficAllowed(route: Pick<SandboxRoute, 'trafficToken'>, req: IncomingMessage | undefined): boolean {
  if (!route.trafficToken) return true;
  const h = req?.headers[TRAFFIC_TOKEN_HEADER];
  const given = Array.isArray(h) ? h[0] : h;
  return given !== undefined && safeEqual(given, route.trafficToken);
}

/** E2B's answer when nothing listens on the port. */
export function closedPortBody(sandboxId: string, port: number): string {
  return JSON.stringify({ sandboxId, message: 'The sandbox is running but port is not open', port, code: 502 });
}

/** The headers a sandbox port receives: the traffic token never passes, and Host is masked when asked. */
export function portHeaders(route: SandboxRoute, port: number, headers: string[]): string[] {
  const out: string[] = [];
  const mask = route.maskRequestHost?.replaceAll('${PORT}', String(port));
  for (let i = 0; i < headers.length; i += 2) {
    const k = (headers[i] as string).toLowerCase();
    if (k === TRAFFIC_TOKEN_HEADER) continue;
    if (k === 'host' && mask) {
      out.push(headers[i] as string, mask);
      continue;
    }
    out.push(headers[i] as string, headers[i + 1] as string);
  }
  return out;
}

/**
 * The host's end of a sandbox's link: each sandbox has a point-to-point /31 whose even address
 * is the host's. Connections to the sandbox are made from it, so that a sandbox whose link
 * went fails here (the address is gone with the link) instead of leaving by the default route.
 */
export function hostEnd(address: string): string {
  const parts = address.split('.');
  parts[3] = String(Number(parts[3]) & ~1);
  return parts.join('.');
}

/** A connection to the sandbox's port: TLS without verifying the certificate for its httpsPorts. */
export function connectPort(route: SandboxRoute, port: number): Socket {
  const host = route.address!;
  const tcp = tcpConnect({ host, port, localAddress: hostEnd(host), noDelay: true });
  if (!route.httpsPorts?.includes(port)) return tcp;
  const tls = tlsConnect({ socket: tcp, rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] });
  tcp.once('error', (err) => tls.destroy(err));
  return tls;
}
