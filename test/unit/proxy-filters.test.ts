// What never passes the data plane as a client sent it (hop-by-hop headers, the init secret,
// envd's /init), who may reach a sandbox's own ports and what Host they see, and the proxy's
// own answers in E2B's words.
import assert from 'node:assert/strict';
import { IncomingMessage } from 'node:http';
import { Socket } from 'node:net';
import { PassThrough } from 'node:stream';
import { text } from 'node:stream/consumers';
import { describe, it } from 'node:test';
import { INIT_SECRET_HEADER } from '../../src/envd/host-contract.js';
import { endToEnd, INIT_REFUSED, isInitPath } from '../../src/proxy/filter.js';
import { closedPortBody, hostEnd, portHeaders, portRefusal, TRAFFIC_TOKEN_HEADER, trafficAllowed } from '../../src/proxy/ports.js';
import { notFoundBody, rawResponse } from '../../src/proxy/replies.js';
import type { SandboxRoute } from '../../src/proxy/types.js';

const ID = 'abcdefghij0123456789';

function request(headers: Record<string, string>): IncomingMessage {
  const req = new IncomingMessage(new Socket());
  req.headers = Object.fromEntries(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v]));
  req.rawHeaders = Object.entries(headers).flat();
  return req;
}

/** rawHeaders as lowercased name -> value, for lookups. */
const asMap = (raw: string[]) => new Map(Array.from({ length: raw.length / 2 }, (_, i) => [(raw[2 * i] as string).toLowerCase(), raw[2 * i + 1] as string]));

const route = (extra: Partial<SandboxRoute> = {}): SandboxRoute => ({
  sandboxId: ID,
  socket: { path: '/nonexistent', device: 0 },
  address: '10.11.0.5',
  ...extra,
});

describe('headers that never pass the data plane', () => {
  it('drops hop-by-hop headers and the init secret, whatever their case, and keeps the rest in order', () => {
    const raw = [
      'Host', 'x',
      'Connection', 'keep-alive',
      'Keep-Alive', 'timeout=5',
      'Proxy-Connection', 'keep-alive',
      'Proxy-Authorization', 'Basic eDp5',
      'TE', 'trailers',
      'Trailer', 'X-Sum',
      'Transfer-Encoding', 'chunked',
      'Upgrade', 'h2c',
      'HTTP2-Settings', 'AAA',
      'Expect', '100-continue',
      'X-Cubebox-Init-Secret', 'stolen',
      'Authorization', 'Bearer a',
      'X-Access-Token', 'tok',
      'Content-Type', 'application/json',
    ]; // prettier-ignore
    assert.deepEqual(endToEnd(raw), ['Host', 'x', 'Authorization', 'Bearer a', 'X-Access-Token', 'tok', 'Content-Type', 'application/json']);
    assert.equal(INIT_SECRET_HEADER, 'x-cubebox-init-secret');
  });

  it('drops the headers the Connection header names (every Connection header, any spacing)', () => {
    const raw = ['Connection', 'X-One ,x-two', 'X-One', '1', 'X-Two', '2', 'connection', 'X-Three', 'X-Three', '3', 'X-Four', '4'];
    assert.deepEqual(endToEnd(raw), ['X-Four', '4']);
  });

  it('keeps Connection and Upgrade for a WebSocket handshake, and still drops what Connection names', () => {
    const raw = ['Connection', 'Upgrade, X-Hop', 'Upgrade', 'websocket', 'X-Hop', 'dropped', 'Sec-WebSocket-Key', 'k', INIT_SECRET_HEADER, 's'];
    assert.deepEqual(endToEnd(raw, true), ['Connection', 'Upgrade, X-Hop', 'Upgrade', 'websocket', 'Sec-WebSocket-Key', 'k']);
    assert.deepEqual(endToEnd(raw), ['Sec-WebSocket-Key', 'k']);
  });

  it('keeps an empty list empty and repeated end-to-end headers repeated', () => {
    assert.deepEqual(endToEnd([]), []);
    assert.deepEqual(endToEnd(['Set-Cookie', 'a=1', 'Set-Cookie', 'b=2']), ['Set-Cookie', 'a=1', 'Set-Cookie', 'b=2']);
  });
});

describe("envd's /init through the data plane", () => {
  it('is recognised however the path is spelled, the way envd parses it', () => {
    for (const url of [
      '/init',
      '/init/',
      '//init',
      '///init//',
      '/./init',
      '/x/../init',
      '/%2e/init',
      '/init?x=1',
      '/init#f',
      'http://envd/init',
      '/a/b/../../init',
    ]) {
      assert.equal(isInitPath(url), true, url);
    }
  });

  it('is not a path that merely contains init, nor an unparsable one', () => {
    for (const url of [undefined, '', '/', '/initx', '/x/init', '/init.html', '/files?path=/init', '/envs?init', '/INIT', '/%69nit', 'http://[bad/init2']) {
      assert.equal(isInitPath(url), false, String(url));
    }
    assert.deepEqual(JSON.parse(INIT_REFUSED), { code: 403, message: '/init is not reachable through the data plane' });
  });
});

describe("a sandbox's own ports", () => {
  it('refuse a port outside 1-65535 first (400, the port as the client wrote it)', () => {
    for (const [port, raw] of [
      [NaN, 'http'],
      [0, '0'],
      [65536, '65536'],
    ] as const) {
      const r = portRefusal(route({ address: undefined, trafficToken: 't' }), port, raw, request({}));
      assert.ok(r, raw);
      assert.equal(r.status, 400, raw);
      assert.deepEqual(JSON.parse(r.body), { sandboxId: ID, message: `'${raw}' is not a port (1-65535)`, code: 400 });
    }
  });

  it('answer 502 for a sandbox without networking, before asking for the traffic token', () => {
    const r = portRefusal(route({ address: undefined, trafficToken: 't' }), 8080, '8080', request({}));
    assert.ok(r);
    assert.equal(r.status, 502);
    assert.deepEqual(JSON.parse(r.body), { sandboxId: ID, message: 'the sandbox has no network: port 8080 cannot be reached', code: 502 });
  });

  it('need the exact traffic access token when public traffic is off', () => {
    const closed = route({ trafficToken: 'secret-token' });
    const refused = portRefusal(closed, 8080, '8080', request({}));
    assert.ok(refused);
    assert.equal(refused.status, 403);
    assert.match(JSON.parse(refused.body).message, /e2b-traffic-access-token/);
    for (const wrong of ['', 'secret-toke', 'secret-token ', 'SECRET-TOKEN', 'secret-token, secret-token']) {
      assert.equal(trafficAllowed(closed, request({ [TRAFFIC_TOKEN_HEADER]: wrong })), false, JSON.stringify(wrong));
    }
    assert.equal(trafficAllowed(closed, request({ 'E2b-Traffic-Access-Token': 'secret-token' })), true);
    assert.equal(portRefusal(closed, 8080, '8080', request({ [TRAFFIC_TOKEN_HEADER]: 'secret-token' })), undefined);
    assert.equal(trafficAllowed(closed, undefined), false);
  });

  it('are open to anyone when public traffic is on', () => {
    assert.equal(portRefusal(route(), 8080, '8080', request({})), undefined);
    assert.equal(trafficAllowed(route({ trafficToken: '' }), undefined), true);
  });

  it('never see the traffic token, and see the masked Host with its port when one is set', () => {
    const raw = ['Host', `8080-${ID}.e2b.app`, 'E2B-Traffic-Access-Token', 'secret', 'X-Other', 'kept'];
    assert.deepEqual(portHeaders(route(), 8080, raw), ['Host', `8080-${ID}.e2b.app`, 'X-Other', 'kept']);
    const masked = portHeaders(route({ maskRequestHost: 'app.example:${PORT}' }), 8080, raw);
    assert.deepEqual(masked, ['Host', 'app.example:8080', 'X-Other', 'kept']);
    assert.deepEqual(
      asMap(portHeaders(route({ maskRequestHost: '${PORT}.${PORT}.internal' }), 3000, ['host', 'h'])),
      new Map([['host', '3000.3000.internal']]),
    );
    assert.deepEqual(portHeaders(route({ maskRequestHost: '' }), 8080, ['Host', 'h']), ['Host', 'h'], 'an empty mask masks nothing');
  });

  it("are reached from the host's end of the sandbox's /31 link", () => {
    assert.equal(hostEnd('10.11.0.5'), '10.11.0.4');
    assert.equal(hostEnd('10.11.0.4'), '10.11.0.4');
    assert.equal(hostEnd('10.11.255.255'), '10.11.255.254');
  });
});

describe("the proxy's own answers", () => {
  it("are E2B's JSON bodies for an unknown sandbox and a closed port", () => {
    assert.equal(notFoundBody(ID), `{"sandboxId":"${ID}","message":"The sandbox was not found","code":502}`);
    assert.equal(closedPortBody(ID, 3000), `{"sandboxId":"${ID}","message":"The sandbox is running but port is not open","port":3000,"code":502}`);
    // an id that came from a header is only ever a JSON string
    assert.equal(JSON.parse(notFoundBody('a"b\\c')).sandboxId, 'a"b\\c');
  });

  it('are written whole on a socket that asked for an upgrade, and then the socket ends', async () => {
    const socket = new PassThrough();
    const body = notFoundBody('é');
    rawResponse(socket, 502, body);
    const out = await text(socket);
    assert.equal(
      out,
      `HTTP/1.1 502 Bad Gateway\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
    );
    assert.equal(socket.writableEnded, true);
    const gone = new PassThrough();
    gone.destroy();
    assert.doesNotThrow(() => rawResponse(gone, 403, '{}'));
  });
});
