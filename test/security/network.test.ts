// Attacks on sandbox networking from inside a sandbox: reconfiguring its own link (taking
// another sandbox's address, routes), reaching the host's own services on any of its
// addresses or its own networks, reaching another sandbox, filling the host's connection
// tracking, flooding the DNS forwarder, and what a deleted sandbox leaves for the next one.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createServer, type Server } from 'node:net';
import { after, before, describe, it } from 'node:test';
import pino from 'pino';
import { DnsForwarder } from '../../src/network/dns.js';
import { nftRuns } from '../../src/network/host.js';
import { egressPolicy } from '../../src/network/policy.js';
import type { SandboxManager } from '../../src/sandbox/manager.js';
import { assertNoSandboxLeaks, destroyInstance, newInstance } from '../helpers/instance.js';
import { testNetwork, type TestNetwork } from '../helpers/test-network.js';

let m: SandboxManager;
let hostService: Server;
let port = 0;
/** A network the instance allows (--allow-private): a server and a DNS server in a namespace of the test's. */
let allowed: TestNetwork;
const FLOW_CAP = 8;

async function sh(id: string, cmd: string, mgr: SandboxManager = m): Promise<{ out: string; code: number }> {
  const p = await mgr.exec(id, ['/bin/sh', '-c', cmd], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  p.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  p.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const code = await new Promise<number>((r) => p.on('close', (c) => r(c ?? -1)));
  return { out, code };
}

describe('sandbox networking under attack', { timeout: 300_000 }, () => {
  before(async () => {
    allowed = await testNetwork('198.19');
    m = await newInstance({ network: { allowPrivate: [allowed.cidr], maxFlows: FLOW_CAP } });
    hostService = createServer((s) => s.end('host secret\n'));
    await new Promise<void>((r) => hostService.listen(0, '0.0.0.0', () => r()));
    port = (hostService.address() as { port: number }).port;
  });
  after(async () => {
    hostService.close();
    await destroyInstance(m);
    await allowed.close();
  });

  it("a sandbox's root cannot change its link, addresses or routes", async () => {
    const a = await m.create({ template: 'busybox', agent: false });
    const b = await m.create({ template: 'busybox', agent: false });
    const bAddr = m.get(b.id).address!;
    for (const cmd of [`ip addr add ${bAddr}/32 dev eth0`, 'ip link set eth0 down', `ip route add 198.51.100.0/24 dev eth0`, 'ip link add x type dummy']) {
      const r = await sh(a.id, cmd);
      assert.notEqual(r.code, 0, `${cmd} must fail: ${r.out}`);
      assert.match(r.out, /not permitted|Permission denied/i, cmd);
    }
    assert.doesNotMatch((await sh(a.id, 'ip addr show eth0')).out, new RegExp(bAddr.replace(/\./g, '\\.')));
    await m.delete(a.id);
    await m.delete(b.id);
  });

  it("cannot reach a host service on any of the host's addresses, nor another sandbox", async () => {
    const a = await m.create({ template: 'busybox', agent: false });
    const b = await m.create({ template: 'busybox', agent: false });
    const lease = m.network()!.lease(a.id)!;
    const deniedBefore = (await m.network()!.totals()).deniedPackets;
    const hostAddrs = spawnSync('hostname', ['-I'], { encoding: 'utf8' })
      .stdout.trim()
      .split(/\s+/)
      .filter((x) => /^\d+\./.test(x));
    for (const target of [lease.gateway, m.network()!.lease(b.id)!.gateway, ...hostAddrs]) {
      const r = await sh(a.id, `echo hi | nc -w 2 ${target} ${port}`);
      assert.doesNotMatch(r.out, /host secret/, `host service reached at ${target}`);
    }
    // the other sandbox listens; the first cannot connect to it
    await sh(b.id, `(nc -l -p 7000 -e /bin/echo reached-b >/dev/null 2>&1 &)`);
    const local = await sh(b.id, 'sleep 0.3; echo | nc -w 2 127.0.0.1 7000');
    assert.match(local.out, /reached-b/, 'the listener works inside its own sandbox');
    await sh(b.id, `(nc -l -p 7000 -e /bin/echo reached-b >/dev/null 2>&1 &)`);
    const cross = await sh(a.id, `sleep 0.3; echo | nc -w 2 ${m.get(b.id).address} 7000`);
    assert.doesNotMatch(cross.out, /reached-b/);
    // the service's denied total saw them
    assert.ok((await m.network()!.totals()).deniedPackets > deniedBefore);
    await m.delete(a.id);
    await m.delete(b.id);
  });

  it('a deleted sandbox leaves nothing of its network for the next one', async () => {
    const a = await m.create({
      template: 'busybox',
      agent: false,
      network: { allowInternetAccess: false, allowOut: ['198.51.100.7'], denyOut: [], allowPublicTraffic: true, httpsPorts: [] },
    });
    const slot = m.network()!.lease(a.id)!.slot;
    await m.delete(a.id);
    assertNoSandboxLeaks(m.paths, a.id);
    assert.equal(spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout.includes(`cubebox-${m.paths.instanceId}-${slot} `), false);
    const listed = spawnSync('nft', ['list', 'chain', 'inet', `cubebox_${m.paths.instanceId}`, `s${slot}`], { encoding: 'utf8' });
    if (listed.status === 0) assert.doesNotMatch(listed.stdout, /198\.51\.100\.7/, 'a reused slot number starts with an empty policy');
  });

  it("cannot reach a network of the host's own (an interface's address, its connected subnet) unless allowed", async () => {
    const a = await m.create({ template: 'busybox', agent: false });
    const other = await testNetwork('198.18'); // made after the service started, like an uplink that comes up later
    try {
      await m.reconcile();
      assert.match((await sh(a.id, `echo | nc -w 2 ${allowed.server} 7000`)).out, /reached/, 'the network --allow-private names is reachable');
      for (const target of [other.server, other.host]) {
        const r = await sh(a.id, `echo | nc -w 2 ${target} 7000`);
        assert.doesNotMatch(r.out, /reached/, `a host network reached at ${target}`);
      }
    } finally {
      await other.close();
      await m.delete(a.id);
    }
  });

  it('a sandbox opening more connections than its cap is refused past it', async () => {
    const a = await m.create({ template: 'busybox', agent: false });
    try {
      const opened = await sh(
        a.id,
        `for i in $(seq ${FLOW_CAP * 2}); do ( (sleep 30 2>/dev/null | nc ${allowed.server} 7001 >/tmp/c$i 2>&1) </dev/null >/dev/null 2>&1 &); done; sleep 2; grep -l reached /tmp/c* | wc -l`,
      );
      assert.equal(Number(opened.out.trim().split('\n').pop()), FLOW_CAP, opened.out);
    } finally {
      await m.delete(a.id);
    }
  });
});

describe('the DNS forwarder under a sandbox flood', { timeout: 300_000 }, () => {
  before(async () => {
    allowed = await testNetwork('198.19');
  });
  after(async () => {
    await allowed.close();
  });

  it('a sandbox flooding queries for an allowed name does not start an nft process per answer; the name resolves and is reachable', async (t) => {
    const mf = await newInstance({ network: { allowPrivate: [allowed.cidr] } }); // the default flow cap: a flood is many flows
    const net = mf.network()!;
    const dns = new DnsForwarder({
      upstreams: [{ host: allowed.server, port: 53 }],
      log: pino({ level: 'silent' }),
      lookup(address) {
        const sandboxId = net.sandboxAt(address);
        return sandboxId ? { sandboxId, policy: egressPolicy(mf.get(sandboxId).network) } : undefined;
      },
      allowResolved: (sandboxId, addresses, ttl) => net.allowResolved(sandboxId, addresses, ttl),
    });
    await net.setDnsPort(await dns.start());
    const a = await mf.create({
      template: 'busybox',
      agent: false,
      network: { allowInternetAccess: false, allowOut: ['flood.test'], denyOut: [], allowPublicTraffic: true, httpsPorts: [] },
    });
    try {
      assert.doesNotMatch((await sh(a.id, `echo | nc -w 2 ${allowed.server} 7000`, mf)).out, /reached/, 'not reachable before it is resolved');
      const before = nftRuns();
      await sh(a.id, 'for i in $(seq 150); do nslookup flood.test >/dev/null 2>&1 & done; wait', mf);
      const runs = nftRuns() - before;
      assert.ok(allowed.queries() >= 50, `the flood reached the upstream (${allowed.queries()} queries)`);
      t.diagnostic(`${runs} nft processes for ${allowed.queries()} queries forwarded`);
      assert.ok(runs <= 5, `${runs} nft processes for one name's answers`);
      assert.match((await sh(a.id, 'nslookup flood.test', mf)).out, new RegExp(allowed.server.replace(/\./g, '\\.')));
      assert.match((await sh(a.id, `echo | nc -w 2 ${allowed.server} 7000`, mf)).out, /reached/, 'the resolved address is reachable');
    } finally {
      await dns.close();
      await destroyInstance(mf);
    }
  });
});
