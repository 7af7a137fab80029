import assert from 'node:assert/strict';
import { createServer, type AddressInfo } from 'node:net';
import { connect } from 'node:tls';
import { describe, it } from 'node:test';
import { hostOf, MAX_PEEK, offersH2, sniOf } from '../../src/network/client-hello.js';

/** The first bytes a real TLS client sends for a server name. */
async function clientHello(servername: string | undefined, ALPNProtocols?: string[]): Promise<Buffer> {
  return new Promise((resolve) => {
    const srv = createServer((s) => {
      s.once('data', (d: Buffer) => {
        resolve(d);
        s.destroy();
        srv.close();
      });
    });
    srv.listen(0, '127.0.0.1', () => {
      const c = connect({ host: '127.0.0.1', port: (srv.address() as AddressInfo).port, servername, ALPNProtocols, rejectUnauthorized: false });
      c.on('error', () => undefined);
    });
  });
}

describe('what the egress proxy reads of a connection', () => {
  it('reads the SNI of a real ClientHello, in pieces too', async () => {
    const hello = await clientHello('API.Example.test');
    assert.equal(sniOf(hello), 'api.example.test');
    assert.equal(sniOf(hello.subarray(0, 20)), undefined, 'more bytes needed');
    assert.equal(sniOf(await clientHello(undefined)), '', 'no SNI: an empty name (refused by the proxy)');
  });

  it('tells whether a ClientHello offers HTTP/2 (ALPN h2)', async () => {
    assert.equal(offersH2(await clientHello('a.test', ['h2', 'http/1.1'])), true);
    assert.equal(offersH2(await clientHello('a.test', ['http/1.1'])), false);
    assert.equal(offersH2(await clientHello('a.test', ['h2c', 'xh2'])), false);
    assert.equal(offersH2(await clientHello('a.test')), false);
    assert.equal(sniOf(await clientHello('a.test', ['h2'])), 'a.test');
  });

  it('refuses what is not a ClientHello, and cut or oversized ones, without throwing', async () => {
    const hello = await clientHello('a.test');
    assert.equal(sniOf(Buffer.from('GET / HTTP/1.1\r\n\r\n')), null);
    for (let i = 5; i < hello.length; i += 7) {
      const cut = Buffer.from(hello);
      cut.writeUInt16BE(i - 5, 3); // a record that claims to end early
      assert.ok(sniOf(cut.subarray(0, i)) !== 'a.test' || i >= hello.length);
    }
    const garbage = Buffer.alloc(MAX_PEEK + 10, 0xff);
    garbage.set([0x16, 3, 1, 0xff, 0xff]);
    assert.equal(sniOf(garbage), null, 'a record longer than the peek bound');
  });

  it('reads one Host of an HTTP request head, without its port', () => {
    assert.equal(hostOf(Buffer.from('GET / HTTP/1.1\r\nHost: API.test:80\r\n\r\n')), 'api.test');
    assert.equal(hostOf(Buffer.from('GET / HTTP/1.1\r\nHost: a.test\r\n')), undefined);
    assert.equal(hostOf(Buffer.from('GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n')), null, 'two Hosts');
    assert.equal(hostOf(Buffer.from('GET / HTTP/1.1\r\nX: y\r\n\r\n')), null, 'none');
    assert.equal(hostOf(Buffer.from('GET / HTTP/1.1\r\nHost: a b\r\n\r\n')), null, 'not a name');
    assert.equal(hostOf(Buffer.alloc(MAX_PEEK, 0x41)), null, 'no end of head within the bound');
  });
});
