// A SOCKS5 proxy for tests (RFC 1928 CONNECT to IPv4, RFC 1929 username/password): the upstream
// proxy a sandbox's `egressProxy` names. It checks the credentials and reports each attempt.
// Written as one self-contained function so that the fake internet can run its source in its
// namespace (fake-https.ts) and unit tests can run it in-process.
import type * as Net from 'node:net';

export interface SocksSeen {
  ok: boolean;
  /** Why it refused: 'method' (no acceptable authentication), 'credentials'. */
  why?: string;
  user?: string;
  /** The destination asked for, 'a.b.c.d:port'. */
  dst?: string;
}

export function socks5Server(net: typeof Net, user: string, pass: string, log: (s: SocksSeen) => void): Net.Server {
  const reply = (code: number) => Buffer.from([5, code, 0, 1, 0, 0, 0, 0, 0, 0]);
  return net.createServer((c) => {
    c.on('error', () => undefined);
    let buf = Buffer.alloc(0);
    let stage = 'hello';
    let who: string | undefined;
    const onData = (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        if (stage === 'hello') {
          if (buf.length < 2 || buf.length < 2 + buf[1]!) return;
          const offered = [...buf.subarray(2, 2 + buf[1]!)];
          buf = buf.subarray(2 + buf[1]!);
          if (!offered.includes(2)) {
            log({ ok: false, why: 'method' });
            return void c.end(Buffer.from([5, 255]));
          }
          c.write(Buffer.from([5, 2]));
          stage = 'auth';
        } else if (stage === 'auth') {
          if (buf.length < 2) return;
          const ul = buf[1]!;
          if (buf.length < 3 + ul || buf.length < 3 + ul + buf[2 + ul]!) return;
          const pl = buf[2 + ul]!;
          const [u, p] = [buf.toString('utf8', 2, 2 + ul), buf.toString('utf8', 3 + ul, 3 + ul + pl)];
          buf = buf.subarray(3 + ul + pl);
          if (u !== user || p !== pass) {
            log({ ok: false, why: 'credentials', user: u });
            return void c.end(Buffer.from([1, 1]));
          }
          who = u;
          c.write(Buffer.from([1, 0]));
          stage = 'request';
        } else {
          if (buf.length < 10) return;
          if (buf[1] !== 1 || buf[3] !== 1) return void c.end(reply(8));
          const dst = `${[...buf.subarray(4, 8)].join('.')}:${buf.readUInt16BE(8)}`;
          const rest = buf.subarray(10);
          c.off('data', onData);
          c.pause();
          log({ ok: true, user: who, dst });
          const up = net.connect(buf.readUInt16BE(8), [...buf.subarray(4, 8)].join('.'));
          up.on('error', () => (c.writable ? c.end(reply(5)) : c.destroy()));
          up.once('connect', () => {
            c.write(reply(0));
            if (rest.length) up.write(rest);
            c.pipe(up);
            up.pipe(c);
            c.on('close', () => up.destroy());
            up.on('close', () => c.destroy());
          });
          return;
        }
      }
    };
    c.on('data', onData);
  });
}
