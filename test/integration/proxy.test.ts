// The data-plane proxy in front of real, standalone envd processes (unix sockets only), on an
// ephemeral loopback port, with a small resolver mapping sandbox ids to those sockets: routing
// by header, Host and signature, exact 502s, unbuffered streams both ways, cut(), and the
// unmodified e2b SDK pointed at the proxy with sandboxUrl (what E2B_SANDBOX_URL sets).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, readFileSync, writeFileSync, existsSync, rmSync, mkdtempSync, statSync } from 'node:fs';
import { createServer, request, type IncomingMessage, type Server } from 'node:http';
import { connect, type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Sandbox, TimeoutError } from 'e2b';
import { DataPlaneProxy, type RouteResolver, type SandboxRoute } from '../../src/proxy/proxy.js';
import { fileSignature } from '../../src/protocol/signature.js';
import { envelope, readEnvelopes, type Envelope } from '../envd/helpers.js';
import { removeOnExit, startSocketEnvd, type SocketEnvd } from './proxy-envd.js';

/** A test socket as the proxy reaches sockets: on the filesystem of its directory. */
const guarded = (path: string) => ({ path, device: statSync(join(path, '..')).dev });

type Json = Record<string, unknown>;

const ONE = 'proxyone0000000000aa';
const TWO = 'proxytwo0000000000bb';
const VICTIM = 'proxyvictim000000000';
const FAKE = 'proxyfake0000000000c';
const GHOST = 'proxyghost000000000d'; // routed to a socket nobody listens on
const TOKEN_ONE = randomBytes(16).toString('hex');
const TOKEN_TWO = randomBytes(16).toString('hex');

/** Every test is bounded: a hang fails the test instead of blocking a whole suite run. */
const T = { timeout: 60_000 };

const notFound = (id: string) => `{"sandboxId":"${id}","message":"The sandbox was not found","code":502}`;

// --- raw Connect helpers ---------------------------------------------------------------------

function stdoutOf(e: Envelope): string {
  const data = (e.json.event as { data?: { stdout?: string } } | undefined)?.data;
  return data?.stdout ? Buffer.from(data.stdout, 'base64').toString() : '';
}

// --- the harness -------------------------------------------------------------------------------

describe('data-plane proxy', () => {
  let one: SocketEnvd;
  let two: SocketEnvd;
  let fakeDir: string;
  let fake: Server;
  let fakeConnections = 0;
  const fakeSockets: Socket[] = [];
  let server: Server;
  let proxy: DataPlaneProxy;
  let base: string;
  let port: number;
  const routes = new Map<string, SandboxRoute>();

  const resolver: RouteResolver = {
    async route(id) {
      return routes.get(id);
    },
    *signedCandidates() {
      for (const r of routes.values()) if (r.accessToken) yield { sandboxId: r.sandboxId, accessToken: r.accessToken };
    },
  };

  /** A raw request to the proxy (any Host header, any body), collected. */
  function raw(
    path: string,
    opts: { method?: string; headers?: Record<string, string | string[]>; body?: string | Buffer } = {},
  ): Promise<{ status: number; headers: IncomingMessage['headers']; rawHeaders: string[]; body: Buffer }> {
    return new Promise((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port, path, method: opts.method ?? 'GET', headers: opts.headers, agent: false }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (d: Buffer) => chunks.push(d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, rawHeaders: res.rawHeaders, body: Buffer.concat(chunks) }));
        res.on('error', reject);
      });
      req.on('error', reject);
      req.end(opts.body);
    });
  }

  const sdkFor = (sandboxId: string, token: string): Sandbox => {
    const Ctor = Sandbox as unknown as new (o: Record<string, unknown>) => Sandbox;
    return new Ctor({ sandboxId, envdVersion: '0.6.13', envdAccessToken: token, sandboxUrl: base, apiKey: 'e2b_' + '0'.repeat(40) });
  };

  before(async () => {
    [one, two] = await Promise.all([
      startSocketEnvd({ accessToken: TOKEN_ONE, envVars: { WHO: 'one' } }),
      startSocketEnvd({ accessToken: TOKEN_TWO, envVars: { WHO: 'two' } }),
    ]);
    routes.set(ONE, { sandboxId: ONE, socket: guarded(one.socket), accessToken: TOKEN_ONE });
    routes.set(TWO, { sandboxId: TWO, socket: guarded(two.socket), accessToken: TOKEN_TWO });
    routes.set(GHOST, { sandboxId: GHOST, socket: guarded(join(one.dir, 'nobody-listens.sock')), accessToken: 'ghost-token' });

    // A fake upstream on a unix socket: echoes what it received, answers upgrades, breaks on demand.
    fakeDir = mkdtempSync(join(tmpdir(), 'proxy-fake-'));
    removeOnExit(fakeDir);
    fake = createServer((req, res) => {
      const url = req.url ?? '/';
      if (url === '/broken') {
        res.writeHead(200, { 'Content-Type': 'application/octet-stream' });
        res.write('partial');
        setImmediate(() => res.socket?.destroy());
        return;
      }
      const chunks: Buffer[] = [];
      req.on('data', (d: Buffer) => chunks.push(d));
      req.on('end', () => {
        res.writeHead(200, {
          'Content-Type': 'application/json',
          Connection: 'keep-alive, X-Resp-Hop',
          'X-Resp-Hop': 'dropped',
          'X-Resp-Keep': 'kept',
        });
        res.end(JSON.stringify({ url, method: req.method, rawHeaders: req.rawHeaders, body: Buffer.concat(chunks).toString() }));
      });
    });
    fake.on('connection', (s: Socket) => {
      fakeConnections++;
      fakeSockets.push(s);
    });
    fake.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
      socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: ${req.headers.upgrade}\r\nConnection: Upgrade\r\n\r\n`);
      if (head.length) socket.write(head);
      socket.pipe(socket); // echo
    });
    await new Promise<void>((resolve) => fake.listen(join(fakeDir, 'fake.sock'), resolve));
    routes.set(FAKE, { sandboxId: FAKE, socket: guarded(join(fakeDir, 'fake.sock')) });

    proxy = new DataPlaneProxy(resolver, { domain: 'cubebox.test' });
    server = createServer({ requestTimeout: 0 }, (req, res) => {
      if (proxy.matches(req)) proxy.handle(req, res);
      else res.writeHead(404, { 'Content-Type': 'text/plain' }).end('control plane');
    });
    server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
      if (proxy.matches(req)) proxy.handleUpgrade(req, socket, head);
      else socket.destroy();
    });
    await new Promise<void>((resolve) => server.listen({ host: '127.0.0.1', port: 0 }, resolve));
    port = (server.address() as AddressInfo).port;
    base = `http://127.0.0.1:${port}`;
  });

  after(async () => {
    proxy?.close();
    if (server) {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
    if (fake) {
      for (const s of fakeSockets) s.destroy();
      await new Promise<void>((resolve) => fake.close(() => resolve()));
    }
    if (fakeDir) rmSync(fakeDir, { recursive: true, force: true });
    await Promise.all([one?.stop(), two?.stop()]);
  });

  // --- classification ---

  test('matches() tells data-plane requests from control-plane ones', T, async () => {
    const cp = await raw('/v2/sandboxes');
    assert.equal(cp.status, 404);
    assert.equal(cp.body.toString(), 'control plane');
    const plainFiles = await raw('/files?path=a.txt');
    assert.equal(plainFiles.body.toString(), 'control plane');
    const ipHost = await raw('/health', { headers: { Host: '10-0-0-1.nip.io' } });
    assert.equal(ipHost.body.toString(), 'control plane');
  });

  // --- routing ---

  test('E2b-Sandbox-Id routes to that sandbox, forwarding X-Access-Token', T, async () => {
    for (const [id, token, who] of [
      [ONE, TOKEN_ONE, 'one'],
      [TWO, TOKEN_TWO, 'two'],
    ] as const) {
      const r = await fetch(`${base}/envs`, { headers: { 'E2b-Sandbox-Id': id, 'E2b-Sandbox-Port': '49983', 'X-Access-Token': token } });
      assert.equal(r.status, 200);
      assert.equal(((await r.json()) as Json).WHO, who);
    }
    const health = await fetch(`${base}/health`, { headers: { 'E2b-Sandbox-Id': ONE } });
    assert.equal(health.status, 204);
    // envd's own answers pass through: wrong token.
    const denied = await fetch(`${base}/envs`, { headers: { 'E2b-Sandbox-Id': ONE, 'X-Access-Token': TOKEN_TWO } });
    assert.equal(denied.status, 401);
    assert.equal(((await denied.json()) as Json).code, 401);
    // <id>-<clientID>: the suffix is dropped.
    const suffixed = await fetch(`${base}/envs`, { headers: { 'E2b-Sandbox-Id': `${TWO}-client1`, 'X-Access-Token': TOKEN_TWO } });
    assert.equal(((await suffixed.json()) as Json).WHO, 'two');
  });

  test('Host <port>-<id>.<any domain> routes too (with or without a client id, any listener port)', T, async () => {
    const a = await raw('/envs', { headers: { Host: `49983-${TWO}.cubebox.test:${port}`, 'X-Access-Token': TOKEN_TWO } });
    assert.equal(a.status, 200);
    assert.equal((JSON.parse(a.body.toString()) as Json).WHO, 'two');
    const b = await raw('/envs', { headers: { Host: `49983-${ONE}-abcdef.some.other.domain`, 'X-Access-Token': TOKEN_ONE } });
    assert.equal((JSON.parse(b.body.toString()) as Json).WHO, 'one');
    const c = await raw('/health', { headers: { Host: `49983-${ONE}.localhost` } });
    assert.equal(c.status, 204);
  });

  // --- 502s ---

  test('unknown, paused and killed sandboxes: 502 with the exact JSON body', T, async () => {
    const check = async (r: { status: number; headers: IncomingMessage['headers']; body: Buffer }, id: string) => {
      assert.equal(r.status, 502);
      assert.equal(r.headers['content-type'], 'application/json');
      assert.equal(r.body.toString(), notFound(id));
    };
    await check(await raw('/health', { headers: { 'E2b-Sandbox-Id': 'nosuchsandbox1234567' } }), 'nosuchsandbox1234567');
    await check(await raw('/health', { headers: { Host: `49983-nosuchsandbox1234567.cubebox.test` } }), 'nosuchsandbox1234567');
    await check(await raw('/health', { headers: { 'E2b-Sandbox-Id': 'nosuch-clientid' } }), 'nosuch');
    // A request with a body gets the same answer.
    await check(
      await raw('/process.Process/List', { method: 'POST', headers: { 'E2b-Sandbox-Id': 'gone0000', 'Content-Type': 'application/json' }, body: '{}' }),
      'gone0000',
    );
    // A paused sandbox: the resolver has no route for it.
    const saved = routes.get(TWO) as SandboxRoute;
    routes.delete(TWO);
    try {
      await check(await raw('/health', { headers: { 'E2b-Sandbox-Id': TWO } }), TWO);
      const viaFetch = await fetch(`${base}/health`, { headers: { 'E2b-Sandbox-Id': TWO } });
      assert.equal(viaFetch.status, 502);
      assert.equal(await viaFetch.text(), notFound(TWO));
    } finally {
      routes.set(TWO, saved);
    }
    assert.equal((await fetch(`${base}/health`, { headers: { 'E2b-Sandbox-Id': TWO } })).status, 204);
  });

  test('envd unreachable (nothing on its socket): the same 502', T, async () => {
    const r = await raw('/health', { headers: { 'E2b-Sandbox-Id': GHOST } });
    assert.equal(r.status, 502);
    assert.equal(r.headers['content-type'], 'application/json');
    assert.equal(r.body.toString(), notFound(GHOST));
    const post = await raw('/files?path=x', { method: 'POST', headers: { 'E2b-Sandbox-Id': GHOST, 'Content-Type': 'application/octet-stream' }, body: 'data' });
    assert.equal(post.body.toString(), notFound(GHOST));
  });

  test('/init is refused through the data plane, however the path is spelled', T, async () => {
    for (const path of ['/init', '/init/', '//init', '/./init', '/x/../init', '/init?x=1']) {
      const r = await raw(path, {
        method: 'POST',
        headers: { 'E2b-Sandbox-Id': ONE, 'X-Access-Token': TOKEN_ONE, 'Content-Type': 'application/json' },
        body: JSON.stringify({ accessToken: 'stolen', envVars: { WHO: 'mallory' } }),
      });
      assert.equal(r.status, 403, path);
      assert.equal((JSON.parse(r.body.toString()) as Json).code, 403);
    }
    const envs = await fetch(`${base}/envs`, { headers: { 'E2b-Sandbox-Id': ONE, 'X-Access-Token': TOKEN_ONE } });
    assert.equal(((await envs.json()) as Json).WHO, 'one');
  });

  test('a port other than 49983: a 502 JSON naming the port', T, async () => {
    for (const r of [
      await raw('/', { headers: { 'E2b-Sandbox-Id': ONE, 'E2b-Sandbox-Port': '8080' } }),
      await raw('/', { headers: { Host: `8080-${ONE}.cubebox.test` } }),
    ]) {
      assert.equal(r.status, 502);
      assert.equal(r.headers['content-type'], 'application/json');
      const body = JSON.parse(r.body.toString()) as Json;
      assert.deepEqual(Object.keys(body), ['sandboxId', 'message', 'code']);
      assert.equal(body.sandboxId, ONE);
      assert.equal(body.code, 502);
      assert.match(body.message as string, /\b8080\b/);
    }
    // Unknown sandbox on another port: not found comes first.
    const unknown = await raw('/', { headers: { 'E2b-Sandbox-Id': 'nosuch', 'E2b-Sandbox-Port': '8080' } });
    assert.equal(unknown.body.toString(), notFound('nosuch'));
  });

  // --- headers ---

  test('hop-by-hop headers are dropped both ways, everything else is forwarded', T, async () => {
    const r = await raw('/echo?q=1', {
      method: 'POST',
      headers: {
        'E2b-Sandbox-Id': FAKE,
        Connection: 'keep-alive, X-Hop',
        'X-Hop': 'dropped',
        'Keep-Alive': 'timeout=5',
        'Proxy-Authorization': 'Basic eDp5',
        TE: 'trailers',
        Authorization: 'Basic dXNlcjo=',
        'X-Access-Token': 'tok',
        'Connect-Protocol-Version': '1',
        'Connect-Timeout-Ms': '60000',
        'Keepalive-Ping-Interval': '50',
        'Accept-Encoding': 'gzip',
        'Content-Type': 'application/json',
      },
      body: '{"a":1}',
    });
    assert.equal(r.status, 200);
    const seen = JSON.parse(r.body.toString()) as { url: string; method: string; rawHeaders: string[]; body: string };
    assert.equal(seen.url, '/echo?q=1');
    assert.equal(seen.method, 'POST');
    assert.equal(seen.body, '{"a":1}');
    const h = new Map<string, string>();
    for (let i = 0; i < seen.rawHeaders.length; i += 2) h.set((seen.rawHeaders[i] as string).toLowerCase(), seen.rawHeaders[i + 1] as string);
    for (const k of ['x-hop', 'keep-alive', 'proxy-authorization', 'te']) assert.equal(h.has(k), false, k);
    assert.equal(h.get('authorization'), 'Basic dXNlcjo=');
    assert.equal(h.get('x-access-token'), 'tok');
    assert.equal(h.get('connect-protocol-version'), '1');
    assert.equal(h.get('connect-timeout-ms'), '60000');
    assert.equal(h.get('keepalive-ping-interval'), '50');
    assert.equal(h.get('accept-encoding'), 'gzip');
    assert.equal(h.get('e2b-sandbox-id'), FAKE);
    assert.equal(h.get('content-length'), '7');
    assert.equal(r.headers['x-resp-hop'], undefined);
    assert.equal(r.headers['x-resp-keep'], 'kept');
    assert.equal(r.headers['content-encoding'], undefined);
    assert.equal(r.rawHeaders.filter((x) => x.toLowerCase() === 'date').length, 1);
  });

  test('upstream connections are kept alive per sandbox', T, async () => {
    await fetch(`${base}/warm`, { headers: { 'E2b-Sandbox-Id': FAKE } }).then((r) => r.arrayBuffer());
    const before = fakeConnections;
    for (let i = 0; i < 20; i++) {
      const r = await fetch(`${base}/n${i}`, { headers: { 'E2b-Sandbox-Id': FAKE } });
      assert.equal(r.status, 200);
      await r.arrayBuffer();
    }
    assert.equal(fakeConnections, before);
  });

  test('a response broken by the sandbox reaches the client broken, not as a clean end', T, async () => {
    const r = await fetch(`${base}/broken`, { headers: { 'E2b-Sandbox-Id': FAKE } });
    assert.equal(r.status, 200);
    await assert.rejects(r.arrayBuffer());
  });

  test('CORS preflight of a data-plane request', T, async () => {
    const r = await raw('/process.Process/Start', {
      method: 'OPTIONS',
      headers: {
        Origin: 'http://app.test',
        'Access-Control-Request-Method': 'POST',
        'Access-Control-Request-Headers': 'content-type,e2b-sandbox-id,e2b-sandbox-port,x-access-token',
      },
    });
    assert.equal(r.status, 204);
    assert.equal(r.headers['access-control-allow-origin'], '*');
    assert.match(String(r.headers['access-control-allow-headers']), /e2b-sandbox-id/);
  });

  // --- the SDK through the proxy ---

  test('the e2b SDK runs commands and moves files through the proxy', T, async () => {
    const sbx = sdkFor(ONE, TOKEN_ONE);
    const r = await sbx.commands.run('echo hello; id -u; echo $WHO');
    assert.equal(r.stdout, `hello\n${one.uid}\none\n`);
    await sbx.files.write('notes/a.txt', 'through the proxy');
    assert.equal(await sbx.files.read('notes/a.txt'), 'through the proxy');
    const list = await sbx.files.list('notes');
    assert.deepEqual(
      list.map((e) => e.name),
      ['a.txt'],
    );
    assert.equal(await sbx.isRunning(), true);
    const other = sdkFor(TWO, TOKEN_TWO);
    assert.equal((await other.commands.run('echo $WHO')).stdout, 'two\n');
    await assert.rejects(other.files.read('notes/a.txt'));
  });

  test('many SDK clients at once, on both sandboxes', T, async () => {
    const a = sdkFor(ONE, TOKEN_ONE);
    const b = sdkFor(TWO, TOKEN_TWO);
    const runs = Array.from({ length: 24 }, (_, i) => (i % 2 ? b : a).commands.run(`echo ${i} $WHO`));
    const out = (await Promise.all(runs)).map((r) => r.stdout);
    assert.deepEqual(
      out,
      Array.from({ length: 24 }, (_, i) => `${i} ${i % 2 ? 'two' : 'one'}\n`),
    );
  });

  test('server streams arrive chunk by chunk (the command waits for what the client saw)', T, async () => {
    const sbx = sdkFor(ONE, TOKEN_ONE);
    const gate = join(one.home, 'gate');
    const seen: string[] = [];
    // The command prints "first", then waits until the test has received it. A buffering proxy
    // would deliver nothing before the end, and the command would time out.
    const r = await sbx.commands.run(`echo first; while [ ! -e ${gate} ]; do sleep 0.02; done; echo second`, {
      timeoutMs: 60_000,
      onStdout: (d) => {
        seen.push(d);
        if (d.includes('first') && !existsSync(gate)) writeFileSync(gate, '');
      },
    });
    assert.equal(r.exitCode, 0);
    assert.equal(seen.join(''), 'first\nsecond\n');
    assert.ok(seen[0]?.startsWith('first'));
  });

  test('request bodies stream too: client-streamed stdin reaches the process before the request ends', T, async () => {
    const start = await fetch(`${base}/process.Process/Start`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/connect+json', 'Connect-Protocol-Version': '1', 'E2b-Sandbox-Id': ONE, 'X-Access-Token': TOKEN_ONE },
      body: new Uint8Array(envelope({ process: { cmd: '/bin/cat' }, stdin: true })),
    });
    assert.equal(start.status, 200);
    const events = readEnvelopes(start.body as ReadableStream<Uint8Array>);
    const pid = ((((await events.next()).value as Envelope).json.event as Json).start as { pid: number }).pid;
    assert.ok(pid > 0);

    // StreamInput over a chunked request that stays open while the output is awaited.
    const input = request({
      host: '127.0.0.1',
      port,
      method: 'POST',
      path: '/process.Process/StreamInput',
      agent: false,
      headers: {
        'Content-Type': 'application/connect+json',
        'Connect-Protocol-Version': '1',
        'E2b-Sandbox-Id': ONE,
        'X-Access-Token': TOKEN_ONE,
        'Transfer-Encoding': 'chunked',
      },
    });
    const reply = new Promise<{ status: number; body: Buffer }>((resolve, reject) => {
      input.on('response', (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (d: Buffer) => chunks.push(d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) }));
      });
      input.on('error', reject);
    });
    input.write(envelope({ start: { process: { pid } } }));
    input.write(envelope({ data: { input: { stdin: Buffer.from('streamed\n').toString('base64') } } }));
    let out = '';
    while (!out.includes('streamed\n')) {
      const n = await events.next();
      assert.equal(n.done, false);
      out += stdoutOf(n.value as Envelope);
    }
    assert.equal(out, 'streamed\n'); // seen while the StreamInput request is still open
    input.end();
    const done = await reply;
    assert.equal(done.status, 200);
    assert.equal(done.body.readUInt8(done.body.length - 7), 2); // ends with the end-stream envelope {}
    assert.equal(done.body.subarray(-2).toString(), '{}');
    const close = await fetch(`${base}/process.Process/CloseStdin`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'Connect-Protocol-Version': '1', 'E2b-Sandbox-Id': ONE, 'X-Access-Token': TOKEN_ONE },
      body: JSON.stringify({ process: { pid } }),
    });
    assert.equal(close.status, 200);
    await close.arrayBuffer();
    let last: Envelope | undefined;
    for (let n = await events.next(); !n.done; n = await events.next()) last = n.value;
    assert.equal(last?.flags, 2);
  });

  test('a chunked upload of many pieces arrives whole', T, async () => {
    const parts = Array.from({ length: 48 }, () => randomBytes(64 * 1024 + 17));
    const want = createHash('sha256').update(Buffer.concat(parts)).digest('hex');
    const status = await new Promise<number>((resolve, reject) => {
      const req = request(
        {
          host: '127.0.0.1',
          port,
          method: 'POST',
          path: '/files?path=chunked.bin',
          agent: false,
          headers: { 'E2b-Sandbox-Id': ONE, 'X-Access-Token': TOKEN_ONE, 'Content-Type': 'application/octet-stream', 'Transfer-Encoding': 'chunked' },
        },
        (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode ?? 0));
        },
      );
      req.on('error', reject);
      const write = (i: number): void => {
        if (i === parts.length) return void req.end();
        if (req.write(parts[i])) setImmediate(() => write(i + 1));
        else req.once('drain', () => write(i + 1));
      };
      write(0);
    });
    assert.equal(status, 200);
    assert.equal(
      createHash('sha256')
        .update(readFileSync(join(one.home, 'chunked.bin')))
        .digest('hex'),
      want,
    );
  });

  test('a large download streams through whole, and Range passes through', T, async () => {
    const data = randomBytes(24 * 1024 * 1024);
    const file = join(one.home, 'big.bin');
    writeFileSync(file, data);
    chmodSync(file, 0o644);
    // node:http as the client (fetch's body reading is the slow part of such a download).
    const got = await new Promise<{ status: number; n: number; hash: string }>((resolve, reject) => {
      const req = request(
        { host: '127.0.0.1', port, path: '/files?path=big.bin', agent: false, headers: { 'E2b-Sandbox-Id': ONE, 'X-Access-Token': TOKEN_ONE } },
        (res) => {
          const hash = createHash('sha256');
          let n = 0;
          res.on('data', (c: Buffer) => {
            hash.update(c);
            n += c.length;
          });
          res.on('end', () => resolve({ status: res.statusCode ?? 0, n, hash: hash.digest('hex') }));
          res.on('error', reject);
        },
      );
      req.on('error', reject);
      req.end();
    });
    assert.equal(got.status, 200);
    assert.equal(got.n, data.length);
    assert.equal(got.hash, createHash('sha256').update(data).digest('hex'));
    const part = await fetch(`${base}/files?path=big.bin`, { headers: { 'E2b-Sandbox-Id': ONE, 'X-Access-Token': TOKEN_ONE, Range: 'bytes=10-19' } });
    assert.equal(part.status, 206);
    assert.deepEqual(Buffer.from(await part.arrayBuffer()), data.subarray(10, 20));
  });

  // --- signed /files without routing headers ---

  test('signed download and upload URLs work with plain fetch and no routing header', T, async () => {
    const a = sdkFor(ONE, TOKEN_ONE);
    const b = sdkFor(TWO, TOKEN_TWO);
    await a.files.write('signed.txt', 'content of one');
    await b.files.write('signed.txt', 'content of two');

    const urlA = await a.downloadUrl('signed.txt');
    assert.ok(urlA.startsWith(`${base}/files?`), urlA);
    assert.equal(await (await fetch(urlA)).text(), 'content of one');
    assert.equal(await (await fetch(await b.downloadUrl('signed.txt'))).text(), 'content of two');
    assert.equal(await (await fetch(await a.downloadUrl('signed.txt', { user: 'user', useSignatureExpiration: 600 }))).text(), 'content of one');

    const up = await b.uploadUrl('uploaded/via-url.txt');
    const form = new FormData();
    form.append('file', new Blob(['uploaded through a signed URL']), 'via-url.txt');
    const res = await fetch(up, { method: 'POST', body: form });
    assert.equal(res.status, 200);
    const entries = (await res.json()) as { path: string }[];
    assert.match(entries[0]?.path ?? '', /uploaded\/via-url\.txt$/);
    assert.equal(await b.files.read('uploaded/via-url.txt'), 'uploaded through a signed URL');
    assert.equal(existsSync(join(one.home, 'uploaded')), false);
    // A read signature does not allow a write.
    const asWrite = await fetch(urlA, { method: 'POST', body: form });
    assert.equal(asWrite.status, 401);
    await asWrite.arrayBuffer();
  });

  test('a wrong signature is refused; an expired one reaches envd, which says so', T, async () => {
    const good = new URL(await sdkFor(ONE, TOKEN_ONE).downloadUrl('signed.txt'));
    const sig = good.searchParams.get('signature') as string;
    good.searchParams.set('signature', sig.slice(0, -2) + (sig.endsWith('AA') ? 'BB' : 'AA'));
    const wrong = await fetch(good);
    assert.equal(wrong.status, 401);
    assert.equal(wrong.headers.get('content-type'), 'application/json');
    assert.equal(((await wrong.json()) as Json).code, 401);

    const exp = Math.floor(Date.now() / 1000) - 60;
    const expired = new URL(`${base}/files`);
    expired.searchParams.set('path', 'signed.txt');
    expired.searchParams.set('signature', fileSignature('signed.txt', 'read', undefined, TOKEN_ONE, exp));
    expired.searchParams.set('signature_expiration', String(exp));
    const r = await fetch(expired);
    assert.equal(r.status, 401);
    assert.deepEqual(await r.json(), { code: 401, message: 'signature is already expired' });
  });

  test('the contract signature test vector', T, () => {
    assert.equal(fileSignature('hello.txt', 'read', 'user', '0tQG31xiMp0IOQfaz9dcwi72L1CPo8e0'), 'v1_gUtH/s9YCJWgCizjfUxuWfhFE4QSydOWEIIvfLwDr6E');
  });

  // --- cut() ---

  test('cut() destroys an open server stream mid-flight: no end-stream envelope', T, async () => {
    const res = await fetch(`${base}/process.Process/Start`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/connect+json', 'Connect-Protocol-Version': '1', 'E2b-Sandbox-Id': TWO, 'X-Access-Token': TOKEN_TWO },
      body: new Uint8Array(envelope({ process: { cmd: '/bin/bash', args: ['-c', 'echo tick; exec sleep 300'] } })),
    });
    assert.equal(res.status, 200);
    const events = readEnvelopes(res.body as ReadableStream<Uint8Array>);
    let out = '';
    let pid = 0;
    const got: Envelope[] = [];
    while (!out.includes('tick')) {
      const n = await events.next();
      assert.equal(n.done, false);
      got.push(n.value as Envelope);
      pid ||= (((n.value as Envelope).json.event as Json | undefined)?.start as { pid?: number } | undefined)?.pid ?? 0;
      out += stdoutOf(n.value as Envelope);
    }
    assert.equal(proxy.stats(TWO)?.open, 1);
    proxy.cut(TWO);
    await assert.rejects(async () => {
      for (let n = await events.next(); !n.done; n = await events.next()) got.push(n.value);
    });
    assert.equal(
      got.some((e) => e.flags & 2),
      false,
    );
    assert.equal(proxy.stats(TWO)?.open, 0);
    // The sandbox is still routable (cut is not a kill): stop the sleeper.
    const kill = await fetch(`${base}/process.Process/SendSignal`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'Connect-Protocol-Version': '1', 'E2b-Sandbox-Id': TWO, 'X-Access-Token': TOKEN_TWO },
      body: JSON.stringify({ process: { pid }, signal: 'SIGNAL_SIGKILL' }),
    });
    assert.equal(kill.status, 200);
    await kill.arrayBuffer();
  });

  test('a command in flight when its sandbox is killed: the SDK reports the kill', T, async () => {
    routes.set(VICTIM, { sandboxId: VICTIM, socket: guarded(two.socket), accessToken: TOKEN_TWO });
    const sbx = sdkFor(VICTIM, TOKEN_TWO);
    let killed = false;
    const run = sbx.commands.run('echo started; exec sleep 300', {
      timeoutMs: 120_000,
      onStdout: (d) => {
        if (d.includes('started') && !killed) {
          killed = true;
          routes.delete(VICTIM); // the manager forgets the route, then cuts the streams
          proxy.cut(VICTIM, 'killed');
        }
      },
    });
    await assert.rejects(run, (e: unknown) => {
      assert.ok(e instanceof TimeoutError, String(e));
      assert.match((e as Error).message, /killed or reached its end of life/);
      return true;
    });
    assert.equal(await sbx.isRunning(), false);
    // Clean up the sleeper through the socket owner's own route.
    const list = await fetch(`${base}/process.Process/List`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'Connect-Protocol-Version': '1', 'E2b-Sandbox-Id': TWO, 'X-Access-Token': TOKEN_TWO },
      body: '{}',
    });
    const procs = ((await list.json()) as { processes: { pid: number; config: { args?: string[] } }[] }).processes;
    for (const p of procs.filter((p) => p.config.args?.some((a) => a.includes('sleep 300')))) {
      const k = await fetch(`${base}/process.Process/SendSignal`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'Connect-Protocol-Version': '1', 'E2b-Sandbox-Id': TWO, 'X-Access-Token': TOKEN_TWO },
        body: JSON.stringify({ process: { pid: p.pid }, signal: 'SIGNAL_SIGKILL' }),
      });
      await k.arrayBuffer();
    }
  });

  // --- upgrades ---

  for (const reason of ['paused'] as const) {
    test(`a command cut off because its sandbox was ${reason}: the SDK says so, not "fetch failed"`, T, async () => {
      const sbx = sdkFor(TWO, TOKEN_TWO);
      let cut = false;
      const run = sbx.commands.run(`echo started; exec sleep 301`, {
        timeoutMs: 120_000,
        onStdout: (d) => {
          if (d.includes('started') && !cut) {
            cut = true;
            proxy.cut(TWO, reason);
          }
        },
      });
      await assert.rejects(run, (e: unknown) => {
        assert.match((e as Error).message, new RegExp(`the sandbox was ${reason}`));
        return true;
      });
      // a unary call cut before its answer gets the reason too
      const unary = await fetch(`${base}/process.Process/List`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'Connect-Protocol-Version': '1', 'E2b-Sandbox-Id': TWO, 'X-Access-Token': TOKEN_TWO },
        body: '{}',
      });
      const procs = ((await unary.json()) as { processes: { pid: number; config: { args?: string[] } }[] }).processes;
      for (const p of procs.filter((p) => p.config.args?.some((a) => a.includes('sleep 301')))) {
        const k = await fetch(`${base}/process.Process/SendSignal`, {
          method: 'POST',
          headers: { 'Content-Type': 'application/json', 'Connect-Protocol-Version': '1', 'E2b-Sandbox-Id': TWO, 'X-Access-Token': TOKEN_TWO },
          body: JSON.stringify({ process: { pid: p.pid }, signal: 'SIGNAL_SIGKILL' }),
        });
        await k.arrayBuffer();
      }
    });
  }

  test('an Upgrade request becomes a byte pipe; cut() closes it', T, async () => {
    const sock = connect({ host: '127.0.0.1', port });
    await new Promise<void>((resolve, reject) => {
      sock.once('connect', resolve);
      sock.once('error', reject);
    });
    let received = '';
    const waitFor = (s: string) =>
      new Promise<void>((resolve, reject) => {
        const check = () => {
          if (received.includes(s)) {
            sock.off('data', onData);
            resolve();
          }
        };
        const onData = (d: Buffer) => {
          received += d.toString();
          check();
        };
        sock.on('data', onData);
        sock.once('close', () => (received.includes(s) ? resolve() : reject(new Error(`closed before '${s}': ${received}`))));
        check();
      });
    sock.write(`GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nE2b-Sandbox-Id: ${FAKE}\r\n\r\n`);
    await waitFor('101 Switching Protocols');
    sock.write('ping-pong');
    await waitFor('ping-pong');
    const closed = new Promise<void>((resolve) => sock.once('close', () => resolve()));
    proxy.cut(FAKE);
    await closed;

    const bad = connect({ host: '127.0.0.1', port });
    let answer = '';
    bad.on('data', (d: Buffer) => (answer += d.toString()));
    const badClosed = new Promise<void>((resolve) => bad.once('close', () => resolve()));
    bad.write(`GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nE2b-Sandbox-Id: nosuchws\r\n\r\n`);
    await badClosed;
    assert.match(answer, /^HTTP\/1\.1 502 /);
    assert.ok(answer.endsWith(notFound('nosuchws')), answer);
  });

  test('traffic is counted per sandbox', T, () => {
    const s = proxy.stats(ONE);
    assert.ok(s && s.requests > 5);
    assert.ok(s.bytesOut > 24 * 1024 * 1024);
    assert.ok(s.bytesIn > 48 * 64 * 1024);
    assert.equal(s.open, 0);
    assert.equal(proxy.stats('nosuchsandbox1234567'), undefined); // unknown ids leave nothing behind
    assert.ok(proxy.stats().has(TWO));
  });
});
