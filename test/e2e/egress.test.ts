// Egress rules through the published SDK against a real `cubebox serve`: a secret's value is
// added on the host to a sandbox's HTTPS requests for a domain with rules (curl, Python, Node),
// HTTP/2 too, rules change live, an exact domain beats a wildcard, a domain without rules keeps the
// sandbox's own TLS, and bad rules are a 400 naming the field. A sandbox with egressProxy sends
// its TCP through the fake internet's SOCKS5 proxy, which checks the credentials. Measures (never asserts) the
// proxy's throughput and latency against a direct connection.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { destroyInstance, assertNoSandboxLeaks } from '../helpers/instance.js';
import { openPaths } from '../../src/config.js';
import { SANDBOX_NODE } from '../../src/runtime/support.js';
import { API_ADDR, NET, OTHER_ADDR, startFakeHttps, type FakeHttps, type Seen } from '../helpers/fake-https.js';
import { sdkService, startService, type E2B, type Service } from '../helpers/service.js';

let e2b: E2B;
let svc: Service;
let dataDir: string;
let inet: FakeHttps;
const created: string[] = [];
type Sbx = Awaited<ReturnType<E2B['Sandbox']['create']>>;
const SECRET = `tok-${Math.random().toString(36).slice(2)}-value`;
const bearer = { transform: { headers: { Authorization: 'Bearer ${e2b.secrets.tok}' } } };

async function newSandbox(opts: Parameters<E2B['Sandbox']['create']>[1] = {}): Promise<Sbx> {
  const sbx = await e2b.Sandbox.create('base', opts);
  created.push(sbx.sandboxId);
  return sbx;
}

async function sh(sbx: Sbx, cmd: string): Promise<string> {
  const r = await sbx.commands.run(`${cmd}\necho " rc=$?"`, { timeoutMs: 60_000 });
  return r.stdout.trim();
}

/** What the server last saw for a request whose URL holds `mark`. */
function seenFor(mark: string): Seen | undefined {
  return [...inet.seen].reverse().find((s) => s.url.includes(mark));
}

const serviceEnv = () => ({
  CUBEBOX_DNS_UPSTREAM: API_ADDR,
  CUBEBOX_POOL: 'base=1',
  CUBEBOX_ALLOW_PRIVATE: `${NET}.0/24`,
  CUBEBOX_EGRESS_CA: inet.caFile,
});

describe('egress rules and the egress proxy', { timeout: 600_000 }, () => {
  before(async () => {
    inet = await startFakeHttps();
    ({ svc, dataDir, e2b } = await sdkService(serviceEnv()));
    await e2b.Secret.create('tok', SECRET);
  });

  after(async () => {
    for (const id of created) await e2b.Sandbox.kill(id).catch(() => undefined);
    await svc.stop();
    await destroyInstance(undefined, dataDir);
    await inet.close();
  });

  it('adds the secret to HTTPS requests of curl, Python and Node; the sandbox sees only the placeholder', async () => {
    const sbx = await newSandbox({ network: { rules: { 'api.test': [bearer] } } });
    const info = await sbx.getInfo();
    assert.deepEqual(info.network?.rules, { 'api.test': [bearer] }, 'getInfo shows the placeholder');
    assert.match(await sh(sbx, 'curl -sS --max-time 10 https://api.test/curl 2>&1'), / rc=0$/);
    assert.equal(seenFor('/curl')?.headers.authorization, `Bearer ${SECRET}`);
    assert.equal(seenFor('/curl')?.sni, 'api.test');
    const py = await sh(sbx, `python3 -c "import urllib.request;print(urllib.request.urlopen('https://api.test/python').status)" 2>&1`);
    assert.match(py, /^200\s+rc=0$/, py);
    assert.equal(seenFor('/python')?.headers.authorization, `Bearer ${SECRET}`);
    // Node's own fetch (undici), trusting the CA through NODE_EXTRA_CA_CERTS: the base template has no node, so the agent's Node
    const js = await sh(sbx, `${SANDBOX_NODE} -e "fetch('https://api.test/node').then(r=>console.log(r.status))" 2>&1`);
    assert.match(js, /^200\s+rc=0$/, js);
    assert.equal(seenFor('/node')?.headers.authorization, `Bearer ${SECRET}`);
    // the sandbox still manages its trust store: regenerating it keeps the CA
    assert.match(await sh(sbx, 'sudo update-ca-certificates 2>&1 | tail -1'), /rc=0$/);
    assert.match(await sh(sbx, 'curl -sS --max-time 10 https://api.test/regenerated 2>&1'), / rc=0$/);
    // a request body streams through (1 MiB up)
    const up = await sh(sbx, 'head -c 1048576 /dev/zero | curl -sS --max-time 20 -X POST --data-binary @- https://api.test/upload 2>&1');
    assert.match(up, /"bodyBytes":1048576/);
  });

  it('a WebSocket upgrade through the proxy carries the headers and then bytes both ways', async () => {
    const sbx = await newSandbox({ network: { rules: { 'api.test': [bearer] } } });
    await sbx.files.write(
      '/tmp/ws.py',
      [
        'import socket, ssl',
        "c = ssl.create_default_context().wrap_socket(socket.create_connection(('api.test', 443)), server_hostname='api.test')",
        "c.sendall(b'GET /ws HTTP/1.1\\r\\nHost: api.test\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\nSec-WebSocket-Version: 13\\r\\n\\r\\n')",
        "buf = b''",
        "while b'\\r\\n\\r\\n' not in buf: buf += c.recv(4096)",
        "head, _, rest = buf.partition(b'\\r\\n\\r\\n')",
        "c.sendall(b'hello-through')",
        'while len(rest) < 13: rest += c.recv(4096)',
        "print(head.split(b'\\r\\n')[0].decode(), rest.decode())",
      ].join('\n'),
    );
    const out = await sh(sbx, 'timeout 20 python3 /tmp/ws.py 2>&1');
    assert.match(out, /^HTTP\/1\.1 101 Switching Protocols hello-through\s+rc=0$/, out);
    assert.equal(seenFor('/ws')?.headers.authorization, `Bearer ${SECRET}`);
  });

  it('HTTP/2 from the sandbox on a name with rules: ended in h2, the secret added, the :authority checked', async () => {
    const sbx = await newSandbox({ network: { rules: { 'api.test': [bearer] } } });
    const v = (extra: string, path: string) =>
      `curl -sS --http2 --max-time 10 -o /dev/null -w '%{http_version} %{http_code} ' ${extra} https://api.test${path} 2>&1`;
    const out = await sh(sbx, `${v('', '/h2get')}; head -c 300000 /dev/zero | ${v('--data-binary @-', '/h2post')}; ${v("-H 'Host: shared.test'", '/h2wrong')}`);
    assert.match(out, /^2 200 2 200 2 421\s+rc=0$/, out);
    assert.equal(seenFor('/h2get')?.headers.authorization, `Bearer ${SECRET}`);
    assert.equal(seenFor('/h2post')?.headers.authorization, `Bearer ${SECRET}`);
    assert.equal(seenFor('/h2wrong'), undefined);
  });

  it('a domain without rules is not intercepted: the server gets the sandbox own TLS', async () => {
    const sbx = await newSandbox({ network: { rules: { 'api.test': [bearer] } } });
    await sbx.files.write('/tmp/test-ca.pem', inet.caPem);
    // only the fake internet's CA: the proxy's certificate would not verify
    const out = await sh(sbx, 'curl -sS --max-time 10 --cacert /tmp/test-ca.pem -H "Authorization: mine" https://plain.test/plain 2>&1');
    assert.match(out, / rc=0$/, out);
    assert.equal(seenFor('/plain')?.headers.authorization, 'mine');
    assert.equal(seenFor('/plain')?.sni, 'plain.test');
    // and with rules, the sandbox's certificate for api.test is the proxy's (not the test CA's)
    assert.doesNotMatch(await sh(sbx, 'curl -sS --max-time 10 --cacert /tmp/test-ca.pem https://api.test/pinned 2>&1'), / rc=0$/);
  });

  it('rules change live; an exact domain beats the longest wildcard', async () => {
    const sbx = await newSandbox();
    assert.match(await sh(sbx, 'curl -sS -k --max-time 10 https://api.test/before 2>&1'), / rc=0$/);
    assert.equal(seenFor('/before')?.headers.authorization, undefined);
    await sbx.updateNetwork({
      rules: {
        'api.test': [bearer],
        '*.wild.test': [{ transform: { headers: { 'X-Which': 'wild' } } }],
        'a.wild.test': [{ transform: { headers: { 'X-Which': 'exact' } } }],
      },
    });
    assert.match(await sh(sbx, 'curl -sS --max-time 10 https://api.test/after 2>&1'), / rc=0$/);
    assert.equal(seenFor('/after')?.headers.authorization, `Bearer ${SECRET}`);
    assert.match(await sh(sbx, 'curl -sS --max-time 10 https://a.wild.test/exact 2>&1; curl -sS --max-time 10 https://b.wild.test/wild 2>&1'), / rc=0$/);
    assert.equal(seenFor('/exact')?.headers['x-which'], 'exact');
    assert.equal(seenFor('/wild')?.headers['x-which'], 'wild');
    assert.deepEqual(Object.keys((await sbx.getInfo()).network?.rules ?? {}).sort(), ['*.wild.test', 'a.wild.test', 'api.test']);
  });

  it('egressProxy: the sandbox TCP goes through the upstream SOCKS5 proxy with its credentials, and fails closed', async () => {
    const sbx = await newSandbox({ network: { egressProxy: inet.socks } });
    const info = await sbx.getInfo();
    assert.deepEqual(info.network?.egressProxy, { address: inet.socks.address, username: inet.socks.username }, 'getInfo shows no password');
    await sbx.files.write('/tmp/test-ca.pem', inet.caPem);
    const n0 = inet.socksSeen.length;
    // the sandbox's own TLS (no rules) and plain TCP on another port, both through the proxy
    assert.match(await sh(sbx, 'curl -sS --max-time 10 --cacert /tmp/test-ca.pem https://plain.test/socks-tls 2>&1'), / rc=0$/);
    assert.match(await sh(sbx, 'curl -sS --max-time 10 http://plain.test:8080/socks-8080 2>&1'), / rc=0$/);
    const through = inet.socksSeen.slice(n0);
    assert.deepEqual(through.map((x) => x.dst).sort(), [`${OTHER_ADDR}:443`, `${OTHER_ADDR}:8080`], JSON.stringify(through));
    assert.ok(
      through.every((x) => x.ok && x.user === inet.socks.username),
      'the proxy got the credentials',
    );
    assert.equal(seenFor('/socks-tls')?.sni, 'plain.test');
    // wrong credentials, then an unreachable proxy: the connection fails, nothing goes direct
    await sbx.updateNetwork({ egressProxy: { ...inet.socks, password: 'wrong' } });
    assert.doesNotMatch(await sh(sbx, 'curl -sS --max-time 10 http://plain.test:8080/socks-wrong 2>&1'), / rc=0$/);
    assert.deepEqual(inet.socksSeen.at(-1), { ok: false, why: 'credentials', user: inet.socks.username });
    await sbx.updateNetwork({ egressProxy: { address: `${OTHER_ADDR}:1081` } });
    assert.doesNotMatch(await sh(sbx, 'curl -sS --max-time 10 http://plain.test:8080/socks-down 2>&1'), / rc=0$/);
    assert.equal(seenFor('/socks-wrong') ?? seenFor('/socks-down'), undefined, 'no direct fallback');
    // an update without it: direct again
    await sbx.updateNetwork({});
    const n1 = inet.socksSeen.length;
    assert.match(await sh(sbx, 'curl -sS --max-time 10 http://plain.test:8080/direct-again 2>&1'), / rc=0$/);
    assert.equal(inet.socksSeen.length, n1);
    assert.equal((await sbx.getInfo()).network?.egressProxy, undefined);
  });

  it('egressProxy with rules: the proxy adds the secret and reaches the destination through the upstream proxy', async () => {
    const sbx = await newSandbox({ network: { rules: { 'api.test': [bearer] }, egressProxy: inet.socks } });
    const n0 = inet.socksSeen.length;
    assert.match(await sh(sbx, 'curl -sS --max-time 10 https://api.test/socks-rules 2>&1'), / rc=0$/);
    assert.equal(seenFor('/socks-rules')?.headers.authorization, `Bearer ${SECRET}`);
    assert.deepEqual(
      inet.socksSeen.slice(n0).map((x) => [x.ok, x.dst]),
      [[true, `${API_ADDR}:443`]],
    );
  });

  it('refuses bad rules with a 400 naming the field', async () => {
    const bad = async (network: object, re: RegExp) => {
      const r = await fetch(`${svc.url}/sandboxes`, {
        method: 'POST',
        headers: { 'X-API-KEY': process.env.E2B_API_KEY!, 'content-type': 'application/json' },
        body: JSON.stringify({ templateID: 'base', network }),
      });
      const text = await r.text();
      assert.equal(r.status, 400, text);
      assert.match(text, re);
    };
    await bad({ rules: { '*': [] } }, /network\.rules: a bare/);
    await bad({ rules: { 'not a domain': [] } }, /network\.rules: .*not a domain/);
    await bad({ rules: { 'a.test': [{ transform: { headers: { 'X\r\nY': 'v' } } }] } }, /network\.rules\['a\.test'\]\[0\]\.transform\.headers/);
    await bad({ rules: { 'a.test': [{ transform: { headers: { X: 'a\r\nB: c' } } }] } }, /headers\['X'\] holds a control character/);
    await bad({ rules: { 'a.test': [{ transform: { headers: { X: '${e2b.secrets.nope}' } } }] } }, /\$\{e2b\.secrets\.nope\} names no secret/);
    await bad({ rules: Object.fromEntries(Array.from({ length: 1000 }, (_, i) => [`h${i}.test`, [bearer]])) }, /network\.rules has 1000 domains/);
    await bad({ egressProxy: { address: 'p.test' } }, /network\.egressProxy\.address: the port/);
    await bad({ egressProxy: { address: '127.0.0.1:1080' } }, /network\.egressProxy\.address: .*loopback/);
    await bad({ egressProxy: { address: 'p.test:1080', password: 'x' } }, /network\.egressProxy\.password/);
    const sbx = await newSandbox();
    await assert.rejects(sbx.updateNetwork({ rules: { 'a.test': [{ transform: { headers: { X: '${e2b.secrets.gone}' } } }] } }), /e2b\.secrets\.gone/);
    assert.equal((await sbx.getInfo()).network?.rules, undefined, 'a refused update changes nothing');
  });

  it('measures a 64 MiB HTTPS GET and small requests through the proxy and direct', async () => {
    const sbx = await newSandbox({ network: { rules: { 'api.test': [bearer] } } });
    await sbx.files.write('/tmp/test-ca.pem', inet.caPem);
    // direct calls trust a bundle of the same size as the proxied ones (the system bundle, which
    // holds the instance CA, plus the test CA): loading a bundle is most of a small request's time
    await sh(sbx, 'cat "$SSL_CERT_FILE" /tmp/test-ca.pem > /tmp/direct-bundle.pem');
    // curl's phases: name lookup, TCP connect, TLS handshake done, first byte, total (seconds)
    const phases = async (url: string, extra = '') =>
      (
        await sh(
          sbx,
          `curl -sS ${extra} --max-time 120 -o /dev/null -w "%{time_namelookup} %{time_connect} %{time_appconnect} %{time_starttransfer} %{time_total}" ${url}`,
        )
      )
        .split(' ')
        .slice(0, 5)
        .map(Number);
    const get = async (url: string, extra = '') => (await phases(url, extra))[4]!;
    const median = (t: number[]) => [...t].sort((a, b) => a - b)[t.length >> 1]!;
    const direct = '--cacert /tmp/direct-bundle.pem';
    // warm both paths (the proxy issues its certificate for the name on first use)
    await get('https://api.test/warm');
    await get('https://plain.test/warm', direct);
    const big: number[][] = [[], []];
    for (let i = 0; i < 3; i++) {
      big[0]!.push(await get(`https://api.test/big?n=${64 << 20}`));
      big[1]!.push(await get(`https://plain.test/big?n=${64 << 20}`, direct));
    }
    const small: number[][][] = [[], []];
    for (let i = 0; i < 11; i++) {
      small[0]!.push(await phases('https://api.test/s'));
      small[1]!.push(await phases('https://plain.test/s', direct));
    }
    const [bigProxied, bigDirect] = big.map(median) as [number, number];
    const mibs = (s: number) => (64 / s).toFixed(0);
    const ms = (runs: number[][], i: number) => (median(runs.map((r) => r[i]! - (i ? r[i - 1]! : 0))) * 1000).toFixed(1);
    const parts = (runs: number[][]) => `lookup ${ms(runs, 0)}, connect ${ms(runs, 1)}, tls ${ms(runs, 2)}, first byte ${ms(runs, 3)}, rest ${ms(runs, 4)}`;
    const [sp, sd] = small.map((runs) => median(runs.map((r) => r[4]!))) as [number, number];
    console.log(
      `egress proxy: 64 MiB GET median ${mibs(bigProxied)} MiB/s proxied vs ${mibs(bigDirect)} MiB/s direct (${(bigDirect / bigProxied).toFixed(2)}x direct; ` +
        `runs ${big.map((b) => b.map(mibs).join('/')).join(' vs ')}); small request median ${(sp * 1000).toFixed(1)} ms proxied vs ${(sd * 1000).toFixed(1)} ms direct ` +
        `(${(sp / sd).toFixed(2)}x); proxied ms: ${parts(small[0]!)}; direct ms: ${parts(small[1]!)}`,
    );
  });

  it('a running sandbox keeps its rules across a restart of the service (same CA, new proxy ports)', async () => {
    const sbx = await newSandbox({ network: { rules: { 'api.test': [bearer] } } });
    await svc.stop();
    svc = await startService(dataDir, { env: serviceEnv() });
    process.env.E2B_API_URL = process.env.E2B_SANDBOX_URL = svc.url;
    const again = await e2b.Sandbox.connect(sbx.sandboxId);
    assert.match(await sh(again, 'curl -sS --max-time 10 https://api.test/restarted 2>&1'), / rc=0$/);
    assert.equal(seenFor('/restarted')?.headers.authorization, `Bearer ${SECRET}`);
  });

  it('leaves no network slot behind', async () => {
    const ids = created.splice(0);
    for (const id of ids) await e2b.Sandbox.kill(id);
    const paths = openPaths(dataDir, false);
    for (const id of ids) assertNoSandboxLeaks(paths, id);
  });
});
