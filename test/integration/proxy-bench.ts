// Added latency of the data-plane proxy, one run: sequential requests with keep-alive clients,
// straight to envd's unix socket versus through the proxy on loopback TCP. Not a test (no
// assertions on time): run `node dist/test/integration/proxy-bench.js [iterations]`.
import { statSync } from 'node:fs';
import { Agent, createServer, request, type RequestOptions } from 'node:http';
import type { AddressInfo } from 'node:net';
import { DataPlaneProxy } from '../../src/proxy/proxy.js';
import { startSocketEnvd } from './proxy-envd.js';

function once(opts: RequestOptions, body?: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const req = request(opts, (res) => {
      res.resume();
      res.on('end', () => resolve(Number(process.hrtime.bigint() - t0) / 1e3));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

const quantile = (xs: number[], q: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))] as number;
};

async function main(): Promise<void> {
  const n = Number(process.argv[2] ?? 2000);
  const envd = await startSocketEnvd();
  const proxy = new DataPlaneProxy(
    { route: async (id) => ({ sandboxId: id, socket: { path: envd.socket, device: statSync(envd.socket).dev } }), signedCandidates: () => [] },
    { domain: 'bench.test' },
  );
  const server = createServer({ requestTimeout: 0 }, (req, res) => proxy.handle(req, res));
  await new Promise<void>((resolve) => server.listen({ host: '127.0.0.1', port: 0 }, resolve));
  const port = (server.address() as AddressInfo).port;
  const direct = new Agent({ keepAlive: true, maxSockets: 1 });
  const viaProxy = new Agent({ keepAlive: true, maxSockets: 1 });
  const cases: [string, RequestOptions, RequestOptions, string?][] = [
    ['GET /health', { socketPath: envd.socket, path: '/health', agent: direct }, { host: '127.0.0.1', port, path: '/health', agent: viaProxy }],
    [
      'POST /process.Process/List (Connect unary)',
      { socketPath: envd.socket, path: '/process.Process/List', method: 'POST', agent: direct },
      { host: '127.0.0.1', port, path: '/process.Process/List', method: 'POST', agent: viaProxy },
      '{}',
    ],
  ];
  const headers = { 'E2b-Sandbox-Id': 'benchsandbox', 'Content-Type': 'application/json', 'Connect-Protocol-Version': '1' };
  try {
    for (const [name, d, p, body] of cases) {
      d.headers = { ...headers };
      p.headers = { ...headers };
      for (let i = 0; i < 200; i++) {
        await once(d, body);
        await once(p, body);
      }
      const a: number[] = [];
      const b: number[] = [];
      for (let i = 0; i < n; i++) {
        // interleaved, so that both see the same machine state
        a.push(await once(d, body));
        b.push(await once(p, body));
      }
      const md = quantile(a, 0.5);
      const mp = quantile(b, 0.5);
      console.log(
        `${name}: n=${n}  direct median ${md.toFixed(0)} µs (p99 ${quantile(a, 0.99).toFixed(0)})  ` +
          `proxied median ${mp.toFixed(0)} µs (p99 ${quantile(b, 0.99).toFixed(0)})  added ${(mp - md).toFixed(0)} µs`,
      );
    }
  } finally {
    direct.destroy();
    viaProxy.destroy();
    proxy.close();
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await envd.stop();
  }
}

void main();
