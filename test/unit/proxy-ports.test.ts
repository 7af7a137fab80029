// A sandbox's own ports through the real data-plane proxy, on loopback only: a stand-in for the
// sandbox's service listens on 127.0.0.3 (the "sandbox end" of a /31 whose host end is
// 127.0.0.2), the proxy on 127.0.0.1. Who gets through, what the service sees, and the answers
// when it cannot be reached. No sandbox, no namespace, no root.
import assert from 'node:assert/strict';
import { createServer, request, type IncomingMessage, type Server } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { DataPlaneProxy, type RouteResolver, type SandboxRoute } from '../../src/proxy/proxy.js';

const OPEN = 'portsopen00000000000';
const CLOSED = 'portsclosed000000000';
const OFFLINE = 'portsoffline00000000';
const TOKEN = 'traffic-token-0123456789';
const SANDBOX = '127.0.0.3';

const listen = (s: Server, host: string) => new Promise<number>((resolve) => s.listen(0, host, () => resolve((s.address() as AddressInfo).port)));
const close = (s: Server) => new Promise<void>((resolve) => s.close(() => resolve()));

describe("a sandbox's own ports through the data plane", () => {
  let service: Server;
  let servicePort: number;
  let deadPort: number;
  let server: Server;
  let proxy: DataPlaneProxy;
  let port: number;
  const routes = new Map<string, SandboxRoute>();
  const resolver: RouteResolver = {
    async route(id) {
      return routes.get(id);
    },
    *signedCandidates() {},
  };

  function get(headers: Record<string, string>, path = '/app?x=1'): Promise<{ status: number; body: string; type?: string }> {
    return new Promise((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port, path, headers, agent: false }, (res: IncomingMessage) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body, type: res.headers['content-type'] }));
      });
      req.on('error', reject);
      req.end();
    });
  }

  /** What the service saw of a request that reached it. */
  const seen = (r: { status: number; body: string }) => {
    assert.equal(r.status, 200, r.body);
    return JSON.parse(r.body) as { from: string; url: string; headers: Record<string, string> };
  };

  before(async () => {
    service = createServer((req, res) => {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ from: req.socket.remoteAddress, url: req.url, headers: req.headers }));
    });
    servicePort = await listen(service, SANDBOX);
    const probe = createServer();
    deadPort = await listen(probe, SANDBOX);
    await close(probe); // nothing listens there now
    routes.set(OPEN, { sandboxId: OPEN, socket: { path: '/nonexistent', device: 0 }, address: SANDBOX });
    routes.set(CLOSED, {
      sandboxId: CLOSED,
      socket: { path: '/nonexistent', device: 0 },
      address: SANDBOX,
      trafficToken: TOKEN,
      maskRequestHost: 'app.example:${PORT}',
    });
    routes.set(OFFLINE, { sandboxId: OFFLINE, socket: { path: '/nonexistent', device: 0 } });
    proxy = new DataPlaneProxy(resolver, { domain: 'cubebox.test' });
    server = createServer((req, res) => (proxy.matches(req) ? proxy.handle(req, res) : res.writeHead(404).end()));
    server.on('upgrade', (req, socket, head) => proxy.handleUpgrade(req, socket, head));
    port = await listen(server, '127.0.0.1');
  });

  after(async () => {
    proxy.close();
    server.closeAllConnections();
    service.closeAllConnections();
    await Promise.all([close(server), close(service)]);
  });

  it("reach the service from the host's end of the link, with the client's Host, path and headers", async () => {
    const s = seen(await get({ Host: `${servicePort}-${OPEN}.cubebox.test:${port}`, 'X-App': 'a' }));
    assert.equal(s.from, '127.0.0.2');
    assert.equal(s.url, '/app?x=1');
    assert.equal(s.headers.host, `${servicePort}-${OPEN}.cubebox.test:${port}`);
    assert.equal(s.headers['x-app'], 'a');
    const byHeader = seen(await get({ 'E2b-Sandbox-Id': OPEN, 'E2b-Sandbox-Port': String(servicePort) }));
    assert.equal(byHeader.headers['e2b-sandbox-port'], String(servicePort));
  });

  it('need the traffic token when public traffic is off, and the service never sees it', async () => {
    const host = `${servicePort}-${CLOSED}.cubebox.test`;
    for (const headers of <Record<string, string>[]>[
      { Host: host },
      { Host: host, 'E2b-Traffic-Access-Token': 'wrong' },
      { Host: host, 'E2b-Traffic-Access-Token': '' },
    ]) {
      const r = await get(headers);
      assert.equal(r.status, 403, JSON.stringify(headers));
      assert.equal(r.type, 'application/json');
      const body = JSON.parse(r.body) as Record<string, unknown>;
      assert.equal(body.sandboxId, CLOSED);
      assert.equal(body.code, 403);
    }
    const s = seen(await get({ Host: host, 'E2b-Traffic-Access-Token': TOKEN }));
    assert.equal(s.headers['e2b-traffic-access-token'], undefined);
    assert.equal(s.headers.host, `app.example:${servicePort}`, 'the masked Host, with the port filled in');
  });

  it('a public sandbox does not pass a traffic token on either', async () => {
    const s = seen(await get({ Host: `${servicePort}-${OPEN}.cubebox.test`, 'E2b-Traffic-Access-Token': 'whatever' }));
    assert.equal(s.headers['e2b-traffic-access-token'], undefined);
  });

  it("answer E2B's 502 when nothing listens on the port", async () => {
    const r = await get({ Host: `${deadPort}-${OPEN}.cubebox.test` });
    assert.equal(r.status, 502);
    assert.equal(r.type, 'application/json');
    assert.equal(r.body, `{"sandboxId":"${OPEN}","message":"The sandbox is running but port is not open","port":${deadPort},"code":502}`);
  });

  it('answer 400 for a port that is not one, 502 without networking, and not found for an unknown sandbox', async () => {
    for (const p of ['http', '0', '99999']) {
      const r = await get({ 'E2b-Sandbox-Id': OPEN, 'E2b-Sandbox-Port': p });
      assert.equal(r.status, 400, p);
      assert.deepEqual(JSON.parse(r.body), { sandboxId: OPEN, message: `'${p}' is not a port (1-65535)`, code: 400 });
    }
    const offline = await get({ Host: `${servicePort}-${OFFLINE}.cubebox.test` });
    assert.equal(offline.status, 502);
    assert.match(offline.body, /has no network/);
    const unknown = await get({ Host: `${servicePort}-nosuchsandbox.cubebox.test` });
    assert.equal(unknown.status, 502);
    assert.equal(unknown.body, '{"sandboxId":"nosuchsandbox","message":"The sandbox was not found","code":502}');
  });

  it('refuse a WebSocket upgrade without the traffic token before anything reaches the service', async () => {
    let upgrades = 0;
    service.on('upgrade', (_req, socket) => {
      upgrades++;
      socket.destroy();
    });
    const answer = await new Promise<string>((resolve, reject) => {
      const c = connect(port, '127.0.0.1', () => {
        c.write(
          `GET /ws HTTP/1.1\r\nHost: ${servicePort}-${CLOSED}.cubebox.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
            'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
        );
      });
      let data = '';
      c.setEncoding('utf8');
      c.on('data', (d: string) => (data += d));
      c.on('end', () => resolve(data));
      c.on('error', reject);
    });
    assert.match(answer, /^HTTP\/1\.1 403 Forbidden\r\n/);
    assert.match(answer, /"code":403/);
    assert.equal(upgrades, 0);
  });
});
