// Attacks on sandbox networking from inside a sandbox: reconfiguring its own link (taking
// another sandbox's address, routes), reaching the host's own services on any of its
// addresses, reaching another sandbox, and what a deleted sandbox leaves for the next one.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createServer, type Server } from 'node:net';
import { after, before, describe, it } from 'node:test';
import type { SandboxManager } from '../../src/sandbox/manager.js';
import { assertNoSandboxLeaks, destroyInstance, newInstance } from '../helpers/instance.js';

let m: SandboxManager;
let hostService: Server;
let port = 0;

async function sh(id: string, cmd: string): Promise<{ out: string; code: number }> {
  const p = await m.exec(id, ['/bin/sh', '-c', cmd], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  p.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  p.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const code = await new Promise<number>((r) => p.on('close', (c) => r(c ?? -1)));
  return { out, code };
}

describe('sandbox networking under attack', { timeout: 300_000 }, () => {
  before(async () => {
    m = await newInstance();
    hostService = createServer((s) => s.end('host secret\n'));
    await new Promise<void>((r) => hostService.listen(0, '0.0.0.0', () => r()));
    port = (hostService.address() as { port: number }).port;
  });
  after(async () => {
    hostService.close();
    await destroyInstance(m);
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
});
