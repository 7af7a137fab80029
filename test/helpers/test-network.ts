// A network of the test's own, joined to the host like an uplink or a LAN would be: a network
// namespace behind a veth, the host's end at .1 of a /24 (a connected subnet of the host), and
// at .2 TCP servers that greet (on port 7000 and close, on 7001 and hold the connection) and a DNS server
// answering `flood.test` with its own address. No traffic leaves the host.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const SERVER = `
const net = require('node:net');
const dgram = require('node:dgram');
const addr = process.argv[2];
const held = [];
const tcp = net.createServer((s) => { s.on('error', () => {}); s.end('reached ' + addr + '\\n'); });
const hold = net.createServer((s) => { held.push(s); s.on('error', () => {}); s.write('reached ' + addr + '\\n'); });
const dns = dgram.createSocket('udp4');
dns.on('message', (m, r) => {
  process.stdout.write('query\\n');
  let o = 12; const l = [];
  while (o < m.length && m[o]) { l.push(m.toString('latin1', o + 1, o + 1 + m[o])); o += m[o] + 1; }
  const end = o + 5;
  const hit = l.join('.').toLowerCase() === 'flood.test' && m.readUInt16BE(end - 4) === 1;
  const head = Buffer.from(m.subarray(0, end));
  head.writeUInt16BE(0x8180 | (hit ? 0 : 3), 2); head.writeUInt16BE(hit ? 1 : 0, 6); head.writeUInt16BE(0, 10);
  const rr = Buffer.from([0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, ...addr.split('.').map(Number)]);
  dns.send(hit ? Buffer.concat([head, rr]) : head, r.port, r.address);
});
tcp.listen(7000, addr, () => hold.listen(7001, addr, () => dns.bind(53, addr, () => process.stdout.write('ready\\n'))));
`;

export interface TestNetwork {
  /** The /24, the host's address on it, and the server's. */
  cidr: string;
  host: string;
  server: string;
  /** How many DNS queries the server got. */
  queries(): number;
  close(): Promise<void>;
}

function ip(args: string[]): void {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr}`);
}

/** A /24 under `prefix16` (e.g. '198.18'): its third octet random, so concurrent tests rarely meet. */
export async function testNetwork(prefix16: string): Promise<TestNetwork> {
  const tag = Math.random().toString(36).slice(2, 8);
  const netns = `cbt-net-${tag}`;
  const link = `cbtnet${tag}`;
  const base = `${prefix16}.${1 + Math.floor(Math.random() * 254)}`;
  const [host, server] = [`${base}.1`, `${base}.2`];
  const dir = mkdtempSync('/var/tmp/cubebox-testnet-');
  writeFileSync(join(dir, 'server.cjs'), SERVER);
  const undo = () => {
    spawnSync('ip', ['netns', 'del', netns]);
    spawnSync('ip', ['link', 'del', link]);
    rmSync(dir, { recursive: true, force: true });
  };
  let child: ChildProcess | undefined;
  let queries = 0;
  try {
    ip(['netns', 'add', netns]);
    ip(['link', 'add', link, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', netns]);
    ip(['addr', 'add', `${host}/24`, 'dev', link]);
    ip(['link', 'set', link, 'up']);
    ip(['-n', netns, 'link', 'set', 'lo', 'up']);
    ip(['-n', netns, 'addr', 'add', `${server}/24`, 'dev', 'eth0']);
    ip(['-n', netns, 'link', 'set', 'eth0', 'up']);
    const c = spawn('ip', ['netns', 'exec', netns, process.execPath, join(dir, 'server.cjs'), server], { stdio: ['ignore', 'pipe', 'inherit'] });
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
          else if (line === 'query') queries++;
        }
      });
      c.once('exit', (code) => reject(new Error(`the test network's server exited (${code})`)));
    });
  } catch (err) {
    child?.kill('SIGKILL');
    undo();
    throw err;
  }
  return {
    cidr: `${base}.0/24`,
    host,
    server,
    queries: () => queries,
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
