import http from 'node:http';
import { SANDBOX_SUPPORT } from '../runtime/support.js';

/** How the manager reaches a sandbox's envd: its command line, and requests on its unix socket. */

/** envd's argv inside the sandbox, through the support tree's own loader and node. */
export function envdCommand(socket: string): string[] {
  return [`${SANDBOX_SUPPORT}/lib/ld.so`, '--library-path', `${SANDBOX_SUPPORT}/lib`, `${SANDBOX_SUPPORT}/bin/node`, '--max-semi-space-size=1', `${SANDBOX_SUPPORT}/envd/envd.mjs`, '--socket', socket];
}

/** A JSON request to a sandbox's envd on its unix socket; resolves to the status code. */
export function envdRequest(socketPath: string, method: string, path: string, body: unknown): Promise<number> {
  return new Promise((resolve, reject) => {
    const data = JSON.stringify(body);
    const req = http.request(
      { socketPath, path, method, timeout: 10_000, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) } },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      },
    );
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error(`envd ${path} timed out`)));
    req.end(data);
  });
}

export function healthy(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const req = http.request({ socketPath, path: '/health', method: 'GET', timeout: 2000 }, (res) => {
      res.resume();
      resolve(res.statusCode === 204);
    });
    req.on('error', () => resolve(false));
    req.on('timeout', () => req.destroy());
    req.end();
  });
}
