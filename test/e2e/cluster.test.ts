// A cluster on this one machine: a real PostgreSQL, two nodes (`serve --role node`, each its own
// data directory and subnet) and two API replicas (`serve --role api`), driven with the published
// SDK through both replicas: creates spread over the nodes, clientID names the node holding the
// sandbox, commands (Connect streams), files, a user port and a WebSocket through either replica,
// kill through the other one; the cluster secret never reaches a sandbox (that a node refuses
// whatever lacks it is test/security/cluster-secret.test.ts). At the end nothing is left: no sandbox on any node, no
// netns, nft table or mount (destroyInstance asserts it), no PostgreSQL.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { openPaths } from '../../src/config.js';
import { CLUSTER_SECRET_HEADER } from '../../src/cluster/secret.js';
import { cli, destroyInstance, newDataDir } from '../helpers/instance.js';
import { startPostgres, type TestPostgres } from '../helpers/postgres.js';
import { startWsEcho, wsEchoThrough } from '../helpers/sandbox-servers.js';
import { startService, type E2B, type Service } from '../helpers/service.js';

type Sandbox = InstanceType<E2B['Sandbox']>;

describe('a cluster: two nodes behind two API replicas', { timeout: 1_200_000 }, () => {
  let db: TestPostgres | undefined;
  const secret = randomBytes(32).toString('hex');
  const secretDir = mkdtempSync(join(tmpdir(), 'cubebox-cluster-'));
  const secretFile = join(secretDir, 'secret');
  writeFileSync(secretFile, secret, { mode: 0o600 });
  const nodes: Array<{ svc: Service; dataDir: string; id: string; restart: () => Promise<void> }> = [];
  const replicas: Service[] = [];
  const replicaDirs: string[] = [];
  let key: string;
  let e2b: E2B;
  const created: Sandbox[] = [];

  before(async () => {
    db = await startPostgres();
    const cluster = ['--database', db.url, '--cluster-secret-file', secretFile];
    // each node its own address range: both run on this host
    const third = Math.floor(Math.random() * 120);
    for (const [i, subnet] of [
      `10.${211 + Math.floor(Math.random() * 20)}.${2 * third}.0/24`,
      `10.${211 + Math.floor(Math.random() * 20)}.${2 * third + 1}.0/24`,
    ].entries()) {
      const dataDir = newDataDir();
      const start = () => startService(dataDir, { env: { CUBEBOX_POOL: '', CUBEBOX_SUBNET: subnet }, args: ['--role', 'node', ...cluster] });
      const node = { svc: await start(), dataDir, id: openPaths(dataDir, false).instanceId, restart: async () => void (node.svc = await start()) };
      nodes.push(node);
      assert.ok(nodes[i]);
    }
    for (let i = 0; i < 2; i++) {
      const dir = newDataDir(); // an API replica has no data directory: this one stays empty
      replicaDirs.push(dir);
      // the shortest node lease: a node unheard for 10 s has its sandboxes reported lost
      replicas.push(await startService(dir, { env: { CUBEBOX_NODE_LEASE: '10' }, args: ['--role', 'api', ...cluster] }));
    }
    const r = await cli(nodes[0]!.dataDir, ['keys', 'create', '--name', 'cluster', '--team', 'clusterteam'], { CUBEBOX_DATABASE: db.url });
    assert.equal(r.code, 0, r.stderr);
    key = r.stdout.trim().split('\n').pop()!.trim();
    process.env.E2B_API_KEY = key;
    process.env.E2B_API_URL = replicas[0]!.url;
    process.env.E2B_SANDBOX_URL = replicas[0]!.url;
    delete process.env.E2B_DEBUG;
    e2b = (await import('e2b')) as unknown as E2B;
  });

  after(async () => {
    for (const s of created) await s.kill().catch(() => undefined);
    for (const r of replicas) await r.stop();
    for (const n of nodes) await n.svc.stop();
    for (const n of nodes) await destroyInstance(undefined, n.dataDir); // asserts no sandbox, netns, nft table or mount is left
    for (const d of replicaDirs) rmSync(d, { recursive: true, force: true });
    await db?.stop();
    rmSync(secretDir, { recursive: true, force: true });
  });

  const through = (i: number) => ({ apiUrl: replicas[i]!.url, sandboxUrl: replicas[i]!.url });
  const rest = async (i: number, path: string, init: { method?: string; headers?: Record<string, string> } = {}) => {
    const r = await fetch(`${replicas[i]!.url}${path}`, { method: init.method ?? 'GET', headers: { 'X-API-KEY': key, ...init.headers } });
    return { status: r.status, text: await r.text(), retryAfter: r.headers.get('retry-after') };
  };

  it('registers both nodes with their capacity in PostgreSQL', async () => {
    const c = new pg.Client({ connectionString: db!.url });
    await c.connect();
    try {
      const rows = (
        await c.query<{ id: string; address: string; runtimes: string[]; cpus: number; free_slots: number; templates: string[] }>(
          'SELECT * FROM nodes ORDER BY id',
        )
      ).rows;
      assert.deepEqual(
        rows.map((r) => r.id),
        nodes.map((n) => n.id).sort(),
      );
      for (const r of rows) {
        assert.equal(r.address, nodes.find((n) => n.id === r.id)!.svc.url);
        assert.ok(r.runtimes.length > 0 && r.cpus > 0 && r.free_slots > 0, JSON.stringify(r));
        assert.ok(r.templates.includes('base'), JSON.stringify(r.templates));
      }
    } finally {
      await c.end();
    }
  });

  it('spreads creates over both nodes; clientID names the node; either replica serves any sandbox; kill through the other', async () => {
    for (let i = 0; i < 4; i++) created.push(await e2b.Sandbox.create('base', through(i % 2)));
    const holders = new Map<string, string>();
    for (const [i, sbx] of created.entries()) {
      const detail = await rest((i + 1) % 2, `/sandboxes/${sbx.sandboxId}`);
      assert.equal(detail.status, 200, detail.text);
      const clientID = (JSON.parse(detail.text) as { clientID: string }).clientID;
      assert.ok(
        nodes.some((n) => n.id === clientID),
        `clientID ${clientID} is a node`,
      );
      holders.set(sbx.sandboxId, clientID);
    }
    assert.equal(new Set(holders.values()).size, 2, `creates spread over both nodes: ${JSON.stringify([...holders])}`);
    // the list through either replica has all of them, each with its node
    for (const i of [0, 1]) {
      const list = JSON.parse((await rest(i, '/sandboxes')).text) as Array<{ sandboxID: string; clientID: string }>;
      assert.deepEqual(new Map(list.map((s) => [s.sandboxID, s.clientID])), holders);
    }
    // paged (v2) one at a time across both nodes: each sandbox once, newest first
    const pager = e2b.Sandbox.list({ limit: 1, ...through(1) });
    const paged: string[] = [];
    while (pager.hasNext) paged.push(...(await pager.nextItems()).map((s) => s.sandboxId));
    assert.deepEqual(paged, created.map((s) => s.sandboxId).reverse());

    for (const [i, made] of created.entries()) {
      const other = await e2b.Sandbox.connect(made.sandboxId, through((i + 1) % 2));
      for (const sbx of [made, other]) {
        assert.equal((await sbx.commands.run(`echo ${sbx === made ? 'one' : 'two'}`)).stdout, `${sbx === made ? 'one' : 'two'}\n`);
      }
      // a streamed command (Connect server stream) through one replica, files through the other
      let streamed = '';
      const cmd = await made.commands.run('for i in 1 2 3; do echo line$i; sleep 0.1; done', { onStdout: (d) => void (streamed += d) });
      assert.equal(cmd.exitCode, 0);
      assert.equal(streamed, 'line1\nline2\nline3\n');
      await other.files.write('/tmp/through.txt', `written via replica ${(i + 1) % 2}`);
      assert.equal(await made.files.read('/tmp/through.txt'), `written via replica ${(i + 1) % 2}`);
      // a signed download URL without the sandbox in it: the replica finds the node whose sandbox signed it
      const signed = new URL(await made.downloadUrl('/tmp/through.txt', { useSignatureExpiration: 60 }));
      const got = await fetch(`${replicas[(i + 1) % 2]!.url}${signed.pathname}${signed.search}`);
      assert.equal(await got.text(), `written via replica ${(i + 1) % 2}`);
      const forged = await fetch(`${replicas[i % 2]!.url}${signed.pathname}${signed.search.replace('signature=v1_', 'signature=v1_x')}`);
      assert.equal(forged.status, 401);
      // a signed upload URL the same way: the replica probes the nodes, then streams the body to the one that signed it
      const up = new URL(await made.uploadUrl('/tmp/up.txt', { useSignatureExpiration: 60 }));
      const form = () => {
        const f = new FormData();
        f.append('file', new Blob([`uploaded via replica ${i % 2}`]), 'up.txt');
        return f;
      };
      const put = await fetch(`${replicas[i % 2]!.url}${up.pathname}${up.search}`, { method: 'POST', body: form() });
      assert.equal(put.status, 200, await put.text());
      assert.equal(await other.files.read('/tmp/up.txt'), `uploaded via replica ${i % 2}`);
      const badUp = await fetch(`${replicas[i % 2]!.url}${up.pathname}${up.search.replace('signature=v1_', 'signature=v1_x')}`, {
        method: 'POST',
        body: form(),
      });
      assert.equal(badUp.status, 401);
    }
  });

  it('serves a user port and a WebSocket through either replica; the cluster secret never reaches the sandbox', async () => {
    const sbx = created[0]!;
    await sbx.commands.run(`cat > /tmp/headers.py <<'EOF'
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        b = str(self.headers).encode()
        self.send_response(200); self.send_header('Content-Length', str(len(b))); self.end_headers(); self.wfile.write(b)
    def log_message(self, *a): pass
HTTPServer(('0.0.0.0', 8000), H).serve_forever()
EOF`);
    await startWsEcho(sbx, 8001);
    await sbx.commands.run('python3 /tmp/headers.py >/dev/null 2>&1', { background: true });
    await sbx.commands.run(
      'for i in $(seq 100); do (echo > /dev/tcp/127.0.0.1/8000) 2>/dev/null && (echo > /dev/tcp/127.0.0.1/8001) 2>/dev/null && exit 0; sleep 0.1; done; exit 1',
    );
    for (const i of [0, 1]) {
      const host = `8000-${sbx.sandboxId}.localhost`;
      // a client that sends the header itself gets it replaced, and the node drops it before the sandbox
      const r = await fetch(`${replicas[i]!.url}/`, {
        headers: { 'E2b-Sandbox-Id': sbx.sandboxId, 'E2b-Sandbox-Port': '8000', [CLUSTER_SECRET_HEADER]: 'guess' },
      });
      const seen = await r.text();
      assert.equal(r.status, 200, seen);
      assert.ok(!seen.toLowerCase().includes(CLUSTER_SECRET_HEADER) && !seen.includes(secret), seen);
      const echoed = await wsEchoThrough(replicas[i]!.port, host.replace('8000-', '8001-'), `ping via replica ${i}`);
      assert.equal(echoed, `ping via replica ${i}`);
    }
  });

  it('measures the extra hop: envd requests and creates through a replica and straight to the node (printed, not asserted)', async () => {
    const sbx = created[0]!;
    const holder = JSON.parse((await rest(0, `/sandboxes/${sbx.sandboxId}`)).text) as { clientID: string };
    const node = nodes.find((n) => n.id === holder.clientID)!.svc;
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    // the node itself, as a replica reaches it: the secret in a header (the SDK's envd calls cannot add one, so envd's /health by hand)
    const envd = { node: [] as number[], replica: [] as number[] };
    for (let i = 0; i < 41; i++) {
      for (const [name, url, extra] of [
        ['node', node.url, { [CLUSTER_SECRET_HEADER]: secret }],
        ['replica', replicas[1]!.url, {}],
      ] as const) {
        const t0 = performance.now();
        const r = await fetch(`${url}/health`, { headers: { 'E2b-Sandbox-Id': sbx.sandboxId, 'E2b-Sandbox-Port': '49983', ...extra } });
        await r.arrayBuffer();
        assert.ok(r.ok, `${name}: ${r.status}`);
        envd[name].push(performance.now() - t0);
      }
    }
    const commands: number[] = [];
    for (let i = 0; i < 11; i++) {
      const t0 = performance.now();
      await sbx.commands.run('true');
      commands.push(performance.now() - t0);
    }
    const creates = { node: [] as number[], replica: [] as number[] };
    for (let i = 0; i < 3; i++) {
      for (const [name, opts] of [
        ['node', { apiUrl: node.url, sandboxUrl: node.url, headers: { [CLUSTER_SECRET_HEADER]: secret } }],
        ['replica', through(0)],
      ] as const) {
        const t0 = performance.now();
        const s = await e2b.Sandbox.create('base', opts);
        creates[name].push(performance.now() - t0);
        assert.equal(await s.kill(), true); // each through the way it was made
      }
    }
    const line = (what: string, xs: { node: number[]; replica: number[] }) =>
      `# ${what} p50: node ${median(xs.node).toFixed(2)} ms, through a replica ${median(xs.replica).toFixed(2)} ms (x${(median(xs.replica) / median(xs.node)).toFixed(2)})`;
    console.log(line('envd GET /health', envd));
    console.log(line('Sandbox.create', creates));
    console.log(`# commands.run('true') through a replica p50: ${median(commands).toFixed(1)} ms`);
  });

  it('runs a terminal through one replica and pauses and resumes through the other, keeping its files and processes', async () => {
    const sbx = created[1]!;
    let out = '';
    const pty = await sbx.pty.create({ cols: 91, rows: 27, onData: (d) => void (out += new TextDecoder().decode(d)) });
    await sbx.pty.sendInput(pty.pid, new TextEncoder().encode('tput cols; echo pty-$((6*7)); exit\n'));
    await pty.wait().catch(() => undefined);
    assert.match(out, /\b91\b/);
    assert.match(out, /pty-42/);
    await sbx.commands.run('echo kept > /tmp/kept; sleep 3600 >/dev/null 2>&1 &');
    const other = await e2b.Sandbox.connect(sbx.sandboxId, through(1));
    assert.equal(await other.pause(), true);
    assert.equal(JSON.parse((await rest(0, `/sandboxes/${sbx.sandboxId}`)).text).state, 'paused');
    const back = await e2b.Sandbox.connect(sbx.sandboxId, through(0)); // resumes it
    assert.equal((await back.commands.run('cat /tmp/kept; pgrep -x sleep >/dev/null && echo running')).stdout, 'kept\nrunning\n');
  });

  it('keeps running sandboxes served through the replicas while PostgreSQL is down (creates 503), and converges when it is back', async () => {
    const listed = async (i: number) =>
      new Map((JSON.parse((await rest(i, '/sandboxes')).text) as Array<{ sandboxID: string; clientID: string }>).map((s) => [s.sandboxID, s.clientID]));
    const before = await listed(0);
    assert.deepEqual([...before.keys()].sort(), created.map((s) => s.sandboxId).sort());
    const createThrough = (i: number) =>
      fetch(`${replicas[i]!.url}/sandboxes`, {
        method: 'POST',
        headers: { 'X-API-KEY': key, 'content-type': 'application/json' },
        body: JSON.stringify({ templateID: 'base' }),
      });
    /** Each sandbox through both replicas' data plane: a command, a file written through one and read through the other, the WebSocket. */
    const dataPlane = async (round: string) => {
      for (const [i, sbx] of created.entries()) {
        assert.equal((await sbx.commands.run(`echo ${round}`)).stdout, `${round}\n`);
        await sbx.files.write('/tmp/outage.txt', `${round} ${i}`);
        assert.equal(await sbx.files.read('/tmp/outage.txt'), `${round} ${i}`);
      }
      for (const i of [0, 1]) assert.equal(await wsEchoThrough(replicas[i]!.port, `8001-${created[0]!.sandboxId}.localhost`, `${round} ${i}`), `${round} ${i}`);
    };
    const nodeMetric = async (n: (typeof nodes)[number], name: string) => {
      const text = await (await fetch(`${n.svc.url}/metrics`, { headers: { [CLUSTER_SECRET_HEADER]: secret } })).text();
      return Number(new RegExp(`^${name.replace(/[{}"]/g, '\\$&')} (\\d+)`, 'm').exec(text)?.[1] ?? NaN);
    };
    const failedBefore = await Promise.all(nodes.map((n) => nodeMetric(n, 'cubebox_cluster_heartbeats_total{outcome="failed"}')));

    await db!.halt();
    try {
      for (const i of [0, 1]) {
        const r = await createThrough(i);
        assert.equal(r.status, 503, await r.text());
        assert.ok(Number(r.headers.get('retry-after')) > 0, `Retry-After: ${r.headers.get('retry-after')}`);
        const list = await rest(i, '/sandboxes');
        assert.equal(list.status, 503, list.text);
        assert.ok(Number(list.retryAfter) > 0);
      }
      await dataPlane('down');
      // longer than the replicas' node lease (10 s): no heartbeat could be written, yet no sandbox is lost
      await new Promise((r) => setTimeout(r, 12_000));
      await dataPlane('still');
      for (const i of [0, 1]) {
        // the control plane needs the database (the nodes check the key there): a 503, not 'lost'
        const detail = await rest(i, `/sandboxes/${created[i]!.sandboxId}`);
        assert.equal(detail.status, 503, detail.text);
        assert.ok(Number(detail.retryAfter) > 0);
        assert.equal((await createThrough(i)).status, 503);
      }
      for (const [i, n] of nodes.entries())
        assert.ok((await nodeMetric(n, 'cubebox_cluster_heartbeats_total{outcome="failed"}')) > failedBefore[i]!, 'heartbeats failed meanwhile');
    } finally {
      await db!.start();
    }

    // back: heartbeats are written again, creates go through, and both replicas list the same sandboxes with their nodes
    const c = new pg.Client({ connectionString: db!.url });
    await c.connect();
    try {
      const back = Date.now();
      for (let i = 0; i < 60; i++) {
        const fresh = (await c.query<{ heartbeat_at: string }>('SELECT heartbeat_at FROM nodes')).rows.filter((r) => Number(r.heartbeat_at) > back);
        if (fresh.length === nodes.length) break;
        await new Promise((r) => setTimeout(r, 500));
      }
      assert.equal((await c.query('SELECT 1 FROM nodes WHERE heartbeat_at > $1', [back])).rowCount, nodes.length, 'every node heartbeats again');
    } finally {
      await c.end();
    }
    let made: Response | undefined;
    for (let i = 0; i < 60 && made?.status !== 201; i++) {
      if (made) await new Promise((r) => setTimeout(r, 500));
      made = await createThrough(i % 2);
    }
    assert.equal(made!.status, 201, await made!.clone().text());
    const fresh = (await made!.json()) as { sandboxID: string; clientID: string };
    for (const i of [0, 1]) assert.deepEqual(await listed(i), new Map([...before, [fresh.sandboxID, fresh.clientID]]));
    assert.equal((await rest(1, `/sandboxes/${fresh.sandboxID}`, { method: 'DELETE' })).status, 204);
    for (const [i, sbx] of created.entries()) assert.equal((await rest((i + 1) % 2, `/sandboxes/${sbx.sandboxId}`)).status, 200);
    await dataPlane('back');
  });

  it('a client streaming through a replica that is killed sees its stream fail; the sandbox and its command go on, through the other replica', async () => {
    const sbx = created[1]!; // made through replica 1
    let seen = '';
    const cmd = await sbx.commands.run('for i in $(seq 1 60); do echo tick$i; echo tick$i >> /tmp/ticks; sleep 0.1; done', {
      background: true,
      onStdout: (d) => void (seen += d),
    });
    for (let i = 0; i < 100 && !seen.includes('tick3'); i++) await new Promise((r) => setTimeout(r, 100));
    assert.ok(seen.includes('tick3'), seen);
    await replicas[1]!.crash();
    await assert.rejects(cmd.wait(), 'the stream through the killed replica fails');

    const other = await e2b.Sandbox.connect(sbx.sandboxId, through(0));
    const running = await other.commands.list();
    assert.ok(
      running.some((p) => p.pid === cmd.pid),
      `the command still runs: ${JSON.stringify(running)}`,
    );
    const again = await other.commands.connect(cmd.pid);
    assert.equal((await again.wait()).exitCode, 0);
    const ticks = (await other.files.read('/tmp/ticks')).trim().split('\n');
    assert.equal(ticks.length, 60, 'the command ran to its end');
    assert.equal(ticks.at(-1), 'tick60');
    // the replica comes back (a new process, a new port): it routes the sandbox as before
    replicas[1] = await startService(replicaDirs[1]!, {
      env: { CUBEBOX_NODE_LEASE: '10' },
      args: ['--role', 'api', '--database', db!.url, '--cluster-secret-file', secretFile],
    });
    const via1 = await e2b.Sandbox.connect(sbx.sandboxId, through(1));
    assert.equal((await via1.commands.run('echo via1')).stdout, 'via1\n');
    created[1] = via1;
  });

  it('kills through the other replica, after which neither finds the sandbox', async () => {
    for (const [i, sbx] of created.entries()) {
      assert.equal((await rest((i + 1) % 2, `/sandboxes/${sbx.sandboxId}`, { method: 'DELETE' })).status, 204);
      for (const r of [0, 1]) assert.equal((await rest(r, `/sandboxes/${sbx.sandboxId}`)).status, 404);
    }
    const gone = created[0]!.sandboxId;
    created.length = 0;
    for (const i of [0, 1]) assert.deepEqual(JSON.parse((await rest(i, '/sandboxes')).text), []);
    // the data plane of a killed sandbox, plain and WebSocket, answers as a node alone does
    const plain = await fetch(`${replicas[1]!.url}/health`, { headers: { 'E2b-Sandbox-Id': gone } });
    assert.equal(plain.status, 502);
    const upgrade = await new Promise<string>((resolve, reject) => {
      const s = connect(replicas[0]!.port, '127.0.0.1', () =>
        s.write(
          `GET / HTTP/1.1\r\nHost: 8001-${gone}.localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`,
        ),
      );
      let buf = '';
      s.on('data', (d: Buffer) => (buf += d.toString()));
      s.on('close', () => resolve(buf));
      s.on('error', reject);
    });
    assert.match(upgrade, /^HTTP\/1.1 502/);
    const c = new pg.Client({ connectionString: db!.url });
    await c.connect();
    try {
      assert.deepEqual((await c.query('SELECT * FROM sandbox_nodes')).rows, [], 'no sandbox is mapped to a node any more');
    } finally {
      await c.end();
    }
  });

  it("holds a team's quota across both nodes: creates racing through both replicas pass it by none", async () => {
    const env = { CUBEBOX_DATABASE: db!.url };
    const made = await cli(nodes[0]!.dataDir, ['keys', 'create', '--name', 'capped', '--team', 'cappedteam'], env);
    assert.equal(made.code, 0, made.stderr);
    const cappedKey = made.stdout.trim().split('\n').pop()!.trim();
    const set = await cli(nodes[0]!.dataDir, ['teams', 'set-quota', 'cappedteam', '--sandboxes', '2'], env);
    assert.equal(set.code, 0, set.stderr);
    const post = (i: number) =>
      fetch(`${replicas[i % 2]!.url}/sandboxes`, {
        method: 'POST',
        headers: { 'X-API-KEY': cappedKey, 'content-type': 'application/json' },
        body: JSON.stringify({ templateID: 'base', timeout: 120 }),
      }).then(async (r) => ({ status: r.status, body: JSON.parse(await r.text()) as { sandboxID?: string; clientID?: string; message?: string } }));
    const answers = await Promise.all([...Array(6).keys()].map(post));
    const ok = answers.filter((a) => a.status === 201);
    try {
      assert.equal(ok.length, 2, JSON.stringify(answers.map((a) => [a.status, a.body.message ?? a.body.clientID])));
      for (const a of answers.filter((x) => x.status !== 201)) {
        assert.equal(a.status, 429, JSON.stringify(a.body));
        assert.match(a.body.message ?? '', /\(sandboxes\)/);
      }
      console.log(
        `quota across nodes: 2 admitted of 6 (on ${ok.map((a) => a.body.clientID).join(', ')}); refusals: ${answers.filter((a) => a.status === 429).length}`,
      );
      assert.ok(
        answers.some((a) => /across the cluster's nodes/.test(a.body.message ?? '')),
        'a refusal counted the other node',
      );
    } finally {
      for (const a of ok) await fetch(`${replicas[0]!.url}/sandboxes/${a.body.sandboxID}`, { method: 'DELETE', headers: { 'X-API-KEY': cappedKey } });
    }
  });

  it("places the sandboxes that mount a volume on the volume's node; the volume API works through either replica", async () => {
    process.env.E2B_VOLUME_API_URL = replicas[1]!.url;
    const vol = await e2b.Volume.create('clustervol');
    const sandboxes: Sandbox[] = [];
    const c = new pg.Client({ connectionString: db!.url });
    await c.connect();
    try {
      const [row] = (await c.query<{ node_id: string; name: string }>('SELECT node_id, name FROM volume_nodes WHERE volume_id = $1', [vol.volumeId])).rows;
      assert.equal(row?.name, 'clustervol', 'the replica recorded where the volume is');
      for (let i = 0; i < 3; i++) {
        const s = await e2b.Sandbox.create('base', { ...through(i % 2), volumeMounts: { '/mnt/v': 'clustervol' } });
        sandboxes.push(s);
        assert.equal(JSON.parse((await rest(0, `/sandboxes/${s.sandboxId}`)).text).clientID, row!.node_id, 'placed on the volume node');
      }
      await sandboxes[0]!.commands.run('echo across > /mnt/v/note');
      assert.equal((await sandboxes[2]!.commands.run('cat /mnt/v/note')).stdout, 'across\n');
      assert.equal(await vol.readFile('/note'), 'across\n');
      assert.ok(
        (await e2b.Volume.list({ ...through(1) })).some((v) => v.volumeId === vol.volumeId),
        'listed through the other replica',
      );
    } finally {
      for (const s of sandboxes) await s.kill();
      await e2b.Volume.destroy(vol.volumeId, { ...through(1) });
      delete process.env.E2B_VOLUME_API_URL;
      try {
        // a heartbeat that listed it just before may put it back: the next one drops it
        const until = Date.now() + 10_000;
        while ((await c.query('SELECT * FROM volume_nodes')).rows.length && Date.now() < until) await new Promise((r) => setTimeout(r, 200));
        assert.deepEqual((await c.query('SELECT * FROM volume_nodes')).rows, [], 'a destroyed volume is routed no more');
      } finally {
        await c.end();
      }
    }
  });

  it('answers 503 with a Retry-After when no node can take a create', async () => {
    const r = await fetch(`${replicas[0]!.url}/sandboxes`, {
      method: 'POST',
      headers: { 'X-API-KEY': key, 'content-type': 'application/json' },
      body: JSON.stringify({ templateID: 'base', metadata: { 'cubebox.runtime': 'no-such-runtime' } }),
    });
    assert.equal(r.status, 503, await r.text());
    assert.ok(Number(r.headers.get('retry-after')) > 0);
  });
  it('sends a create elsewhere when the node placement picked is gone (killed, its heartbeat still fresh)', async () => {
    await nodes[1]!.svc.crash();
    const survivor = nodes[0]!.id;
    for (let i = 0; i < 3; i++) {
      const sbx = await e2b.Sandbox.create('base', through(i % 2));
      created.push(sbx);
      assert.equal((JSON.parse((await rest((i + 1) % 2, `/sandboxes/${sbx.sandboxId}`)).text) as { clientID: string }).clientID, survivor);
      assert.equal((await sbx.commands.run('echo alive')).stdout, 'alive\n');
    }
    for (const sbx of created.splice(0)) assert.equal(await sbx.kill(), true);
  });

  it("reports a silent node's sandboxes lost after the lease; a kill meanwhile is carried out when the node is back, which reports the rest again", async () => {
    await nodes[1]!.restart(); // killed by the test before
    const onIt: Sandbox[] = [];
    for (let i = 0; i < 8 && onIt.length < 2; i++) {
      const sbx = await e2b.Sandbox.create('base', through(i % 2));
      const holder = (JSON.parse((await rest(0, `/sandboxes/${sbx.sandboxId}`)).text) as { clientID: string }).clientID;
      (holder === nodes[1]!.id ? onIt : created).push(sbx);
    }
    assert.equal(onIt.length, 2, 'two sandboxes on the second node');
    const [killed, kept] = onIt as [Sandbox, Sandbox];
    await nodes[1]!.svc.crash(); // its sandboxes keep running; the node is silent (502 until the lease ends)
    let lost = await rest(0, `/sandboxes/${kept.sandboxId}`);
    for (let i = 0; i < 60 && lost.status !== 404; i++) {
      await new Promise((r) => setTimeout(r, 500));
      lost = await rest(0, `/sandboxes/${kept.sandboxId}`);
    }
    assert.equal(lost.status, 404, lost.text);
    assert.match(lost.text, /is lost: its node \w+ has not been heard from/);
    assert.equal((JSON.parse(lost.text) as { cubeboxState: string }).cubeboxState, 'lost');
    assert.equal((await rest(1, `/sandboxes/${killed.sandboxId}`, { method: 'DELETE' })).status, 204, 'a kill of a lost sandbox is taken');
    assert.equal((await rest(1, `/sandboxes/${killed.sandboxId}`)).status, 404);

    await nodes[1]!.restart();
    // back: the kept one is reported again and works; the killed one is deleted on the node
    let back = await rest(1, `/sandboxes/${kept.sandboxId}`);
    for (let i = 0; i < 60 && back.status !== 200; i++) {
      await new Promise((r) => setTimeout(r, 500));
      back = await rest(1, `/sandboxes/${kept.sandboxId}`);
    }
    assert.equal(back.status, 200, back.text);
    assert.equal((await kept.commands.run('echo back')).stdout, 'back\n');
    const c = new pg.Client({ connectionString: db!.url });
    await c.connect();
    try {
      let left = 1;
      for (let i = 0; i < 60 && left; i++) {
        left = (await c.query('SELECT 1 FROM sandbox_tombstones WHERE sandbox_id = $1', [killed.sandboxId])).rowCount ?? 0;
        if (left) await new Promise((r) => setTimeout(r, 500));
      }
      assert.equal(left, 0, 'the tombstone goes once the node deleted the sandbox');
    } finally {
      await c.end();
    }
    const onNode = (JSON.parse((await rest(0, '/sandboxes')).text) as Array<{ sandboxID: string }>).map((s) => s.sandboxID);
    assert.ok(!onNode.includes(killed.sandboxId) && onNode.includes(kept.sandboxId));
    assert.equal((await rest(0, `/sandboxes/${killed.sandboxId}`)).status, 404);
    assert.equal(await kept.kill(), true);
    for (const sbx of created.splice(0)) assert.equal(await sbx.kill(), true);
  });
});
