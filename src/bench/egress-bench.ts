// The egress proxy's cost, on the host alone: curl fetches from a local HTTPS server (a child
// process with a CA made here) through an EgressProxy that ends the TLS and injects a header,
// and directly, in the same run (the same curl, a CA bundle of the same size on both sides).
import { execFile, execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { EgressCa } from '../network/egress-ca.js';
import { EgressProxy } from '../network/egress-proxy.js';
import type { NetworkSettings } from '../network/policy.js';
import type { BenchRow } from './report.js';
import { median } from './report.js';

const run = promisify(execFile);
const NAME = 'egress.bench';
const BIG_MIB = 64;

const SERVER = `
const https = require('node:https');
const fs = require('node:fs');
const chunk = Buffer.alloc(1 << 20, 97);
const srv = https.createServer({ key: fs.readFileSync(process.argv[2]), cert: fs.readFileSync(process.argv[3]) }, (req, res) => {
  const n = Number(new URL(req.url, 'http://x').searchParams.get('n') || 5);
  let left = n;
  res.writeHead(200, { 'content-length': String(n) });
  const pump = () => { while (left > 0) { const c = chunk.subarray(0, Math.min(left, chunk.length)); left -= c.length; if (!res.write(c)) return res.once('drain', pump); } res.end(); };
  pump();
});
srv.listen(443, process.argv[4], () => process.stdout.write('ready\\n'));
setTimeout(() => process.exit(0), 600000).unref();
process.stdin.on('end', () => process.exit(0)).resume();
`;

/** A test CA and a certificate of it for NAME (openssl, as the proxy's own CA is made). */
function makeCerts(dir: string): void {
  const o = (args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  o(['ecparam', '-genkey', '-name', 'prime256v1', '-noout', '-out', 'ca.key']);
  o(['req', '-x509', '-new', '-key', 'ca.key', '-out', 'ca.crt', '-days', '1', '-subj', '/CN=cubebox bench CA']);
  o(['ecparam', '-genkey', '-name', 'prime256v1', '-noout', '-out', 'srv.key']);
  o([
    ...['req', '-new', '-x509', '-key', 'srv.key', '-CA', 'ca.crt', '-CAkey', 'ca.key', '-out', 'srv.crt', '-days', '1', '-subj', `/CN=${NAME}`],
    ...['-addext', `subjectAltName=DNS:${NAME}`, '-addext', 'basicConstraints=critical,CA:FALSE'],
  ]);
}

/** Rows for a 64 MiB GET and a small GET through the egress proxy against the same direct. */
export async function egressBench(iterations: number, log: (s: string) => void): Promise<{ rows: BenchRow[]; notes: string[] }> {
  const dir = mkdtempSync('/var/tmp/cubebox-bench-egress-');
  // a loopback address of its own: the proxy connects to port 443 of the name's address
  const address = `127.${64 + Math.floor(Math.random() * 128)}.${Math.floor(Math.random() * 250) + 1}.1`;
  const server = (() => {
    makeCerts(dir);
    writeFileSync(join(dir, 'server.cjs'), SERVER);
    return spawn(process.execPath, [join(dir, 'server.cjs'), join(dir, 'srv.key'), join(dir, 'srv.crt'), address], { stdio: ['pipe', 'pipe', 'inherit'] });
  })();
  let proxy: EgressProxy | undefined;
  try {
    await new Promise<void>((resolve, reject) => {
      server.stdout!.once('data', () => resolve());
      server.once('exit', (c) => reject(new Error(`the bench's HTTPS server exited (${c}): is port 443 of ${address} free?`)));
    });
    const ca = await EgressCa.open(dir, 'bench');
    const settings: NetworkSettings = {
      ...{ allowInternetAccess: true, allowOut: [], denyOut: [], allowPublicTraffic: true, httpsPorts: [443] },
      rules: { [NAME]: [{ transform: { headers: { 'X-Bench': 'injected' } } }] },
    };
    proxy = new EgressProxy({
      ca,
      upstreamCa: readFileSync(join(dir, 'ca.crt')),
      log: { debug: () => undefined } as never,
      lookup: (a) => (a === '127.0.0.1' ? { sandboxId: 'bench', team: 'bench', settings } : undefined),
      resolve: async (n) => (n === NAME ? [address] : []),
      blocked: () => false,
      secret: async () => undefined,
    });
    const { tls } = await proxy.start();
    const bundle = join(dir, 'bundle.pem');
    writeFileSync(bundle, ca.certPem + readFileSync(join(dir, 'ca.crt'), 'utf8'));
    const curl = async (path: string, proxied: boolean) => {
      const to = proxied ? ['--connect-to', `${NAME}:443:127.0.0.1:${tls}`] : ['--resolve', `${NAME}:443:${address}`];
      const { stdout } = await run('curl', [
        '-sS',
        '--fail',
        '--cacert',
        bundle,
        ...to,
        '--max-time',
        '120',
        '-o',
        '/dev/null',
        '-w',
        '%{time_total}',
        `https://${NAME}${path}`,
      ]);
      return Number(stdout) * 1000;
    };
    await curl('/s', true); // the proxy issues its certificate for the name on first use
    const big: number[][] = [[], []];
    for (let i = 0; i < Math.max(3, Math.min(iterations, 7)); i++) {
      big[0]!.push(await curl(`/big?n=${BIG_MIB << 20}`, true));
      big[1]!.push(await curl(`/big?n=${BIG_MIB << 20}`, false));
      log(`egress proxy 64 MiB GET ${i + 1}`);
    }
    const small: number[][] = [[], []];
    for (let i = 0; i < Math.max(11, iterations * 5); i++) {
      small[0]!.push(await curl('/s', true));
      small[1]!.push(await curl('/s', false));
    }
    const mibs = (ms: number) => (BIG_MIB / (ms / 1000)).toFixed(0);
    const [bp, bd] = big.map(median) as [number, number];
    return {
      rows: [
        { name: 'HTTPS GET 64 MiB through the egress proxy', medianMs: bp, baselineName: 'the same GET direct', baselineMs: bd },
        { name: 'HTTPS GET small through the egress proxy', medianMs: median(small[0]!), baselineName: 'the same GET direct', baselineMs: median(small[1]!) },
      ],
      notes: [
        `egress proxy (host loopback, curl): ${mibs(bp)} MiB/s through the proxy vs ${mibs(bd)} MiB/s direct (${(bd / bp).toFixed(2)}x); ` +
          `small GET ${median(small[0]!).toFixed(1)} ms vs ${median(small[1]!).toFixed(1)} ms (${(median(small[0]!) / median(small[1]!)).toFixed(2)}x)`,
      ],
    };
  } finally {
    await proxy?.close();
    server.stdin!.end();
    if (server.exitCode === null && server.signalCode === null) await new Promise((r) => server.once('exit', r));
    rmSync(dir, { recursive: true, force: true });
  }
}
