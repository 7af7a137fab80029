// `cubebox bench --cluster`: a cluster on this one host (scripts/cluster-local.sh: PostgreSQL in a
// temporary directory, 3 nodes, 2 API replicas) next to a single `cubebox serve` (--role all, its
// SQLite store) started in the same run. Through the published SDK: create p50 and
// commands.run('true') p50 through a replica against the single node, and a burst of creates
// over both replicas against the same burst on the single node. From the processes' own
// counters (cubebox_db_statements_total, cubebox_cluster_heartbeats_total): the statements a
// create, a kill and a heartbeat cost, and what each process sends idle; from the server's
// /proc, the database's CPU per create. Everything started is stopped and removed at the end,
// and what was left is reported as the part's error.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { CLUSTER_SECRET_HEADER } from '../cluster/secret.js';
import { openRowCounter, type RowCounter } from '../store/pg/metrics.js';
import { emptyPart, figure, mapLimit, median, now, sleep, timed, type PartReport } from './report.js';

const run = promisify(execFile);
const CLI = fileURLToPath(new URL('../cli/main.js', import.meta.url));
const SCRIPT = fileURLToPath(new URL('../../../scripts/cluster-local.sh', import.meta.url));
/** The single node's own address range (cluster-local.sh's nodes take 10.250.16-63.x). */
const SINGLE_SUBNET = '10.249.0.0/20';
const NODES = 3;
const REPLICAS = 2;
/** The idle window that measures what heartbeats and the replicas' route refreshes cost alone. */
const IDLE_MS = 10_000;

type Sdk = typeof import('e2b').Sandbox;
type SdkSandbox = Awaited<ReturnType<Sdk['create']>>;
type ConnectOpts = { apiKey: string; apiUrl: string; sandboxUrl: string };

interface Counters {
  /** Statements per process, by pool (replicas r1.., nodes n1..). */
  statements: Record<string, number>;
  /** Heartbeats the nodes wrote, together, the statements those sent, and the heartbeats that failed. */
  heartbeats: number;
  heartbeatStatements: number;
  heartbeatsFailed: number;
  /** The database server's CPU, ms. */
  pgCpuMs: number;
  /** Rows inserted, updated and deleted in all tables (the server's statistics, flushed by each backend at least every second it works). */
  rowsWritten: number;
  at: number;
}

export interface ClusterBenchOptions {
  iterations: number;
  burst: number;
}

export async function clusterBench(o: ClusterBenchOptions, log: (s: string) => void = () => undefined): Promise<PartReport> {
  if (!existsSync(SCRIPT)) throw new Error(`the cluster part needs the source checkout's ${SCRIPT}`);
  const report = emptyPart();
  const work = mkdtempSync('/var/tmp/cubebox-bench-cluster-');
  chmodSync(work, 0o755); // the database server runs as the postgres user, under it
  const dir = join(work, 'cluster'); // the script makes it and refuses one that exists
  const base = await freePortBase();
  const env = { ...process.env, CUBEBOX_CLUSTER_DIR: dir, CUBEBOX_CLUSTER_PORT: String(base), CUBEBOX_POOL: '' };
  const single = { dataDir: join(work, 'single'), child: undefined as ChildProcess | undefined };
  const made: Array<{ sbx: SdkSandbox }> = [];
  let clusterUp = false;
  let db: RowCounter | undefined;
  const leaks: string[] = [];
  try {
    log('starting PostgreSQL, 3 nodes and 2 API replicas (scripts/cluster-local.sh up)');
    clusterUp = true; // a failed `up` leaves parts of it: `down` takes them away
    const up = await run('bash', [SCRIPT, 'up'], { env, maxBuffer: 1 << 20, timeout: 15 * 60_000 });
    const apis = [...up.stdout.matchAll(/^api=(\S+)$/gm)].map((m) => m[1]!);
    const key = /^key=(\S+)$/m.exec(up.stdout)?.[1];
    if (apis.length !== REPLICAS || !key) throw new Error(`cluster-local.sh up printed no replicas or key:\n${up.stdout}`);
    const secret = readFileSync(join(dir, 'cluster.secret'), 'utf8').trim();
    const nodeUrls = Array.from({ length: NODES }, (_, i) => `http://127.0.0.1:${base + i + 1}`);
    db = await openRowCounter(`postgresql://postgres@/cubebox?host=${join(dir, 'pg')}`);

    log('starting a single cubebox serve (--role all) beside it');
    single.child = await serveAlone(single.dataDir);
    const singleUrl = await readyUrl(single.child);
    const singleKey = (await run(process.execPath, [CLI, '--data-dir', single.dataDir, 'keys', 'create', '--name', 'bench', '--team', 'bench'])).stdout
      .trim()
      .split('\n')
      .pop()!
      .trim();
    // the bursts measure the hosts, not a team's default limits: both teams get room for them
    const room = ['--sandboxes', '100000', '--vcpus', '100000', '--memory-mb', '100000000', '--disk-mb', '100000000'];
    await run(process.execPath, [CLI, '--data-dir', single.dataDir, 'teams', 'set-quota', 'bench', ...room]);
    await run(process.execPath, [CLI, '--data-dir', join(dir, 'node1'), 'teams', 'set-quota', 'local', ...room], {
      env: { ...process.env, CUBEBOX_DATABASE: `postgresql://postgres@/cubebox?host=${join(dir, 'pg')}` },
    });

    delete process.env.E2B_DEBUG;
    const { Sandbox } = await import('e2b');
    const via = {
      single: { apiKey: singleKey, apiUrl: singleUrl, sandboxUrl: singleUrl },
      replica: (i: number) => ({ apiKey: key, apiUrl: apis[i % REPLICAS]!, sandboxUrl: apis[i % REPLICAS]! }),
    };
    const create = async (opts: ConnectOpts) => {
      const sbx = await Sandbox.create('base', opts);
      made.push({ sbx });
      return sbx;
    };
    const kill = async (sbx: SdkSandbox) => {
      await sbx.kill();
      const at = made.findIndex((m) => m.sbx === sbx);
      if (at >= 0) made.splice(at, 1);
    };
    const counters = async (): Promise<Counters> => {
      const statements: Record<string, number> = {};
      let [heartbeats, heartbeatStatements, heartbeatsFailed] = [0, 0, 0];
      for (const [i, url] of apis.entries()) {
        const text = await scrape(url, {});
        for (const [pool, n] of samples(text, 'cubebox_db_statements_total', 'pool')) statements[`r${i + 1}.${pool}`] = n;
      }
      for (const [i, url] of nodeUrls.entries()) {
        const text = await scrape(url, { [CLUSTER_SECRET_HEADER]: secret });
        for (const [pool, n] of samples(text, 'cubebox_db_statements_total', 'pool')) statements[`n${i + 1}.${pool}`] = n;
        const beats = samples(text, 'cubebox_cluster_heartbeats_total', 'outcome');
        heartbeats += beats.get('written') ?? 0;
        heartbeatsFailed += beats.get('failed') ?? 0;
        heartbeatStatements += Number(/^cubebox_cluster_heartbeat_statements_total (\S+)$/m.exec(text)?.[1] ?? NaN);
      }
      const rowsWritten = await db!.rowsWritten();
      return { statements, heartbeats, heartbeatStatements, heartbeatsFailed, pgCpuMs: pgCpuMs(join(dir, 'pg', 'data')), rowsWritten, at: now() };
    };
    const delta = (a: Counters, b: Counters, which: (k: string) => boolean) =>
      Object.keys(b.statements)
        .filter(which)
        .reduce((s, k) => s + b.statements[k]! - (a.statements[k] ?? 0), 0);
    const isReplica = (k: string) => k.startsWith('r');
    const isNode = (k: string) => k.startsWith('n');
    /** What the replicas and nodes sent between two readings, the nodes' heartbeats left out (counted by each heartbeat). */
    const work = (a: Counters, b: Counters) => delta(a, b, (k) => isReplica(k) || isNode(k)) - (b.heartbeatStatements - a.heartbeatStatements);

    // idle: heartbeats (a node's cluster pool sends nothing else) and the replicas' route refreshes
    await sleep(2000);
    log('idle window: heartbeats and route refreshes alone');
    const i0 = await counters();
    await sleep(IDLE_MS);
    const i1 = await counters();
    const idleS = (i1.at - i0.at) / 1000;
    const beats = i1.heartbeats - i0.heartbeats;
    const perHeartbeat = (i1.heartbeatStatements - i0.heartbeatStatements) / Math.max(1, beats); // counted by each heartbeat itself: exact
    const replicaIdlePerS = delta(i0, i1, isReplica) / idleS;
    const nodeOtherIdlePerS = (delta(i0, i1, isNode) - (i1.heartbeatStatements - i0.heartbeatStatements)) / idleS;
    const idlePerS = (a: Counters, b: Counters) => ((b.at - a.at) / 1000) * (replicaIdlePerS + nodeOtherIdlePerS);

    // one at a time, the single node and a replica in turn (drift on a shared host hits both alike)
    const creates = { single: [] as number[], replica: [] as number[] };
    const viaReplica: SdkSandbox[] = [];
    let statementsInCreates = 0;
    let createWindows = 0;
    const c0 = await counters();
    for (let i = 0; i < o.iterations; i++) {
      let s: SdkSandbox | undefined;
      creates.single.push(await timed(async () => (s = await create(via.single))));
      await kill(s!);
      const a = await counters();
      creates.replica.push(await timed(async () => viaReplica.push(await create(via.replica(i)))));
      const b = await counters();
      statementsInCreates += work(a, b) - idlePerS(a, b);
      createWindows++;
      log(`create ${i + 1}/${o.iterations}`);
    }
    // idle again, holding the sandboxes just made: what a heartbeat costs a node that holds some
    log(`idle window with ${viaReplica.length} sandboxes held`);
    const h0 = await counters();
    await sleep(IDLE_MS);
    const h1 = await counters();
    const heldBeats = Math.max(1, h1.heartbeats - h0.heartbeats);
    const heldPerNode = viaReplica.length / NODES;
    // rows written (the server's statistics lag up to a second: the idle window after the creates takes it in), idle rows subtracted
    const idleRowsPerS = (i1.rowsWritten - i0.rowsWritten) / idleS;
    const rows = (a: Counters, b: Counters) => b.rowsWritten - a.rowsWritten - idleRowsPerS * ((b.at - a.at) / 1000);
    const rowsPerCreate = rows(c0, h1) / o.iterations;
    const k0 = await counters();
    for (const s of viaReplica.splice(0)) await kill(s);
    const k1 = await counters();
    const perKill = (work(k0, k1) - idlePerS(k0, k1)) / o.iterations;

    const runs = { single: [] as number[], replica: [] as number[] };
    const one = await create(via.single);
    const other = await create(via.replica(0));
    await one.commands.run('true');
    await other.commands.run('true');
    const rowsPerKill = (rows(k0, await counters()) - rowsPerCreate) / o.iterations; // the kills, then the one create just above
    for (let i = 0; i < o.iterations * 5; i++) {
      runs.single.push(await timed(() => one.commands.run('true')));
      runs.replica.push(await timed(() => other.commands.run('true')));
    }
    await kill(one);
    await kill(other);
    log('commands.run done');

    // a burst over the 3 nodes through both replicas, then the same burst on the single node
    const burst = async (opts: (i: number) => ConnectOpts) => {
      const t0 = now();
      const got = await mapLimit(
        Array.from({ length: o.burst }, (_, i) => i),
        o.burst,
        async (i) => create(opts(i)).catch((err: unknown) => err as Error),
      );
      const ms = now() - t0;
      const ok = got.filter((g): g is SdkSandbox => !(g instanceof Error));
      await mapLimit(ok, 8, kill);
      return { rate: ok.length / (ms / 1000), failed: got.length - ok.length };
    };
    log(`a burst of ${o.burst} creates through the replicas`);
    const b0 = await counters();
    const clusterBurst = await burst(via.replica);
    const b1 = await counters();
    log(`a burst of ${o.burst} creates on the single node`);
    const singleBurst = await burst(() => via.single);

    const p50 = (xs: number[]) => median(xs);
    report.figures.push(
      figure('cluster.create.p50', 'Sandbox.create() through a replica (3 nodes)', 'p50', p50(creates.replica), 'ms', {
        name: 'the single node (--role all)',
        value: p50(creates.single),
      }),
      figure('cluster.commands-run-true.p50', "commands.run('true') through a replica", 'p50', p50(runs.replica), 'ms', {
        name: 'the single node (--role all)',
        value: p50(runs.single),
      }),
      figure('cluster.burst.rate', `creates/s, ${o.burst} at once over 3 nodes through 2 replicas`, 'rate', clusterBurst.rate, 'ops/s', {
        name: 'the same burst on the single node',
        value: singleBurst.rate,
      }),
    );
    // the database's CPU for the burst's creates and kills: what it used meanwhile less its idle rate (heartbeats, refreshes)
    const idleDbCpuPerS = (i1.pgCpuMs - i0.pgCpuMs) / idleS;
    const burstDbCpuMs = Math.max(0, b1.pgCpuMs - b0.pgCpuMs - idleDbCpuPerS * ((b1.at - b0.at) / 1000));
    const round = (x: number) => Math.round(x * 100) / 100;
    report.counts = {
      statementsPerCreate: round(statementsInCreates / createWindows),
      statementsPerKill: round(perKill),
      statementsPerHeartbeat: round(perHeartbeat),
      statementsPerHeartbeatHolding: round((h1.heartbeatStatements - h0.heartbeatStatements) / heldBeats),
      // with what else a node sends at each heartbeat (its teams' usage, for quotas across nodes)
      nodeStatementsPerHeartbeatHolding: round(delta(h0, h1, isNode) / heldBeats),
      rowsWrittenPerHeartbeatIdle: round((i1.rowsWritten - i0.rowsWritten) / Math.max(1, beats)),
      rowsWrittenPerHeartbeatHolding: round((h1.rowsWritten - h0.rowsWritten) / heldBeats),
      sandboxesHeldPerNode: round(heldPerNode),
      rowsWrittenPerCreate: round(rowsPerCreate),
      rowsWrittenPerKill: round(rowsPerKill),
      idleStatementsPerSecondPerReplica: round(replicaIdlePerS / REPLICAS),
      idleStatementsPerSecondPerNode: round(delta(i0, i1, isNode) / idleS / NODES),
      databaseCpuMsPerBurstCreate: round(burstDbCpuMs / Math.max(1, o.burst)),
      databaseIdleCpuMsPerSecond: round(idleDbCpuPerS),
      burstStatementsPerCreate: round((work(b0, b1) - idlePerS(b0, b1)) / Math.max(1, o.burst)),
      burstFailedCluster: clusterBurst.failed,
      burstFailedSingle: singleBurst.failed,
      heartbeatsFailed: b1.heartbeatsFailed - i0.heartbeatsFailed,
    };
    report.facts = { nodes: NODES, replicas: REPLICAS, pool: 'off on both (cold creates)', database: 'PostgreSQL on a unix socket, fsync on' };
    report.notes.push(
      `statements per create / kill: the replica's and the node's (the key, the team's quota across nodes, placement, the route), heartbeats and idle traffic subtracted; per heartbeat: counted by each heartbeat transaction`,
      `the database's CPU in the burst, idle rate subtracted: ${round(burstDbCpuMs)} ms for ${o.burst} creates and their kills (one core of it would sustain about ${Math.round(1000 / Math.max(0.01, burstDbCpuMs / o.burst))} such creates/s; its 10 ms CPU clock makes a small burst's figure coarse)`,
    );
  } finally {
    log('cleaning up');
    await db?.close().catch(() => undefined);
    for (const { sbx } of made.splice(0)) await sbx.kill().catch(() => undefined);
    if (single.child) leaks.push(...(await stopAlone(single.child, single.dataDir)));
    if (clusterUp) {
      const down = await run('bash', [SCRIPT, 'down'], { env, timeout: 10 * 60_000 }).catch((err: Error & { stdout?: string; stderr?: string }) => err);
      if (down instanceof Error) leaks.push(`cluster-local.sh down failed: ${(down.stderr ?? down.message).trim()}`);
    }
    if (!leaks.length) rmSync(work, { recursive: true, force: true });
    else leaks.push(`kept ${work} for a look`);
  }
  if (leaks.length) report.facts.error = `left behind: ${leaks.join('; ')}`;
  return report;
}

/** A port base whose nodes' and replicas' ports (base+1.., base+101..) are free now. */
async function freePortBase(): Promise<number> {
  for (let tries = 0; tries < 20; tries++) {
    const base = 20_000 + Math.floor(Math.random() * 200) * 100;
    const ports = [...Array.from({ length: NODES }, (_, i) => base + i + 1), ...Array.from({ length: REPLICAS }, (_, i) => base + 101 + i)];
    if ((await Promise.all(ports.map(portFree))).every(Boolean)) return base;
  }
  throw new Error('found no free ports for the local cluster');
}

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

function serveAlone(dataDir: string): Promise<ChildProcess> {
  mkdirSync(dataDir, { mode: 0o700 });
  const child = spawn(process.execPath, [CLI, '--data-dir', dataDir, 'serve', '--role', 'all', '--host', '127.0.0.1', '--port', '0'], {
    env: { ...process.env, CUBEBOX_POOL: '', CUBEBOX_SUBNET: SINGLE_SUBNET, CUBEBOX_LOG_LEVEL: 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stderr!.resume();
  return Promise.resolve(child);
}

/** The URL of a `cubebox serve` from its ready log line. */
function readyUrl(child: ChildProcess): Promise<string> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => reject(new Error('the single node did not get ready in 10 minutes')), 600_000);
    const onData = (d: Buffer) => {
      buf += d.toString();
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        try {
          const rec = JSON.parse(line) as { msg?: string; url?: string };
          if (rec.msg === 'cubebox serve ready' && rec.url) {
            clearTimeout(timer);
            child.stdout!.off('data', onData);
            child.stdout!.resume();
            return resolve(rec.url);
          }
        } catch {
          // not a log record
        }
      }
    };
    child.stdout!.on('data', onData);
    child.once('exit', (code, sig) => {
      clearTimeout(timer);
      reject(new Error(`the single node exited early (${code ?? sig})`));
    });
  });
}

/** Stops the single node, deletes what it still had, and says what it left behind (nothing, normally). */
async function stopAlone(child: ChildProcess, dataDir: string): Promise<string[]> {
  if (child.exitCode === null && child.signalCode === null) {
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await exited;
  }
  if (!existsSync(join(dataDir, 'instance-id'))) return [];
  const cli = (args: string[]) => run(process.execPath, [CLI, '--data-dir', dataDir, ...args], { maxBuffer: 16 << 20 });
  const left: string[] = [];
  const listed = JSON.parse((await cli(['sandbox', 'list', '--json'])).stdout) as Array<{ id: string }>;
  for (const s of listed) await cli(['sandbox', 'rm', s.id]).catch(() => left.push(`sandbox ${s.id} of the single node`));
  const leaks = await cli(['doctor', '--leaks', '--json']).then(
    (r) => JSON.parse(r.stdout) as unknown[],
    (err: { stdout?: string }) => JSON.parse(err.stdout || '[1]') as unknown[],
  );
  if (leaks.length) left.push(`the single node left host resources: ${JSON.stringify(leaks).slice(0, 500)}`);
  const id = readFileSync(join(dataDir, 'instance-id'), 'utf8').trim();
  if (!left.length) rmSync(join('/run/cubebox', id), { recursive: true, force: true });
  return left;
}

/** A process's /metrics. */
async function scrape(url: string, headers: Record<string, string>): Promise<string> {
  return (await fetch(`${url}/metrics`, { headers })).text();
}

/** One metric's samples by one label. */
function samples(text: string, name: string, label: string): Map<string, number> {
  const out = new Map<string, number>();
  const re = new RegExp(`^${name}\\{(?:[^}]*,)?${label}="([^"]*)"[^}]*\\} (\\S+)$`, 'gm');
  for (const m of text.matchAll(re)) out.set(m[1]!, Number(m[2]));
  return out;
}

/** CPU the database server used so far, ms: the postmaster with its reaped children, and its live backends. */
function pgCpuMs(dataDir: string): number {
  const pid = Number(readFileSync(join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
  const stat = (p: number | string) => {
    try {
      const f = readFileSync(`/proc/${p}/stat`, 'utf8');
      return f.slice(f.lastIndexOf(')') + 2).split(' '); // fields from the state on (field 3)
    } catch {
      return undefined;
    }
  };
  const ticks = (f: string[], withChildren: boolean) => Number(f[11]) + Number(f[12]) + (withChildren ? Number(f[13]) + Number(f[14]) : 0);
  const own = stat(pid);
  let total = own ? ticks(own, true) : 0;
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    const f = stat(p);
    if (f && Number(f[1]) === pid) total += ticks(f, false);
  }
  return total * 10; // USER_HZ is 100 on Linux
}
