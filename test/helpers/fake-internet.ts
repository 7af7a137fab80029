// A small "internet" for networking tests, in a network namespace the test makes itself: a
// veth to the host, HTTP servers on two addresses and a DNS server that logs every query.
// No traffic leaves the host.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export const UPSTREAM = '203.0.113.10';
export const OTHER = '203.0.113.20';
export const HOST_SIDE = '203.0.113.1';

/** name -> address the fake DNS answers (anything else: NXDOMAIN). */
const ZONE: Record<string, string> = { 'upstream.test': UPSTREAM, 'other.test': OTHER, 'api.allowed.test': UPSTREAM };

const SERVER = `
const http = require('node:http');
const dgram = require('node:dgram');
const zone = ${JSON.stringify(ZONE)};
for (const addr of ['${UPSTREAM}', '${OTHER}']) {
  http.createServer((req, res) => { res.end('hello from ' + addr + ' ' + req.url); }).listen(80, addr);
}
function name(buf) { const l = []; let o = 12; while (buf[o]) { l.push(buf.toString('latin1', o + 1, o + 1 + buf[o])); o += buf[o] + 1; } return [l.join('.').toLowerCase(), o + 5]; }
const dns = dgram.createSocket('udp4');
dns.on('message', (m, r) => {
  const [n, end] = name(m);
  process.stdout.write('query ' + n + '\\n');
  const ip = zone[n];
  const q = m.subarray(0, end);
  const head = Buffer.from(q);
  head.writeUInt16BE(0x8180 | (ip ? 0 : 3), 2); head.writeUInt16BE(ip && m.readUInt16BE(end - 4) === 1 ? 1 : 0, 6);
  let out = head;
  if (ip && m.readUInt16BE(end - 4) === 1) {
    const rr = Buffer.alloc(16); rr.writeUInt16BE(0xc00c, 0); rr.writeUInt16BE(1, 2); rr.writeUInt16BE(1, 4); rr.writeUInt32BE(60, 6); rr.writeUInt16BE(4, 10);
    ip.split('.').forEach((p, i) => (rr[12 + i] = Number(p)));
    out = Buffer.concat([head, rr]);
  }
  dns.send(out, r.port, r.address);
});
dns.bind(53, '${UPSTREAM}', () => process.stdout.write('ready\\n'));
`;

export interface FakeInternet {
  netns: string;
  /** Every name the DNS server was asked. */
  queries: string[];
  close(): Promise<void>;
}

function ip(args: string[]): void {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr}`);
}

export async function startFakeInternet(): Promise<FakeInternet> {
  const tag = Math.random().toString(36).slice(2, 8);
  const netns = `cbt-inet-${tag}`;
  const link = `cbtinet${tag}`;
  const dir = mkdtempSync('/var/tmp/cubebox-inet-');
  writeFileSync(join(dir, 'server.cjs'), SERVER);
  ip(['netns', 'add', netns]);
  ip(['link', 'add', link, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', netns]);
  ip(['addr', 'add', `${HOST_SIDE}/24`, 'dev', link]);
  ip(['link', 'set', link, 'up']);
  ip(['-n', netns, 'link', 'set', 'lo', 'up']);
  ip(['-n', netns, 'addr', 'add', `${UPSTREAM}/24`, 'dev', 'eth0']);
  ip(['-n', netns, 'addr', 'add', `${OTHER}/24`, 'dev', 'eth0']);
  ip(['-n', netns, 'link', 'set', 'eth0', 'up']);
  ip(['-n', netns, 'route', 'add', 'default', 'via', HOST_SIDE]);
  // nsenter joins only the network namespace: `ip netns exec` would also make a private copy of
  // the host's mounts, pinning the loop disks of sandboxes made meanwhile until the server ends
  const child: ChildProcess = spawn('nsenter', [`--net=/run/netns/${netns}`, process.execPath, join(dir, 'server.cjs')], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const queries: string[] = [];
  await new Promise<void>((resolve, reject) => {
    let buf = '';
    child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line === 'ready') resolve();
        else if (line.startsWith('query ')) queries.push(line.slice(6));
      }
    });
    child.once('exit', (c) => reject(new Error(`the fake internet's server exited (${c})`)));
  });
  return {
    netns,
    queries,
    async close() {
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        await new Promise((r) => child.once('exit', r));
      }
      spawnSync('ip', ['netns', 'del', netns]);
      spawnSync('ip', ['link', 'del', link]);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
