// E2B's behaviours in gVisor sandboxes (runsc) through the published SDK, the subset that
// differs from crun: the sandbox's own network (egress policy, live updates, DNS through the
// forwarder, a port through the proxy), file metadata kept beside the files (gVisor's root keeps
// no extended attributes), scoped env vars, a filesystem-only pause, and a delete that leaves
// nothing. The whole e2e suite runs under runsc with CUBEBOX_RUNTIME=runsc.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { openPaths } from '../../src/config.js';
import { assertNoSandboxLeaks, destroyInstance } from '../helpers/instance.js';
import { HOST_SIDE, OTHER, startFakeInternet, UPSTREAM, type FakeInternet } from '../helpers/fake-internet.js';
import { getFrom, sdkService, type E2B, type Service } from '../helpers/service.js';

let e2b: E2B;
let svc: Service;
let dataDir: string;
let inet: FakeInternet;
let hostService: Server;
const made: string[] = [];
type Sbx = Awaited<ReturnType<E2B['Sandbox']['create']>>;

async function newSandbox(opts: Parameters<E2B['Sandbox']['create']>[1] = {}): Promise<Sbx> {
  const sbx = await e2b.Sandbox.create('base', opts);
  made.push(sbx.sandboxId);
  return sbx;
}

/** What a command prints with its exit code appended: a blocked connection is an answer here. */
async function sh(sbx: Sbx, cmd: string): Promise<string> {
  return (await sbx.commands.run(`${cmd}\necho " rc=$?"`, { timeoutMs: 30_000 })).stdout.trim();
}
const reached = (out: string) => /hello from/.test(out) && / rc=0$/.test(out);
const fetchIn = (sbx: Sbx, url: string) => sh(sbx, `curl -sS --max-time 3 ${url} 2>&1`);

const get = (path: string, headers: Record<string, string>) => getFrom(svc, path, headers);

describe('E2B behaviours in gVisor sandboxes', { timeout: 600_000, skip: !existsSync('/usr/bin/runsc') && 'runsc is not installed' }, () => {
  before(async () => {
    inet = await startFakeInternet();
    hostService = createServer((s) => s.end('host secret\n'));
    await new Promise<void>((r) => hostService.listen(0, '0.0.0.0', () => r()));
    ({ svc, dataDir, e2b } = await sdkService({
      CUBEBOX_RUNTIME: 'runsc',
      CUBEBOX_DNS_UPSTREAM: UPSTREAM,
      CUBEBOX_POOL: '',
      CUBEBOX_ALLOW_PRIVATE: '203.0.113.0/24',
    }));
  });
  after(async () => {
    for (const id of made) await e2b.Sandbox.kill(id).catch(() => undefined);
    await svc.stop();
    await destroyInstance(undefined, dataDir);
    await inet.close();
    hostService.close();
  });

  it("has its own network: names through the forwarder, the policy and its live update, nothing of the host's", async () => {
    const sbx = await newSandbox({ network: { allowOut: ['upstream.test'], denyOut: ['0.0.0.0/0'] } });
    assert.equal((await sbx.getInfo()).sandboxId, sbx.sandboxId);
    assert.ok(reached(await fetchIn(sbx, 'http://upstream.test/')), 'an allowed name resolves through the forwarder and is reachable');
    assert.ok(!reached(await fetchIn(sbx, `http://${OTHER}/`)), 'a denied address is not');
    assert.ok(!reached(await fetchIn(sbx, 'http://other.test/')), 'nor a name not allowed');
    const port = (hostService.address() as { port: number }).port;
    const gw = (await sh(sbx, "awk '/nameserver/ {print $2}' /etc/resolv.conf")).split(' ')[0]!;
    assert.match(gw, /^10\./, "the host's end of its slot");
    for (const target of [gw, HOST_SIDE, '169.254.169.254']) {
      const out = await sh(sbx, `curl -sS --max-time 2 http://${target}:${port}/ 2>&1`);
      assert.doesNotMatch(out, /host secret| rc=0$/, target);
    }
    await sbx.updateNetwork({});
    assert.ok(reached(await fetchIn(sbx, `http://${OTHER}/`)), 'open after the live update');
    assert.match(await sh(sbx, 'cat /etc/resolv.conf'), /nameserver 10\./);
  });

  it('serves a port through the proxy, behind its traffic token when public traffic is off', async () => {
    const sbx = await newSandbox({ network: { allowPublicTraffic: false } });
    await sbx.commands.run('cd /tmp && echo from-gvisor > i.txt && python3 -m http.server 8000 >/dev/null 2>&1', { background: true });
    await sbx.commands.run('for i in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:8000/ && exit 0; sleep 0.1; done; exit 1');
    assert.equal((await get('/i.txt', { Host: sbx.getHost(8000) })).status, 403);
    const ok = await get('/i.txt', { Host: sbx.getHost(8000), 'e2b-traffic-access-token': sbx.trafficAccessToken! });
    assert.equal(ok.status, 200);
    assert.equal(ok.body, 'from-gvisor\n');
  });

  it('keeps file metadata beside the files: getInfo, list, a rename carry it; a file a shell made again has none', async () => {
    const sbx = await newSandbox();
    await sbx.files.write('m.txt', 'one', { metadata: { author: 'alice' } });
    assert.deepEqual((await sbx.files.getInfo('m.txt')).metadata, { author: 'alice' });
    assert.deepEqual((await sbx.files.list('.')).find((e) => e.name === 'm.txt')?.metadata, { author: 'alice' });
    await sbx.files.rename('m.txt', 'sub/n.txt');
    assert.deepEqual((await sbx.files.getInfo('sub/n.txt')).metadata, { author: 'alice' }, 'carried by the rename');
    await sbx.commands.run('rm sub/n.txt && echo two > sub/n.txt');
    assert.equal((await sbx.files.getInfo('sub/n.txt')).metadata, undefined, 'a new file at the path (gVisor gives it the same inode) has none');
    // root's metadata on root's file is not the user's to read or replace
    await sbx.files.write('/root/r.txt', 'r', { user: 'root', metadata: { owner: 'root' } });
    assert.deepEqual((await sbx.files.getInfo('/root/r.txt', { user: 'root' })).metadata, { owner: 'root' });
    await assert.rejects(sbx.files.write('/root/r.txt', 'u', { metadata: { owner: 'user' } }), /permission denied/);
    assert.deepEqual((await sbx.files.getInfo('/root/r.txt', { user: 'root' })).metadata, { owner: 'root' });
    // it lives on the sandbox's own root, so a filesystem-only pause keeps it
    await sbx.files.write('kept.txt', 'k', { metadata: { kept: 'yes' } });
    await sbx.pause({ keepMemory: false });
    await sbx.connect();
    assert.deepEqual((await sbx.files.getInfo('kept.txt')).metadata, { kept: 'yes' });
  });

  it('a command sees its scoped env vars and the next one does not', async () => {
    const sbx = await newSandbox({ envs: { GLOBAL: 'g' } });
    const r = await sbx.commands.run('echo "$FOO $GLOBAL"', { envs: { FOO: 'bar' } });
    assert.equal(r.exitCode, 0);
    assert.equal(r.stdout, 'bar g\n');
    assert.equal((await sbx.commands.run('echo "[$FOO]"')).stdout, '[]\n');
    const py = await sbx.commands.run(`python3 -c "import os; print(os.environ['FOO'])"`, { envs: { FOO: 'py' } });
    assert.equal(py.stdout, 'py\n');
  });

  it('a filesystem-only pause resumes with its files, twice; a delete leaves nothing', async () => {
    const sbx = await newSandbox();
    await sbx.files.write('/home/user/state.txt', 'kept');
    for (let i = 0; i < 2; i++) {
      await sbx.pause({ keepMemory: false });
      assert.equal((await sbx.getInfo()).state, 'paused');
      await sbx.connect();
      assert.equal(await sbx.files.read('/home/user/state.txt'), 'kept');
      assert.ok(reached(await fetchIn(sbx, `http://${UPSTREAM}/`)), 'its network is back after a new boot');
    }
    await sbx.kill();
    assertNoSandboxLeaks(openPaths(dataDir, false), sbx.sandboxId);
  });
});
