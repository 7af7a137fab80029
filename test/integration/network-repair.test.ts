// What a sandbox needs on the host, taken away from the host's side: its network namespace's
// name, its veth, its nft chain, its disk. A reconcile pass (or a resume) makes the network
// again, with the policy; a disk image left unmounted is mounted again at resume; what cannot
// be made again fails the sandbox with the reason. And
// port traffic to a sandbox whose link is gone answers E2B's 502, never leaving by another route.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createServer, request, type Server } from 'node:http';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { DataPlaneProxy, type RouteResolver } from '../../src/proxy/proxy.js';
import { mountsUnder } from '../../src/runtime/rootfs.js';
import type { SandboxManager } from '../../src/sandbox/manager.js';
import { destroyInstance, newInstance } from '../helpers/instance.js';
import { testNetwork, type TestNetwork } from '../helpers/test-network.js';
import { sh } from '../security/helpers.js';

let m: SandboxManager;
let lan: TestNetwork;
const DENIED = '198.51.100.7/32';

function run(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  assert.equal(r.status, 0, `${cmd} ${args.join(' ')}: ${r.stderr}`);
}

async function newSandbox() {
  return m.create({
    template: 'busybox',
    agent: false,
    network: { allowInternetAccess: true, allowOut: [], denyOut: [DENIED], allowPublicTraffic: true, httpsPorts: [] },
  });
}

/** The sandbox reaches the test's network (its link, address and route work) and its policy holds. */
async function assertNetworkWorks(id: string): Promise<void> {
  assert.match((await sh(m, id, `echo | nc -w 2 ${lan.server} 7000`)).out, /reached/);
  const slot = m.network()!.lease(id)!.slot;
  const set = spawnSync('nft', ['list', 'set', 'inet', `cubebox_${m.paths.instanceId}`, `d${slot}`], { encoding: 'utf8' });
  assert.match(set.stdout, /198\.51\.100\.7/, "the sandbox's policy is back");
}

describe('a sandbox whose network or disk went from the host', { timeout: 300_000 }, () => {
  before(async () => {
    lan = await testNetwork('198.19');
    m = await newInstance({ network: { allowPrivate: [lan.cidr] } });
  });
  after(async () => {
    await destroyInstance(m);
    await lan.close();
  });

  it('a running sandbox gets its namespace name, veth and nft chain back from a reconcile pass', async () => {
    const a = await newSandbox();
    try {
      await assertNetworkWorks(a.id);
      const lease = m.network()!.lease(a.id)!;
      const table = `inet cubebox_${m.paths.instanceId}`;
      // a slot with its namespace and veth but no nft chain
      const drop = spawnSync('nft', ['-f', '-'], {
        input: `delete element ${table} egress { "${lease.hostLink}" }\nflush chain ${table} s${lease.slot}\ndelete chain ${table} s${lease.slot}\n`,
        encoding: 'utf8',
      });
      assert.equal(drop.status, 0, drop.stderr);
      let report = await m.reconcile();
      assert.ok(
        report.repaired?.some((r) => r.startsWith(`${a.id}: nft chain`)),
        JSON.stringify(report),
      );
      await assertNetworkWorks(a.id);

      run('ip', ['netns', 'del', `cubebox-${m.paths.instanceId}-${lease.slot}`]); // its processes keep the namespace alive
      run('ip', ['link', 'del', lease.hostLink]);
      report = await m.reconcile();
      assert.ok(existsSync(lease.netns), 'the namespace has its name again');
      assert.deepEqual(
        report.repaired?.filter((r) => r.startsWith(a.id)).map((r) => r.split(':')[1]!.trim().split(' ')[0]),
        ['network', 'veth'],
        JSON.stringify(report),
      );
      assert.equal(m.get(a.id).state, 'running');
      await assertNetworkWorks(a.id);
    } finally {
      await m.delete(a.id);
    }
  });

  it('a sandbox paused without memory whose namespace was deleted resumes with its network made again', async () => {
    const a = await newSandbox();
    try {
      const ns = `cubebox-${m.paths.instanceId}-${m.network()!.lease(a.id)!.slot}`;
      await m.pause(a.id, { memory: false });
      run('ip', ['netns', 'del', ns]); // nothing lives in it: the namespace and its veth are gone
      await m.resume(a.id);
      await assertNetworkWorks(a.id);

      await m.pause(a.id, { memory: false });
      run('ip', ['netns', 'del', ns]);
      const report = await m.reconcile();
      assert.ok(
        report.repaired?.some((r) => r.startsWith(`${a.id}: network namespace`)),
        JSON.stringify(report),
      );
      assert.equal(m.get(a.id).state, 'paused');
      await m.resume(a.id);
      await assertNetworkWorks(a.id);
    } finally {
      await m.delete(a.id);
    }
  });

  it('a sandbox paused without memory whose disk was unmounted from the host resumes with its files', async () => {
    const a = await newSandbox();
    try {
      assert.equal((await sh(m, a.id, 'echo kept > /root/file && sync')).code, 0);
      await m.pause(a.id, { memory: false });
      const dir = join(m.paths.sandboxesDir, a.id);
      // as after a host reboot: nothing of the sandbox is mounted
      for (const p of mountsUnder(dir)) run('umount', [p]);
      await m.reconcile({ orphans: false });
      assert.equal(m.get(a.id).state, 'paused', 'its image is intact: it waits for its resume');
      await m.resume(a.id);
      assert.equal((await sh(m, a.id, 'cat /root/file')).out, 'kept');
      await assertNetworkWorks(a.id);
    } finally {
      await m.delete(a.id);
    }
  });

  it("port traffic to a sandbox whose veth is gone answers E2B's 502 body", async () => {
    const a = await newSandbox();
    const resolver: RouteResolver = {
      async route(id) {
        const info = m.get(id);
        return { sandboxId: id, socket: { path: '/nonexistent', device: 0 }, address: info.address ?? undefined };
      },
      signedCandidates: () => [],
    };
    const proxy = new DataPlaneProxy(resolver, { domain: 'cubebox.test' });
    const server: Server = createServer((req, res) => proxy.handle(req, res));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const get = () =>
      new Promise<{ status: number; body: string }>((resolve, reject) => {
        const port = (server.address() as { port: number }).port;
        const req = request({ host: '127.0.0.1', port, path: '/', headers: { Host: `8000-${a.id}.cubebox.test` } }, (res) => {
          let body = '';
          res.on('data', (d: Buffer) => (body += d.toString()));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        });
        req.on('error', reject);
        req.end();
      });
    try {
      await sh(
        m,
        a.id,
        `(while true; do echo -e 'HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\nok' | nc -l -p 8000 >/dev/null 2>&1; done) </dev/null >/dev/null 2>&1 &`,
      );
      let served = { status: 0, body: '' };
      for (let i = 0; i < 50 && served.status !== 200; i++) {
        served = await get();
        if (served.status !== 200) await new Promise((r) => setTimeout(r, 100));
      }
      assert.equal(served.status, 200, 'the port is served while the link is there');
      run('ip', ['link', 'del', m.network()!.lease(a.id)!.hostLink]);
      const gone = await get();
      assert.equal(gone.status, 502);
      assert.deepEqual(JSON.parse(gone.body), { sandboxId: a.id, message: 'The sandbox is running but port is not open', port: 8000, code: 502 });
    } finally {
      proxy.close();
      server.close();
      await m.delete(a.id);
    }
  });
});
