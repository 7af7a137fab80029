// Which sandbox and port a data-plane request is for: Host `<port>-<id>[-<clientID>].<domain>`,
// the E2b-Sandbox-Id and E2b-Sandbox-Port headers, signed /files URLs and CORS preflights.
import assert from 'node:assert/strict';
import { IncomingMessage } from 'node:http';
import { Socket } from 'node:net';
import { describe, it } from 'node:test';
import { fileSignature } from '../../src/protocol/signature.js';
import { classify, ENVD_PORT, matchSignature, normalizeSandboxId, parseSandboxHost, SIGNED_PROBE_HEADER } from '../../src/proxy/routing.js';

const ID = 'abcdefghij0123456789';

/** A request as the HTTP server hands it over (headers lowercased, rawHeaders as sent). */
function request(headers: Record<string, string>, url = '/', method = 'GET'): IncomingMessage {
  const req = new IncomingMessage(new Socket());
  req.headers = Object.fromEntries(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v]));
  req.rawHeaders = Object.entries(headers).flat();
  req.url = url;
  req.method = method;
  return req;
}

describe('the sandbox a Host names', () => {
  it('reads the port and the id of <port>-<id>.<any domain>, with or without a listener port', () => {
    assert.deepEqual(parseSandboxHost(`49983-${ID}.e2b.app`), { port: 49983, sandboxId: ID });
    assert.deepEqual(parseSandboxHost(`8080-${ID}.cubebox.test:3000`), { port: 8080, sandboxId: ID });
    assert.deepEqual(parseSandboxHost(`1-${ID}.localhost`), { port: 1, sandboxId: ID });
    assert.deepEqual(parseSandboxHost(`65535-${ID}.x`), { port: 65535, sandboxId: ID });
  });

  it("drops the SDK's client id and reads the Host case-insensitively", () => {
    assert.deepEqual(parseSandboxHost(`3000-${ID}-client7.e2b.app`), { port: 3000, sandboxId: ID });
    assert.deepEqual(parseSandboxHost(`3000-${ID.toUpperCase()}.E2B.APP`), { port: 3000, sandboxId: ID });
  });

  it('is no sandbox Host: port 0 or above 65535, no port, no domain, an empty label, or a bad id', () => {
    for (const host of [
      `0-${ID}.e2b.app`,
      `65536-${ID}.e2b.app`,
      `123456-${ID}.e2b.app`,
      `${ID}.e2b.app`,
      `-${ID}.e2b.app`,
      `8080-${ID}`,
      `8080-${ID}:3000`,
      `8080-${ID}.`,
      `8080-${ID}..e2b.app`,
      `8080-${'a'.repeat(65)}.e2b.app`,
      `8080-${ID}-client-extra.e2b.app`,
      `8080-ab_cd.e2b.app`,
      'localhost:3000',
      '10-0-0-1.nip.io',
      '',
    ]) {
      assert.equal(parseSandboxHost(host), undefined, host);
    }
    assert.equal(parseSandboxHost(undefined), undefined);
  });
});

describe('sandbox ids from the E2b-Sandbox-Id header', () => {
  it('keeps the id of <id>-<clientID>, trims blanks, and leaves anything else as it came', () => {
    assert.equal(normalizeSandboxId(`${ID}-client1`), ID);
    assert.equal(normalizeSandboxId(`  ${ID}  `), ID);
    assert.equal(normalizeSandboxId('Not An Id'), 'Not An Id', 'returned as it came: no sandbox has that id');
    assert.equal(normalizeSandboxId('../etc'), '../etc');
  });
});

describe('what a request is routed to', () => {
  it("E2b-Sandbox-Id routes by header, to envd's port when no port is named", () => {
    assert.deepEqual(classify(request({ 'E2b-Sandbox-Id': `${ID}-cli` })), {
      kind: 'sandbox',
      sandboxId: ID,
      port: ENVD_PORT,
      rawPort: String(ENVD_PORT),
      via: 'header',
    });
    const other = classify(request({ 'E2b-Sandbox-Id': ID }), 5000);
    assert.equal(other?.kind === 'sandbox' && other.port, 5000, "the proxy's own envd port");
  });

  it('E2b-Sandbox-Port picks the port; one that is not a number is kept as written and read as NaN', () => {
    const at = (port: string) => classify(request({ 'E2b-Sandbox-Id': ID, 'E2b-Sandbox-Port': port }));
    assert.deepEqual(at(' 8080 '), { kind: 'sandbox', sandboxId: ID, port: 8080, rawPort: '8080', via: 'header' });
    assert.deepEqual(at(''), { kind: 'sandbox', sandboxId: ID, port: ENVD_PORT, rawPort: String(ENVD_PORT), via: 'header' });
    for (const bad of ['http', '80a', '-1', '+80', '8.0', '123456']) {
      const t = at(bad);
      assert.ok(t?.kind === 'sandbox', bad);
      assert.ok(Number.isNaN(t.port), `${bad} read as ${t.port}`);
      assert.equal(t.rawPort, bad);
    }
  });

  it('the header wins over the Host; a blank header leaves the Host to route', () => {
    const both = classify(request({ Host: `3000-zzzz.e2b.app`, 'E2b-Sandbox-Id': ID }));
    assert.equal(both?.kind === 'sandbox' && both.sandboxId, ID);
    assert.equal(both?.kind === 'sandbox' && both.via, 'header');
    const blank = classify(request({ Host: `3000-${ID}.e2b.app`, 'E2b-Sandbox-Id': '   ' }));
    assert.deepEqual(blank, { kind: 'sandbox', sandboxId: ID, port: 3000, rawPort: '3000', via: 'host' });
  });

  it('a header-less /files with a signature is a signed request: GET and HEAD read, POST writes, other methods are not routed', () => {
    const url = `/files?path=%2Ftmp%2Fa&username=user&signature=v1_x`;
    const read = classify(request({ Host: 'localhost' }, url));
    assert.equal(read?.kind, 'signed');
    assert.equal(read?.kind === 'signed' && read.op, 'read');
    assert.equal(read?.kind === 'signed' && read.url.searchParams.get('path'), '/tmp/a');
    assert.equal(classify(request({}, url, 'HEAD'))?.kind, 'signed');
    const write = classify(request({}, url, 'POST'));
    assert.equal(write?.kind === 'signed' && write.op, 'write');
    assert.equal(classify(request({}, url, 'DELETE')), undefined);
    assert.equal(classify(request({}, url, 'PUT')), undefined);
    // an API replica's probe for an upload URL: a HEAD that asks about the write signature, answered without relaying
    const probe = classify(request({ [SIGNED_PROBE_HEADER]: 'write' }, url, 'HEAD'));
    assert.deepEqual(probe?.kind === 'signed' && [probe.op, probe.probe], ['write', true]);
    for (const [method, value] of [
      ['GET', 'write'],
      ['POST', 'write'],
      ['HEAD', 'read'],
    ])
      assert.notEqual(
        (classify(request({ [SIGNED_PROBE_HEADER]: value! }, url, method)) as { probe?: boolean } | undefined)?.probe,
        true,
        `${method} ${value}`,
      );
  });

  it('is not data-plane traffic: /files without a signature, other paths with one, or a signature-like parameter', () => {
    for (const url of ['/files?path=a', '/filesx?signature=v1_x', '/files/?signature=v1_x', '/files?xsignature=v1_x', '/v2/sandboxes', '/health']) {
      assert.equal(classify(request({ Host: 'api.cubebox.test' }, url)), undefined, url);
    }
  });

  it('a CORS preflight naming E2b-Sandbox-Id is answered as one; other OPTIONS are not data-plane traffic', () => {
    const preflight = (headers: string, method = 'OPTIONS') =>
      classify(request({ 'Access-Control-Request-Headers': headers }, '/process.Process/Start', method));
    assert.deepEqual(preflight('e2b-sandbox-id'), { kind: 'preflight' });
    assert.deepEqual(preflight('content-type, E2b-Sandbox-Id,x-access-token'), { kind: 'preflight' });
    assert.equal(preflight('x-e2b-sandbox-id'), undefined);
    assert.equal(preflight('e2b-sandbox-id-x'), undefined);
    assert.equal(preflight('content-type'), undefined);
    assert.equal(preflight('e2b-sandbox-id', 'GET'), undefined);
    // an OPTIONS that already names its sandbox goes to it
    assert.equal(classify(request({ 'E2b-Sandbox-Id': ID, 'Access-Control-Request-Headers': 'e2b-sandbox-id' }, '/', 'OPTIONS'))?.kind, 'sandbox');
  });
});

describe('the sandbox whose token signed a /files URL', () => {
  const url = (params: Record<string, string>) => new URL(`/files?${new URLSearchParams(params)}`, 'http://data-plane');
  const candidates = [
    { sandboxId: 'one', accessToken: 'token-one' },
    { sandboxId: 'two', accessToken: 'token-two' },
  ];

  it('is the candidate whose token made the signature, for that operation, path, user and expiration', () => {
    const sig = fileSignature('/home/user/a.txt', 'read', 'user', 'token-two', 2_000_000_000);
    const signed = url({ path: '/home/user/a.txt', username: 'user', signature: sig, signature_expiration: '2000000000' });
    assert.equal(matchSignature(signed, 'read', candidates), 'two');
    assert.equal(matchSignature(signed, 'write', candidates), undefined, 'a read signature does not upload');
    const otherPath = url({ path: '/home/user/b.txt', username: 'user', signature: sig, signature_expiration: '2000000000' });
    assert.equal(matchSignature(otherPath, 'read', candidates), undefined);
    const otherUser = url({ path: '/home/user/a.txt', username: 'root', signature: sig, signature_expiration: '2000000000' });
    assert.equal(matchSignature(otherUser, 'read', candidates), undefined);
    const longer = url({ path: '/home/user/a.txt', username: 'user', signature: sig, signature_expiration: '2000000001' });
    assert.equal(matchSignature(longer, 'read', candidates), undefined, 'the expiration is signed');
  });

  it('is nobody for an empty signature, a malformed expiration, or a signature made with an empty token', () => {
    assert.equal(matchSignature(url({ path: '/a', signature: '' }), 'read', candidates), undefined);
    const sig = fileSignature('/a', 'read', undefined, 'token-one', 1.5);
    assert.equal(matchSignature(url({ path: '/a', signature: sig, signature_expiration: '1.5' }), 'read', candidates), undefined);
    const noToken = fileSignature('/a', 'read', undefined, '');
    assert.equal(matchSignature(url({ path: '/a', signature: noToken }), 'read', [{ sandboxId: 'open', accessToken: '' }]), undefined);
  });
});
