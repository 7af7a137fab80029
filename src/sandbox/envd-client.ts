import http from 'node:http';
import { SANDBOX_SUPPORT } from '../runtime/support.js';
import { connectGuarded, type GuardedSocket } from '../util/safe-socket.js';
import { ENVD_NODE_FLAGS } from '../envd/host-contract.js';

/** How the manager reaches a sandbox's envd: its command line, and requests on its unix socket. */

export { ENVD_ENV, ENVD_NODE_FLAGS, INIT_SECRET_FILE, INIT_SECRET_FILE_ENV, INIT_SECRET_HEADER, SUSPEND_SOCKET_PATH } from '../envd/host-contract.js';

/** envd's argv inside the sandbox, through the support tree's own loader and node. */
export function envdCommand(socket: string): string[] {
  return [
    `${SANDBOX_SUPPORT}/lib/ld.so`,
    '--library-path',
    `${SANDBOX_SUPPORT}/lib`,
    `${SANDBOX_SUPPORT}/bin/node`,
    ...ENVD_NODE_FLAGS,
    `${SANDBOX_SUPPORT}/envd/envd.cjs`,
    '--socket',
    socket,
  ];
}

/**
 * A JSON request to a sandbox's envd on its unix socket; resolves to the status code (with
 * untilClosed, once envd has also closed the connection).
 */
export function envdRequest(
  socket: GuardedSocket,
  method: string,
  path: string,
  body: unknown,
  headers: Record<string, string> = {},
  opts: { untilClosed?: boolean } = {},
): Promise<number> {
  return new Promise((resolve, reject) => {
    const data = JSON.stringify(body);
    const req = http.request(
      {
        createConnection: () => connectGuarded(socket),
        path,
        method,
        timeout: 10_000,
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data), ...headers },
      },
      (res) => {
        res.resume();
        if (opts.untilClosed) res.socket.on('close', () => resolve(res.statusCode ?? 0));
        else res.on('end', () => resolve(res.statusCode ?? 0));
      },
    );
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error(`envd ${path} timed out`)));
    req.end(data);
  });
}

export function healthy(socket: GuardedSocket): Promise<boolean> {
  return new Promise((resolve) => {
    const req = http.request({ createConnection: () => connectGuarded(socket), path: '/health', method: 'GET', timeout: 2000 }, (res) => {
      res.resume();
      resolve(res.statusCode === 204);
    });
    req.on('error', () => resolve(false));
    // a connection that never answers is not healthy (destroy() alone would leave this pending)
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.end();
  });
}
