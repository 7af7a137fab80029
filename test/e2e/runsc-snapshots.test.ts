// Memory snapshots of gVisor sandboxes (runsc) through the published SDK: a snapshot keeps the
// sandbox's processes and memory, and every sandbox created from it continues them with an
// identity of its own (envd token, network address); deleting the snapshot removes its image.
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { openPaths } from '../../src/config.js';
import { assertNoSandboxLeaks, destroyInstance } from '../helpers/instance.js';
import { getFrom, sdkService, type E2B, type Service } from '../helpers/service.js';

let e2b: E2B;
let svc: Service;
let dataDir: string;
let key: string;
type Sbx = Awaited<ReturnType<E2B['Sandbox']['create']>>;

/** A server whose answer (a random value and its PID) exists only in its memory. */
const SERVER = `
import http.server, os
value = os.urandom(8).hex()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{value} {os.getpid()}".encode()
        self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8000), H).serve_forever()
`;

/** Starts SERVER in a sandbox and waits until it answers. */
async function startServer(sbx: Sbx): Promise<void> {
  await sbx.files.write('/tmp/server.py', SERVER);
  await sbx.commands.run('python3 /tmp/server.py', { background: true });
  await sbx.commands.run('for i in $(seq 100); do curl -s http://127.0.0.1:8000/ >/dev/null && exit 0; sleep 0.1; done; exit 1');
}

/** The kind the service gives a snapshot in its listing. */
async function kindOf(snapshotId: string): Promise<string> {
  const listed = JSON.parse((await get('/snapshots', { 'X-API-Key': key })).body) as Array<{ snapshotID: string; kind: string }>;
  return listed.find((s) => s.snapshotID === snapshotId)!.kind;
}

/** What the server answers inside the sandbox. */
const served = async (sbx: Sbx) => (await sbx.commands.run('curl -sS --max-time 3 http://127.0.0.1:8000/')).stdout;

/** The sandbox's own address: the source of a datagram towards its gateway. */
async function address(sbx: Sbx): Promise<string> {
  const py = `import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect((open("/etc/resolv.conf").read().split()[1], 9)); print(s.getsockname()[0])`;
  return (await sbx.commands.run(`python3 -c '${py}'`)).stdout.trim();
}

const tokenOf = (sbx: Sbx) => (sbx as unknown as { envdAccessToken?: string }).envdAccessToken;

const get = (path: string, headers: Record<string, string>) => getFrom(svc, path, headers);

describe('memory snapshots of gVisor sandboxes', { timeout: 300_000, skip: !existsSync('/usr/bin/runsc') && 'runsc is not installed' }, () => {
  before(async () => {
    ({ svc, dataDir, e2b, key } = await sdkService({ CUBEBOX_RUNTIME: 'runsc', CUBEBOX_POOL: '' }));
  });
  after(async () => {
    await svc.stop();
    await destroyInstance(undefined, dataDir);
  });

  it('sandboxes created in parallel from a snapshot continue its processes and memory, each with its own token and address; deleting the snapshot removes its image', async () => {
    const src = await e2b.Sandbox.create('base');
    await startServer(src);
    const before = await served(src);
    assert.match(before, /^[0-9a-f]{16} \d+$/);

    const snap = await src.createSnapshot();
    const image = join(dataDir, 'checkpoints', snap.snapshotId);
    assert.ok(existsSync(join(image, 'checkpoint.img')), 'the checkpoint image is kept with the snapshot');
    assert.equal(await served(src), before, 'the source goes on where it was');
    assert.equal(await kindOf(snap.snapshotId), 'memory');

    const forks = await Promise.all([1, 2, 3].map(() => e2b.Sandbox.create(snap.snapshotId)));
    const everyone = [src, ...forks];
    let again!: Awaited<ReturnType<typeof src.createSnapshot>>;
    try {
      for (const f of forks) assert.equal(await served(f), before, 'the same server process, its value still in memory');
      for (const f of forks.slice(0, 2)) {
        const viaProxy = await get('/', { Host: f.getHost(8000) });
        assert.equal(viaProxy.body, before, 'its port is reached at its own address through the proxy');
      }
      const addresses = await Promise.all(everyone.map(address));
      assert.equal(new Set(addresses).size, everyone.length, `each has its own address: ${addresses.join(' ')}`);
      const tokens = everyone.map(tokenOf);
      assert.ok(tokens.every((t) => typeof t === 'string' && t.length > 0));
      assert.equal(new Set(tokens).size, everyone.length, 'each has its own envd token');
      const stale = await get('/envs', { Host: forks[0]!.getHost(49983), 'X-Access-Token': tokenOf(src)! });
      assert.equal(stale.status, 401, "a fork's envd refuses the source's token");
      const hostnames = await Promise.all(everyone.map(async (s) => (await s.commands.run('hostname')).stdout.trim()));
      assert.deepEqual(
        hostnames,
        everyone.map((s) => s.sandboxId),
        'each is named after itself',
      );
      // a sandbox paused to disk is snapshotted from the image it has
      await forks[2]!.pause();
      assert.ok(existsSync(join(dataDir, 'sandboxes', forks[2]!.sandboxId, 'checkpoint', 'checkpoint.img')), 'paused to disk');
      again = await e2b.Sandbox.createSnapshot(forks[2]!.sandboxId);
      const grandchild = await e2b.Sandbox.create(again.snapshotId);
      everyone.push(grandchild);
      assert.equal(await served(grandchild), before);
      await e2b.Sandbox.connect(forks[2]!.sandboxId);
      assert.equal(await served(forks[2]!), before, 'the paused one resumes as it was');
      // gVisor cannot save a TCP connection on the sandbox's link, even one closed less than a
      // minute ago: a sandbox just reached through the proxy is frozen by a pause, and its
      // snapshot keeps its files only (and says so)
      await forks[0]!.pause();
      assert.equal((await forks[0]!.getInfo()).state, 'paused');
      assert.equal(existsSync(join(dataDir, 'sandboxes', forks[0]!.sandboxId, 'checkpoint')), false, 'frozen, not on disk');
      await forks[0]!.connect();
      assert.equal(await served(forks[0]!), before, 'it goes on as it was');
      const filesOnly = await forks[1]!.createSnapshot();
      assert.equal(await kindOf(filesOnly.snapshotId), 'filesystem');
      assert.equal(await served(forks[1]!), before, 'and it runs on');
      assert.equal(await e2b.Sandbox.deleteSnapshot(filesOnly.snapshotId), true);
    } finally {
      await Promise.all(everyone.map((s) => s.kill()));
    }
    assert.equal(await e2b.Sandbox.deleteSnapshot(again.snapshotId), true);
    assert.equal(await e2b.Sandbox.deleteSnapshot(snap.snapshotId), true);
    assert.equal(existsSync(image), false, "the snapshot's image is removed with it");
    assert.deepEqual(readdirSync(join(dataDir, 'checkpoints')), [], 'and every other');
    for (const s of everyone) assertNoSandboxLeaks(openPaths(dataDir, false), s.sandboxId);
  });

  it('fork continues the processes in each new sandbox, and its image goes with its last sandbox', async () => {
    const src = await e2b.Sandbox.create('base');
    await startServer(src);
    const before = await served(src);
    const forks = (await e2b.Sandbox.fork(src.sandboxId, { count: 2 })).map((f) => {
      assert.ok(!(f instanceof Error), String(f));
      return f as Sbx;
    });
    try {
      for (const f of forks) assert.equal(await served(f), before);
      assert.notEqual(await address(forks[0]!), await address(forks[1]!));
    } finally {
      await Promise.all([src, ...forks].map((s) => s.kill()));
    }
    // the fork's snapshot is ephemeral: collected by the reconciler once no sandbox uses it
    const images = () => (existsSync(join(dataDir, 'checkpoints')) ? readdirSync(join(dataDir, 'checkpoints')) : []);
    for (let i = 0; i < 150 && images().length; i++) await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(images(), [], "the fork's image is removed");
    for (const s of [src, ...forks]) assertNoSandboxLeaks(openPaths(dataDir, false), s.sandboxId);
  });

  it("a crun sandbox's snapshot beside them keeps its files only, and says so", async () => {
    const src = await e2b.Sandbox.create('base', { metadata: { 'cubebox.runtime': 'crun' } });
    await startServer(src);
    await src.files.write('/home/user/kept.txt', 'kept');
    const snap = await src.createSnapshot();
    assert.equal(await kindOf(snap.snapshotId), 'filesystem');
    assert.equal(existsSync(join(dataDir, 'checkpoints', snap.snapshotId)), false);
    const child = await e2b.Sandbox.create(snap.snapshotId);
    try {
      assert.equal(await child.files.read('/home/user/kept.txt'), 'kept');
      assert.equal((await child.commands.run('curl -s --max-time 2 http://127.0.0.1:8000/ || echo none')).stdout.trim(), 'none', 'its processes are not');
    } finally {
      await Promise.all([child.kill(), src.kill()]);
    }
    assert.equal(await e2b.Sandbox.deleteSnapshot(snap.snapshotId), true);
  });
});
