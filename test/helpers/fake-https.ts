// A small HTTPS "internet" for the egress proxy's tests, in a network namespace the test makes:
// a test CA (made here with openssl), HTTPS and HTTP servers on two addresses that echo what
// they saw (the SNI, the headers; HTTP also on port 8080), a DNS server for their names, and a
// SOCKS5 proxy with credentials (an upstream proxy for egressProxy). No traffic leaves the host.
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { socks5Server, type SocksSeen } from './socks5-server.js';

export const NET = '198.51.100';
export const HOST_SIDE = `${NET}.1`;
/** api.test and shared.test share this address; plain.test and *.wild.test are on the other. */
export const API_ADDR = `${NET}.10`;
export const OTHER_ADDR = `${NET}.20`;
/** Where the SOCKS5 proxy listens. */
export const SOCKS_ADDRESS = `${OTHER_ADDR}:1080`;
export const NAMES: Record<string, string> = {
  'api.test': API_ADDR,
  'shared.test': API_ADDR,
  'plain.test': OTHER_ADDR,
  'a.wild.test': OTHER_ADDR,
  'b.wild.test': OTHER_ADDR,
};

const SERVER = `
const https = require('node:https');
const http = require('node:http');
const dgram = require('node:dgram');
const fs = require('node:fs');
const zone = ${JSON.stringify(NAMES)};
const [key, cert] = [fs.readFileSync(process.argv[2]), fs.readFileSync(process.argv[3])];
function handle(req, res) {
  const u = new URL(req.url, 'http://x');
  const seen = { sni: req.socket.servername || null, host: req.headers.host, url: req.url, headers: req.headers };
  process.stdout.write('seen ' + JSON.stringify(seen) + '\\n');
  if (u.pathname === '/big') {
    let left = Number(u.searchParams.get('n'));
    const chunk = Buffer.alloc(1 << 20, 97);
    res.writeHead(200, { 'content-length': String(left) });
    const pump = () => { while (left > 0) { const c = left >= chunk.length ? chunk : chunk.subarray(0, left); left -= c.length; if (!res.write(c)) return res.once('drain', pump); } res.end(); };
    return pump();
  }
  let n = 0;
  req.on('data', (d) => (n += d.length));
  req.on('end', () => { res.setHeader('content-type', 'application/json'); res.end(JSON.stringify({ ...seen, bodyBytes: n })); });
}
// an Upgrade answered with 101, then every byte echoed back (a tunnel, as a WebSocket's is)
function upgrade(req, sock) {
  process.stdout.write('seen ' + JSON.stringify({ sni: sock.servername || null, host: req.headers.host, url: req.url, headers: req.headers }) + '\\n');
  sock.write('HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n\\r\\n');
  sock.on('error', () => {});
  sock.pipe(sock);
}
for (const addr of ['${API_ADDR}', '${OTHER_ADDR}']) {
  https.createServer({ key, cert }, handle).on('upgrade', upgrade).listen(443, addr);
  http.createServer(handle).listen(80, addr);
  http.createServer(handle).listen(8080, addr);
}
${socks5Server.toString()}
socks5Server(require('node:net'), process.argv[4], process.argv[5], (s) => process.stdout.write('socks ' + JSON.stringify(s) + '\\n')).listen(1080, '${OTHER_ADDR}');
function name(buf) { const l = []; let o = 12; while (buf[o]) { l.push(buf.toString('latin1', o + 1, o + 1 + buf[o])); o += buf[o] + 1; } return [l.join('.').toLowerCase(), o + 5]; }
const dns = dgram.createSocket('udp4');
dns.on('message', (m, r) => {
  const [n, end] = name(m);
  const ip = zone[n];
  const a = ip && m.readUInt16BE(end - 4) === 1;
  const head = Buffer.from(m.subarray(0, end));
  head.writeUInt16BE(0x8180 | (ip ? 0 : 3), 2); head.writeUInt16BE(a ? 1 : 0, 6); head.writeUInt16BE(0, 10);
  let out = head;
  if (a) {
    const rr = Buffer.alloc(16); rr.writeUInt16BE(0xc00c, 0); rr.writeUInt16BE(1, 2); rr.writeUInt16BE(1, 4); rr.writeUInt32BE(60, 6); rr.writeUInt16BE(4, 10);
    ip.split('.').forEach((p, i) => (rr[12 + i] = Number(p)));
    out = Buffer.concat([head, rr]);
  }
  dns.send(out, r.port, r.address);
});
dns.bind(53, '${API_ADDR}', () => process.stdout.write('ready\\n'));
`;

export interface Seen {
  sni: string | null;
  host: string;
  url: string;
  headers: Record<string, string>;
}

export interface FakeHttps {
  netns: string;
  link: string;
  /** The test CA's certificate (PEM) and its file. */
  caPem: string;
  caFile: string;
  /** Every request the servers saw. */
  seen: Seen[];
  /** The SOCKS5 proxy's address and credentials (egressProxy), and every attempt it saw. */
  socks: { address: string; username: string; password: string };
  socksSeen: SocksSeen[];
  close(): Promise<void>;
}

function ip(args: string[]): void {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr}`);
}

function makeCa(dir: string): void {
  const o = (args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  o(['ecparam', '-genkey', '-name', 'prime256v1', '-noout', '-out', 'ca.key']);
  o(['req', '-x509', '-new', '-key', 'ca.key', '-out', 'ca.crt', '-days', '2', '-subj', '/CN=fake internet test CA']);
  o(['ecparam', '-genkey', '-name', 'prime256v1', '-noout', '-out', 'srv.key']);
  const san = Object.keys(NAMES)
    .map((n) => `DNS:${n}`)
    .join(',');
  o([
    ...['req', '-new', '-x509', '-key', 'srv.key', '-CA', 'ca.crt', '-CAkey', 'ca.key', '-out', 'srv.crt', '-days', '2', '-subj', '/CN=fake internet'],
    ...['-addext', `subjectAltName=${san}`, '-addext', 'basicConstraints=critical,CA:FALSE', '-addext', 'authorityKeyIdentifier=keyid'],
  ]);
}

export async function startFakeHttps(): Promise<FakeHttps> {
  const tag = Math.random().toString(36).slice(2, 8);
  const netns = `cbt-https-${tag}`;
  const link = `cbthttps${tag}`;
  const dir = mkdtempSync('/var/tmp/cubebox-https-');
  let child: ChildProcess | undefined;
  const undo = () => {
    spawnSync('ip', ['netns', 'del', netns]);
    spawnSync('ip', ['link', 'del', link]);
    rmSync(dir, { recursive: true, force: true });
  };
  const seen: Seen[] = [];
  const socksSeen: SocksSeen[] = [];
  const socks = { address: SOCKS_ADDRESS, username: `user-${tag}`, password: `socks-${Math.random().toString(36).slice(2)}-pass` };
  try {
    makeCa(dir);
    writeFileSync(join(dir, 'server.cjs'), SERVER);
    ip(['netns', 'add', netns]);
    ip(['link', 'add', link, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', netns]);
    ip(['addr', 'add', `${HOST_SIDE}/24`, 'dev', link]);
    ip(['link', 'set', link, 'up']);
    ip(['-n', netns, 'link', 'set', 'lo', 'up']);
    ip(['-n', netns, 'addr', 'add', `${API_ADDR}/24`, 'dev', 'eth0']);
    ip(['-n', netns, 'addr', 'add', `${OTHER_ADDR}/24`, 'dev', 'eth0']);
    ip(['-n', netns, 'link', 'set', 'eth0', 'up']);
    ip(['-n', netns, 'route', 'add', 'default', 'via', HOST_SIDE]);
    // nsenter joins only the network namespace (no private copy of the host's mounts)
    const c = spawn(
      'nsenter',
      [`--net=/run/netns/${netns}`, process.execPath, join(dir, 'server.cjs'), join(dir, 'srv.key'), join(dir, 'srv.crt'), socks.username, socks.password],
      {
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    );
    child = c;
    await new Promise<void>((resolve, reject) => {
      let buf = '';
      c.stdout!.on('data', (d: Buffer) => {
        buf += d.toString();
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (line === 'ready') resolve();
          else if (line.startsWith('seen ')) seen.push(JSON.parse(line.slice(5)) as Seen);
          else if (line.startsWith('socks ')) socksSeen.push(JSON.parse(line.slice(6)) as SocksSeen);
        }
      });
      c.once('exit', (code) => reject(new Error(`the fake HTTPS server exited (${code})`)));
    });
  } catch (err) {
    child?.kill('SIGKILL');
    undo();
    throw err;
  }
  return {
    netns,
    link,
    caPem: readFileSync(join(dir, 'ca.crt'), 'utf8'),
    caFile: join(dir, 'ca.crt'),
    seen,
    socks,
    socksSeen,
    async close() {
      if (child!.exitCode === null && child!.signalCode === null) {
        const exited = new Promise((r) => child!.once('exit', r));
        child!.kill('SIGTERM');
        await exited;
      }
      undo();
    },
  };
}
