// The pieces of the tunnel through an upstream proxy that need no sandbox: finding a redirected
// connection's original destination in conntrack's table, and the SOCKS5 client against a real
// SOCKS5 server (the tests' own, on loopback) that checks credentials.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { findOriginalDst, originalDst } from '../../src/network/conntrack.js';
import { socks5Connect } from '../../src/network/socks5.js';
import { socks5Server, type SocksSeen } from '../helpers/socks5-server.js';

describe('conntrack: the original destination of a redirected connection', () => {
  const local = { address: '10.11.0.2', port: 38123 };
  const remote = { address: '10.11.0.3', port: 45678 };
  const line = (orig: string, reply: string) => `ipv4     2 tcp      6 431999 ESTABLISHED ${orig} ${reply} [ASSURED] mark=0 zone=0 use=2`;

  it('reads the entry whose reply tuple is the accepted socket', () => {
    const table = [
      line('src=10.11.0.5 dst=1.1.1.1 sport=1 dport=443', 'src=1.1.1.1 dst=10.0.0.1 sport=443 dport=1'),
      line('src=10.11.0.3 dst=198.51.100.20 sport=45678 dport=8080', 'src=10.11.0.2 dst=10.11.0.3 sport=38123 dport=45678'),
      '',
    ].join('\n');
    assert.deepEqual(findOriginalDst(table, local, remote), { address: '198.51.100.20', port: 8080 });
  });

  it('finds nothing for another port, a UDP entry, or the tuple as an original one', () => {
    const reply = 'src=10.11.0.2 dst=10.11.0.3 sport=38123 dport=45678';
    assert.equal(findOriginalDst(line('src=10.11.0.3 dst=9.9.9.9 sport=45679 dport=80', reply.replace('45678', '45679')), local, remote), undefined);
    assert.equal(findOriginalDst(`ipv4     2 udp      17 30 src=10.11.0.3 dst=9.9.9.9 sport=45678 dport=53 ${reply} mark=0`, local, remote), undefined);
    assert.equal(findOriginalDst(line(reply, 'src=10.11.0.3 dst=10.11.0.2 sport=45678 dport=38123'), local, remote), undefined);
    assert.equal(findOriginalDst('', local, remote), undefined);
  });

  it('reads a large table a chunk at a time (an entry across a chunk boundary is found) and never past its bound', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cubebox-conntrack-'));
    try {
      const other = line('src=10.11.0.5 dst=1.1.1.1 sport=1 dport=443', 'src=1.1.1.1 dst=10.0.0.1 sport=443 dport=1');
      const wanted = line('src=10.11.0.3 dst=198.51.100.20 sport=45678 dport=8080', 'src=10.11.0.2 dst=10.11.0.3 sport=38123 dport=45678');
      // the wanted entry straddles the first 1 MiB chunk
      const filler = `${other}\n`.repeat(Math.floor((1 << 20) / (other.length + 1)));
      assert.ok(filler.length < 1 << 20 && (1 << 20) - filler.length < wanted.length, 'the wanted entry crosses the 1 MiB mark');
      const file = join(dir, 'nf_conntrack');
      writeFileSync(file, `${filler}${wanted}\n${other}\n`);
      assert.deepEqual(await originalDst(local, remote, file), { address: '198.51.100.20', port: 8080 });
      // with a bound that ends before it, the lookup gives up
      assert.equal(await originalDst(local, remote, file, 1 << 20), undefined);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('the SOCKS5 client', () => {
  const seen: SocksSeen[] = [];
  let proxy: net.Server;
  let echo: net.Server;
  const port = (s: net.Server) => (s.address() as net.AddressInfo).port;
  const listen = (s: net.Server) => new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));

  before(async () => {
    proxy = socks5Server(net, 'alice', 'secret', (s) => seen.push(s));
    // a server that speaks first, then echoes: its greeting may come with the proxy's reply
    echo = net.createServer((c) => {
      c.write('hello ');
      c.pipe(c);
    });
    await Promise.all([listen(proxy), listen(echo)]);
  });

  after(async () => {
    await Promise.all([proxy, echo].map((s) => new Promise((r) => s.close(r))));
  });

  it('connects through the proxy with its credentials; bytes flow both ways', async () => {
    const s = await socks5Connect({
      proxy: { address: '127.0.0.1', port: port(proxy) },
      username: 'alice',
      password: 'secret',
      address: '127.0.0.1',
      port: port(echo),
    });
    s.write('ping');
    let got = '';
    s.on('data', (d: Buffer) => (got += d.toString()));
    const done = new Promise<void>((r) => s.on('data', () => got === 'hello ping' && r()));
    s.resume(); // handed over paused: the caller pipes it
    await done;
    s.destroy();
    assert.equal(got, 'hello ping');
    assert.deepEqual(seen.at(-1), { ok: true, user: 'alice', dst: `127.0.0.1:${port(echo)}` });
  });

  it('says which step failed: wrong credentials, none offered, a refused destination, no proxy', async () => {
    const at = { address: '127.0.0.1', port: port(proxy) };
    await assert.rejects(socks5Connect({ proxy: at, username: 'alice', password: 'nope', address: '127.0.0.1', port: port(echo) }), /refused the credentials/);
    assert.deepEqual(seen.at(-1), { ok: false, why: 'credentials', user: 'alice' });
    await assert.rejects(socks5Connect({ proxy: at, address: '127.0.0.1', port: port(echo) }), /refused no authentication/);
    const closed = net.createServer();
    await listen(closed);
    const gone = port(closed);
    await new Promise((r) => closed.close(r));
    await assert.rejects(socks5Connect({ proxy: at, username: 'alice', password: 'secret', address: '127.0.0.1', port: gone }), /connection refused/);
    await assert.rejects(socks5Connect({ proxy: { address: '127.0.0.1', port: gone }, address: '127.0.0.1', port: 1 }), /ECONNREFUSED|closed/);
  });
});
