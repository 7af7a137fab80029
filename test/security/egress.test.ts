// The egress proxy under a hostile sandbox: a secret added to its requests on the host is
// nowhere the sandbox can read it (env, files, /proc) nor in any API response or the service's
// log; a name allowOut does not grant, on an address an allowed name shares, is refused by its
// SNI / Host and counted; the CA's key stays on the host; an upstream proxy's credentials are
// as invisible and its address cannot open the host's networks; nothing is left after a stop.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { openPaths } from '../../src/config.js';
import { assertNoSandboxLeaks, cli, destroyInstance } from '../helpers/instance.js';
import { API_ADDR, NET, startFakeHttps, type FakeHttps } from '../helpers/fake-https.js';
import { sdkService, type E2B, type Service } from '../helpers/service.js';

let e2b: E2B;
let svc: Service;
let dataDir: string;
let inet: FakeHttps;
let log = '';
let stopped = false;
const bodies: string[] = [];
const created: string[] = [];
type Sbx = Awaited<ReturnType<E2B['Sandbox']['create']>>;
const SECRET = `leak-${Math.random().toString(36).slice(2)}-canary`;
const bearer = { transform: { headers: { Authorization: 'Bearer ${e2b.secrets.tok}' } } };

async function sh(sbx: Sbx, cmd: string): Promise<string> {
  const r = await sbx.commands.run(`${cmd}\necho " rc=$?"`, { timeoutMs: 60_000 });
  bodies.push(r.stdout, r.stderr);
  return r.stdout.trim();
}

async function api(path: string): Promise<string> {
  const r = await fetch(`${svc.url}${path}`, { headers: { 'X-API-KEY': process.env.E2B_API_KEY! } });
  const text = await r.text();
  bodies.push(text);
  return text;
}

/** A value as a file for `grep -f`: it reaches grep reversed, through a pipe, never in any argv the search itself reads. */
const patOf = (v: string) => `<(echo ${[...v].reverse().join('')} | rev)`;

async function proxyCount(outcome: string): Promise<number> {
  const m = new RegExp(`cubebox_egress_proxy_connections_total\\{outcome="${outcome}"\\} (\\d+)`).exec(await api('/metrics'));
  return Number(m?.[1] ?? 0);
}

describe('the egress proxy against a hostile sandbox', { timeout: 600_000 }, () => {
  before(async () => {
    inet = await startFakeHttps();
    ({ svc, dataDir, e2b } = await sdkService({
      CUBEBOX_DNS_UPSTREAM: API_ADDR,
      CUBEBOX_POOL: '',
      CUBEBOX_ALLOW_PRIVATE: `${NET}.0/24`,
      CUBEBOX_EGRESS_CA: inet.caFile,
    }));
    svc.child.stdout!.on('data', (d: Buffer) => (log += d.toString()));
    await e2b.Secret.create('tok', SECRET);
  });

  after(async () => {
    for (const id of created) await e2b.Sandbox.kill(id).catch(() => undefined);
    if (!stopped) await svc.stop();
    await destroyInstance(undefined, dataDir);
    await inet.close();
  });

  it('a secret the proxy adds is in no env, file, /proc entry, API response or log line of the sandbox', async () => {
    const sbx = await e2b.Sandbox.create('base', { network: { rules: { 'api.test': [bearer] } }, envs: { MINE: 'x' } });
    created.push(sbx.sandboxId);
    // an answer that does not echo the request: what the sandbox reads is only what it sent and got
    assert.match(await sh(sbx, `curl -sS --max-time 10 'https://api.test/big?n=16&leak' -o /tmp/answer`), /(^|\s)rc=0$/);
    assert.equal(inet.seen.find((s) => s.url.endsWith('&leak'))?.headers.authorization, `Bearer ${SECRET}`, 'the server got it');
    // a long-lived process in the sandbox, so its /proc is there to read
    await sbx.commands.run('sleep 600', { background: true });
    const pat = patOf(SECRET);
    // the search finds what is there (a canary of the same shape)
    await sbx.files.write('/tmp/canary', 'canary-1234567-value');
    assert.match(await sh(sbx, `grep -rlsF -f ${patOf('canary-1234567-value')} /tmp`), /\/tmp\/canary/);
    const grep = await sh(
      sbx,
      `env | grep -c -F -f ${pat}; grep -rlsF -f ${pat} /etc /tmp /root /home /var /run /opt /usr/local /proc/[0-9]*/environ /proc/[0-9]*/cmdline 2>/dev/null | head`,
    );
    assert.match(grep, /^0\s+rc=\d+$/, `found in the sandbox: ${grep}`);
    await sbx.getInfo();
    await api(`/sandboxes/${sbx.sandboxId}`);
    await api('/sandboxes');
    await api('/v2/sandboxes');
    await api('/metrics');
    const info = JSON.parse(await api(`/sandboxes/${sbx.sandboxId}`)) as { network: { rules: unknown } };
    assert.deepEqual(info.network.rules, { 'api.test': [bearer] });
    const net = await cli(dataDir, ['sandbox', 'net', sbx.sandboxId]);
    assert.match(net.stdout, /rules +api\.test: Authorization=Bearer \$\{e2b\.secrets\.tok\}/, net.stdout + net.stderr);
    bodies.push(net.stdout, net.stderr, (await cli(dataDir, ['sandbox', 'net', sbx.sandboxId, '--json'])).stdout);
    for (const b of bodies) assert.ok(!b.includes(SECRET), 'an API response carries the secret');
    assert.ok(!log.includes(SECRET), "the service's log carries the secret");
    // the CA's key is the host's alone
    const caDir = join(dataDir, 'egress-ca');
    assert.equal(statSync(join(caDir, 'ca.key')).mode & 0o777, 0o600);
    assert.deepEqual(readdirSync(caDir).sort(), ['ca.crt', 'ca.key'], 'no leaf key file is left');
    const bundle = await sh(sbx, 'grep -c "PRIVATE KEY" /etc/ssl/certs/ca-certificates.crt; grep -c "BEGIN CERTIFICATE" /etc/ssl/certs/ca-certificates.crt');
    assert.match(bundle, /^0\s+\d+\s+rc=0$/, bundle);
    const keyLine = readFileSync(join(caDir, 'ca.key'), 'utf8').split('\n')[1]!;
    assert.match(await sh(sbx, `grep -rlsF '${keyLine}' /etc /tmp /root /usr/local /opt | head -1`), /^\s*rc=\d+$/);
  });

  it("an upstream proxy's credentials are in no env, file, /proc entry, API response or log line; it cannot point into the host's networks", async () => {
    const sbx = await e2b.Sandbox.create('base', { network: { egressProxy: inet.socks } });
    created.push(sbx.sandboxId);
    const n0 = inet.socksSeen.length;
    assert.match(await sh(sbx, 'curl -sS --max-time 10 -o /dev/null http://plain.test:8080/through-socks'), /(^|\s)rc=0$/);
    assert.ok(
      inet.socksSeen.slice(n0).some((x) => x.ok && x.user === inet.socks.username),
      'the proxy was used, with the credentials',
    );
    await sbx.commands.run('sleep 600', { background: true });
    const pat = patOf(inet.socks.password);
    const grep = await sh(
      sbx,
      `env | grep -c -F -f ${pat}; grep -rlsF -f ${pat} /etc /tmp /root /home /var /run /opt /usr/local /proc/[0-9]*/environ /proc/[0-9]*/cmdline 2>/dev/null | head`,
    );
    assert.match(grep, /^0\s+rc=\d+$/, `found in the sandbox: ${grep}`);
    const info = JSON.parse(await api(`/sandboxes/${sbx.sandboxId}`)) as { network: { egressProxy: unknown } };
    assert.deepEqual(info.network.egressProxy, { address: inet.socks.address, username: inet.socks.username });
    await sbx.getInfo();
    await api('/sandboxes');
    await api('/v2/sandboxes');
    const net = await cli(dataDir, ['sandbox', 'net', sbx.sandboxId]);
    assert.match(net.stdout, /upstream +SOCKS5 198\.51\.100\.20:1080 as /, net.stdout + net.stderr);
    bodies.push(net.stdout, net.stderr, (await cli(dataDir, ['sandbox', 'net', sbx.sandboxId, '--json'])).stdout);
    for (const b of bodies) assert.ok(!b.includes(inet.socks.password), "an API response carries the proxy's password");
    assert.ok(!log.includes(inet.socks.password), "the service's log carries the proxy's password");
    // on the host it is stored sealed: the store's files (and their write-ahead log) never hold it in clear
    const db = openPaths(dataDir, false).db;
    for (const f of [db, `${db}-wal`].filter((x) => existsSync(x)))
      assert.ok(!readFileSync(f).includes(Buffer.from(inet.socks.password)), `${f} holds the proxy's password in clear`);
    // a proxy on a private network the host blocks is never dialled: the connection fails, counted
    const failed = await proxyCount('tunnel_failed');
    await sbx.updateNetwork({ egressProxy: { address: '10.255.255.1:1080' } });
    assert.doesNotMatch(await sh(sbx, 'curl -sS --max-time 10 http://plain.test:8080/private-proxy 2>&1'), /(^|\s)rc=0$/);
    assert.equal(await proxyCount('tunnel_failed'), failed + 1);
    assert.equal(
      inet.seen.find((x) => x.url === '/private-proxy'),
      undefined,
      'nothing went direct',
    );
  });

  it('a name allowOut does not grant, on an allowed name address, is refused by its SNI and Host, and counted', async () => {
    const sbx = await e2b.Sandbox.create('base', { network: { allowOut: ['api.test'], denyOut: ['0.0.0.0/0'] } });
    created.push(sbx.sandboxId);
    await sbx.files.write('/tmp/test-ca.pem', inet.caPem);
    const before = await proxyCount('refused_name');
    // the allowed name, over HTTPS (the sandbox's own TLS: the test CA) and HTTP
    assert.match(await sh(sbx, 'curl -sS --max-time 10 --cacert /tmp/test-ca.pem https://api.test/ok 2>&1'), /"sni":"api.test".* rc=0$/);
    assert.match(await sh(sbx, 'curl -sS --max-time 10 http://api.test/ok80 2>&1'), /"host":"api.test".* rc=0$/);
    // shared.test is on the same address, reachable by address since api.test resolved it
    const tls = await sh(sbx, `curl -sS --max-time 10 --cacert /tmp/test-ca.pem --resolve shared.test:443:${API_ADDR} https://shared.test/sneak 2>&1`);
    assert.doesNotMatch(tls, / rc=0$/, tls);
    const plain = await sh(sbx, `curl -sS --max-time 10 -H 'Host: shared.test' http://${API_ADDR}/sneak80 2>&1`);
    assert.doesNotMatch(plain, / rc=0$/, plain);
    assert.equal(inet.seen.filter((s) => s.url.startsWith('/sneak')).length, 0, 'the server never saw them');
    assert.ok((await proxyCount('refused_name')) >= before + 2, 'refusals are counted');
  });

  it('one sandbox holding more connections than its cap cannot starve the proxy for another', async () => {
    const hog = await e2b.Sandbox.create('base', { network: { rules: { 'api.test': [bearer] } } });
    const other = await e2b.Sandbox.create('base', { network: { rules: { 'api.test': [bearer] } } });
    created.push(hog.sandboxId, other.sandboxId);
    await hog.files.write(
      '/tmp/hog.py',
      [
        'import socket, time',
        // resolved once (the forwarder rate-limits queries), its address then proxied
        "addr = socket.gethostbyname('api.test')",
        'ss = [socket.create_connection((addr, 443)) for _ in range(300)]',
        'time.sleep(1.5)',
        'closed = 0',
        'for s in ss:',
        '    s.setblocking(False)',
        '    try:',
        "        closed += s.recv(1) == b''",
        '    except BlockingIOError:',
        '        pass',
        '    except OSError:',
        '        closed += 1',
        "open('/tmp/hog.out', 'w').write(str(closed))",
        'time.sleep(30)',
      ].join('\n'),
    );
    await hog.commands.run('python3 /tmp/hog.py >/dev/null 2>&1', { background: true });
    let closed = '';
    for (let i = 0; i < 100 && !closed; i++) {
      closed = (await sh(hog, 'cat /tmp/hog.out 2>/dev/null')).replace(/\s*rc=\d+$/, '');
      if (!closed) await new Promise((r) => setTimeout(r, 200));
    }
    // the first 256 are held (waiting for their ClientHello), the 44 past the cap closed at once
    assert.equal(closed, '44');
    assert.match(await sh(other, 'curl -sS --max-time 10 -o /dev/null -w "%{http_code}" https://api.test/other 2>&1'), /^200\s+rc=0$/);
  });

  it('leaves no listener, nft object or file of the proxy after the service stops', async () => {
    const inst = openPaths(dataDir, false).instanceId;
    const chain = execFileSync('nft', ['list', 'chain', 'inet', `cubebox_${inst}`, 'egress_proxy'], { encoding: 'utf8' });
    const tunnel = execFileSync('nft', ['list', 'chain', 'inet', `cubebox_${inst}`, 'tunnel'], { encoding: 'utf8' });
    const ports = [...`${chain}${tunnel}`.matchAll(/redirect to :(\d+)/g)].map((m) => m[1]!);
    assert.equal(ports.length, 3, chain + tunnel);
    const ids = created.splice(0);
    for (const id of ids) await e2b.Sandbox.kill(id);
    for (const id of ids) assertNoSandboxLeaks(openPaths(dataDir, false), id);
    await svc.stop();
    stopped = true;
    const listening = execFileSync('ss', ['-Hltn'], { encoding: 'utf8' });
    for (const p of ports) assert.doesNotMatch(listening, new RegExp(`:${p}\\s`), `port ${p} still listens`);
    const tables = execFileSync('nft', ['list', 'tables'], { encoding: 'utf8' });
    assert.doesNotMatch(tables, new RegExp(`cubebox_${inst}\\b`), 'the table goes with the last sandbox');
  });
});
