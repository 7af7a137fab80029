// A SOCKS5 client (RFC 1928, username/password per RFC 1929): how the egress proxy reaches a
// destination through a sandbox's upstream proxy (egressProxy). CONNECT to an IPv4 address only.
import { connect, type Socket } from 'node:net';

export interface Socks5Dial {
  /** The proxy's address (already resolved and checked) and port. */
  proxy: { address: string; port: number };
  username?: string;
  password?: string;
  /** The destination. */
  address: string;
  port: number;
  timeoutMs?: number;
}

const REPLIES: Record<number, string> = {
  1: 'general failure',
  2: 'not allowed by its ruleset',
  3: 'network unreachable',
  4: 'host unreachable',
  5: 'connection refused',
  6: 'TTL expired',
  7: 'command not supported',
  8: 'address type not supported',
};

/** A connection to the destination through the proxy, ready for the destination's bytes (or an error saying which step failed). */
export async function socks5Connect(o: Socks5Dial): Promise<Socket> {
  const sock = connect({ host: o.proxy.address, port: o.proxy.port, noDelay: true });
  let buf = Buffer.alloc(0);
  let want: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  let failed: Error | undefined;
  const pump = () => {
    if (!want) return;
    if (failed) return want.reject(failed);
    if (buf.length < want.n) return;
    const w = want;
    want = undefined;
    const out = buf.subarray(0, w.n);
    buf = buf.subarray(w.n);
    w.resolve(out);
  };
  const onData = (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    pump();
  };
  const fail = (e: Error) => {
    failed ??= e;
    pump();
  };
  const onClose = () => fail(new Error('the upstream proxy closed the connection'));
  sock.on('data', onData);
  sock.on('error', fail);
  sock.on('close', onClose);
  const read = (n: number) => new Promise<Buffer>((resolve, reject) => ((want = { n, resolve, reject }), pump()));
  const timer = setTimeout(() => sock.destroy(new Error('the upstream proxy did not answer in time')), o.timeoutMs ?? 10_000);
  try {
    const auth = o.username !== undefined;
    sock.write(Buffer.from([5, 1, auth ? 2 : 0]));
    const [ver, method] = await read(2);
    if (ver !== 5) throw new Error('the upstream proxy does not speak SOCKS5');
    if (method !== (auth ? 2 : 0)) throw new Error(`the upstream proxy refused ${auth ? 'username/password' : 'no'} authentication`);
    if (auth) {
      const u = Buffer.from(o.username!);
      const p = Buffer.from(o.password ?? '');
      sock.write(Buffer.concat([Buffer.from([1, u.length]), u, Buffer.from([p.length]), p]));
      if ((await read(2))[1] !== 0) throw new Error('the upstream proxy refused the credentials');
    }
    const req = Buffer.from([5, 1, 0, 1, ...o.address.split('.').map(Number), o.port >> 8, o.port & 255]);
    sock.write(req);
    const head = await read(4);
    if (head[1] !== 0) throw new Error(`the upstream proxy could not connect: ${REPLIES[head[1]!] ?? `reply ${head[1]}`}`);
    const atyp = head[3];
    const rest = atyp === 1 ? 4 : atyp === 4 ? 16 : atyp === 3 ? (await read(1))[0]! : -1;
    if (rest < 0) throw new Error('the upstream proxy sent a malformed reply');
    await read(rest + 2);
    // the destination's first bytes may have come with the reply: they go back in front
    sock.off('data', onData);
    sock.off('error', fail);
    sock.off('close', onClose);
    sock.pause();
    if (buf.length) sock.unshift(buf);
    return sock;
  } catch (err) {
    sock.destroy();
    throw err;
  } finally {
    clearTimeout(timer);
  }
}
