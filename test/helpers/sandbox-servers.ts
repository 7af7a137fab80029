// Small servers the end-to-end suites start inside a sandbox (its python3), to reach through the
// data plane.
import { connect } from 'node:net';
import type { E2B } from './service.js';

type Sandbox = InstanceType<E2B['Sandbox']>;

/** A WebSocket echo server (text frames under 126 bytes, unmasked replies), standard library only. */
const WS_ECHO = String.raw`import socket, hashlib, base64, threading
def serve(c):
    data = b''
    while b'\r\n\r\n' not in data: data += c.recv(1024)
    key = [l.split(b': ')[1] for l in data.split(b'\r\n') if l.lower().startswith(b'sec-websocket-key')][0].strip()
    acc = base64.b64encode(hashlib.sha1(key + b'258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest())
    c.sendall(b'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ' + acc + b'\r\n\r\n')
    while True:
        h = c.recv(2)
        if len(h) < 2: return
        n = h[1] & 127; mask = c.recv(4); payload = bytes(b ^ mask[i % 4] for i, b in enumerate(c.recv(n)))
        c.sendall(bytes([0x81, len(payload)]) + payload)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', PORT)); s.listen()
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,)).start()
`;

/** Starts the WebSocket echo server on a port of the sandbox, in the background (not waited for). */
export async function startWsEcho(sbx: Sandbox, port: number): Promise<void> {
  await sbx.files.write('/tmp/ws.py', WS_ECHO.replace('PORT', String(port)));
  await sbx.commands.run('python3 /tmp/ws.py >/dev/null 2>&1', { background: true });
}

/**
 * One text frame through a WebSocket to `host` (a sandbox's port by its Host) at a listener on
 * loopback: the handshake must answer 101; resolves to the text of the first frame echoed back.
 */
export function wsEchoThrough(port: number, host: string, text: string): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    const s = connect(port, '127.0.0.1', () =>
      s.write(
        `GET / HTTP/1.1\r\nHost: ${host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`,
      ),
    );
    let buf = Buffer.alloc(0);
    let upgraded = false;
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (!upgraded) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const head = buf.subarray(0, end).toString();
        if (!/^HTTP\/1.1 101/.test(head)) {
          s.destroy();
          return reject(new Error(`no WebSocket upgrade: ${head.split('\r\n')[0]}`));
        }
        upgraded = true;
        buf = buf.subarray(end + 4);
        const payload = Buffer.from(text);
        const mask = Buffer.from([1, 2, 3, 4]);
        s.write(Buffer.concat([Buffer.from([0x81, 0x80 | payload.length]), mask, Buffer.from(payload.map((b, i) => b ^ mask[i % 4]!))]));
      }
      if (buf.length >= 2 && buf.length >= 2 + buf[1]!) {
        resolve(buf.subarray(2, 2 + buf[1]!).toString());
        s.destroy();
      }
    });
    s.on('error', reject);
  });
}
