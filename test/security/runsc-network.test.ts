// Attacks on the network of gVisor sandboxes (runsc), whose traffic leaves through gVisor's own
// netstack on the slot's link: raw sockets, reconfiguring the link, reaching the host, another
// sandbox, a network of the host's or a denied address. The host's policy sits on the host's end
// of the link, so what the netstack lets a sandbox try does not matter past it. And the host
// never hands runsc its own network namespace (runsc's own check of that is hidden from it).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { OciRuntime, refuseHostNetns } from '../../src/runtime/oci-runtime.js';
import type { SandboxManager } from '../../src/sandbox/manager.js';
import { destroyInstance, execIn, newInstance } from '../helpers/instance.js';
import { testNetwork, type TestNetwork } from '../helpers/test-network.js';

const installed = existsSync('/usr/bin/runsc');
let m: SandboxManager;
let hostService: Server;
let port = 0;
let allowed: TestNetwork;

const sh = async (id: string, cmd: string) => {
  const r = await execIn(m, id, ['/bin/sh', '-c', cmd]);
  return { out: r.stdout + r.stderr, code: r.code };
};

describe('gVisor sandbox networking under attack', { timeout: 300_000, skip: !installed && 'runsc is not installed' }, () => {
  before(async () => {
    allowed = await testNetwork('198.19');
    m = await newInstance({ runtime: 'runsc', network: { allowPrivate: [allowed.cidr] } });
    hostService = createServer((s) => s.end('host secret\n'));
    await new Promise<void>((r) => hostService.listen(0, '0.0.0.0', () => r()));
    port = (hostService.address() as { port: number }).port;
  });
  after(async () => {
    hostService.close();
    await destroyInstance(m);
    await allowed.close();
  });

  it('cannot open raw sockets or change its link, address or routes', async () => {
    const a = await m.create({ template: 'busybox', agent: false });
    const b = await m.create({ template: 'busybox', agent: false });
    try {
      assert.equal(m.get(a.id).runtime, 'runsc');
      assert.match(
        (await sh(a.id, 'ip addr show eth0')).out,
        new RegExp(m.get(a.id).address!.replace(/\./g, '\\.')),
        "gVisor's netstack has the slot's address",
      );
      const ping = await sh(a.id, `ping -c 1 -W 1 ${allowed.server}`);
      assert.notEqual(ping.code, 0, ping.out);
      assert.match(ping.out, /permission denied|not permitted/i, 'no raw socket');
      for (const cmd of [`ip addr add ${m.get(b.id).address}/32 dev eth0`, 'ip link set eth0 down', 'ip route add 198.51.100.0/24 dev eth0']) {
        const r = await sh(a.id, cmd);
        assert.notEqual(r.code, 0, `${cmd} must fail: ${r.out}`);
      }
      assert.match((await sh(a.id, `echo | nc -w 2 ${allowed.server} 7000`)).out, /reached/, 'its link still works');
    } finally {
      await m.delete(a.id);
      await m.delete(b.id);
    }
  });

  it("reaches neither the host's services, another sandbox, nor a denied address; an allowed one it does", async () => {
    const a = await m.create({
      template: 'busybox',
      agent: false,
      network: { allowInternetAccess: true, allowOut: [], denyOut: [`${allowed.server}/32`], allowPublicTraffic: true, httpsPorts: [] },
    });
    const b = await m.create({ template: 'busybox', agent: false });
    try {
      const hostAddrs = spawnSync('hostname', ['-I'], { encoding: 'utf8' })
        .stdout.trim()
        .split(/\s+/)
        .filter((x) => /^\d+\./.test(x));
      for (const target of [m.network()!.lease(a.id)!.gateway, m.network()!.lease(b.id)!.gateway, allowed.host, ...hostAddrs]) {
        const r = await sh(a.id, `echo hi | nc -w 2 ${target} ${port}`);
        assert.doesNotMatch(r.out, /host secret/, `host service reached at ${target}`);
      }
      assert.doesNotMatch((await sh(a.id, `echo hi | nc -w 2 127.0.0.1 ${port}`)).out, /host secret/, "its loopback is gVisor's own");
      await sh(b.id, '(nc -l -p 7000 -e /bin/echo reached-b >/dev/null 2>&1 &)');
      assert.doesNotMatch((await sh(a.id, `sleep 0.3; echo | nc -w 2 ${m.get(b.id).address} 7000`)).out, /reached-b/);
      assert.doesNotMatch((await sh(a.id, `echo | nc -w 2 ${allowed.server} 7000`)).out, /reached/, 'the denied address');
      await m.updateNetwork(a.id, { allowInternetAccess: true, allowOut: [], denyOut: [], allowPublicTraffic: true, httpsPorts: [] });
      assert.match((await sh(a.id, `echo | nc -w 2 ${allowed.server} 7000`)).out, /reached/, 'allowed after a live update');
    } finally {
      await m.delete(a.id);
      await m.delete(b.id);
    }
  });

  it('without networking it has a working loopback and no link at all', async () => {
    const lo = await newInstance({ runtime: 'runsc', network: false });
    try {
      const a = await lo.create({ template: 'busybox', agent: false });
      const r = await execIn(lo, a.id, ['/bin/sh', '-c', '(nc -l -p 7000 -e /bin/echo on-loopback &) ; sleep 0.3; echo | nc -w 2 127.0.0.1 7000; ip addr']);
      assert.match(r.stdout, /on-loopback/);
      assert.match(r.stdout, /inet 127\.0\.0\.1/);
      assert.doesNotMatch(r.stdout, /eth0/);
    } finally {
      await destroyInstance(lo);
    }
  });

  it('the host never hands runsc its own network namespace: a bundle naming it is refused before runsc runs', async () => {
    const dir = mkdtempSync('/var/tmp/cubebox-bundle-');
    try {
      const config = (path: string) => JSON.stringify({ linux: { namespaces: [{ type: 'network', path }] } });
      writeFileSync(join(dir, 'config.json'), config('/proc/self/ns/net'));
      assert.throws(() => refuseHostNetns(dir), /is the host's/);
      const rt = new OciRuntime('runsc', join(dir, 'state'), 'v2');
      await assert.rejects(rt.run('cubebox-never', dir, join(dir, 'log')), /is the host's/);
      assert.equal(existsSync(join(dir, 'log')) && spawnSync('cat', [join(dir, 'log')]).stdout.length > 0, false, 'runsc never ran');
      writeFileSync(join(dir, 'config.json'), config(m.network()!.lease((await m.create({ template: 'busybox', agent: false })).id)!.netns));
      assert.doesNotThrow(() => refuseHostNetns(dir), "a slot's namespace is not the host's");
    } finally {
      for (const s of m.list()) await m.delete(s.id);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
