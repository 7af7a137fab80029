// Small servers the end-to-end suites start inside a sandbox (its python3), to reach through the
// data plane.
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
