// `cubebox bench --json` at tiny sizes, one part at a time: the document has every figure with
// a numeric value next to a numeric baseline of the same run, the process exits, and the run
// leaves no sandbox, data directory, runtime root or bare container behind. Never a timing.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { CLI } from '../helpers/instance.js';
import type { BenchDocument } from '../../src/bench/report.js';

const benchDirs = () =>
  readdirSync('/var/tmp')
    .filter((e) => e.startsWith('cubebox-bench-'))
    .sort();

function bench(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, 'bench', ...args, '--json'], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, CUBEBOX_LOG_LEVEL: 'error' },
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Processes whose command line holds the word (the bare containers' unique sleep argument). */
function processesWith(word: string): number[] {
  const out: number[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      if (readFileSync(`/proc/${e}/cmdline`, 'utf8').split('\0').includes(word)) out.push(Number(e));
    } catch {
      /* gone */
    }
  }
  return out;
}

const isNum = (x: unknown): x is number => typeof x === 'number' && Number.isFinite(x);

async function runPart(part: string, args: string[], expected: Record<string, { baseline: boolean }>): Promise<BenchDocument> {
  const before = benchDirs();
  const r = await bench(['--only', part, ...args]);
  assert.equal(r.code, 0, `bench --only ${part} exited ${r.code}:\n${r.stderr.slice(-3000)}`);
  const doc = JSON.parse(r.stdout) as BenchDocument;
  assert.equal(doc.version, 1);
  assert.ok(isNum(doc.machine.cpus) && doc.machine.loadavgStart.every(isNum) && doc.machine.loadavgEnd!.every(isNum));
  const p = doc.parts[part];
  assert.ok(p, `no part ${part} in ${Object.keys(doc.parts).join(', ')}`);
  assert.equal(p.facts.error, undefined);
  const byId = new Map(p.figures.map((f) => [f.id, f]));
  for (const [id, want] of Object.entries(expected)) {
    const f = byId.get(id);
    assert.ok(f, `figure ${id} missing (have ${[...byId.keys()].join(', ')})`);
    assert.ok(isNum(f.value), `${id}: value ${f.value}`);
    assert.ok(f.name && f.stat && f.unit);
    if (!want.baseline) continue;
    assert.ok(f.baseline && f.baseline.name && isNum(f.baseline.value), `${id}: baseline ${JSON.stringify(f.baseline)}`);
    if (f.baseline.value > 0) assert.ok(isNum(f.ratio), `${id}: ratio ${f.ratio}`);
  }
  for (const [k, v] of Object.entries(p.counts)) assert.ok(isNum(v), `count ${k}: ${v}`);

  // nothing left: sandboxes, the leak checker's findings, directories, bare containers
  assert.equal(doc.cleanup.sandboxesLeft, 0);
  assert.deepEqual(doc.cleanup.leaks, []);
  for (const d of [...doc.cleanup.dataDirs, ...doc.cleanup.runRoots]) assert.ok(!existsSync(d), `${d} is still there`);
  if (doc.cleanup.bareMarker) assert.deepEqual(processesWith(doc.cleanup.bareMarker), [], 'a bare container process is still running');
  assert.deepEqual(benchDirs(), before, 'the run left a directory under /var/tmp');
  return doc;
}

describe('cubebox bench --json', { timeout: 30 * 60_000 }, () => {
  it('burst: creates in bursts and one at a time, next to bare run -d, with refusals counted', async () => {
    const doc = await runPart('burst', ['--burst', '3', '-n', '2'], {
      'burst.default.p50': { baseline: true },
      'burst.default.p99': { baseline: true },
      'burst.default.total': { baseline: true },
      'burst.pooled.p50': { baseline: true },
      'burst.pooled.p99': { baseline: true },
      'burst.pooled.total': { baseline: true },
      'burst.kill.total': { baseline: true },
      'burst.killPooled.total': { baseline: true },
      'burst.cold1.median': { baseline: true },
      'burst.pooled1.p50': { baseline: true },
    });
    const c = doc.parts.burst!.counts;
    for (const k of ['default', 'pooled']) {
      assert.equal(c[`${k}.ok`], 3);
      assert.equal(c[`${k}.errors`], 0);
      assert.ok(isNum(c[`${k}.refused`]) && isNum(c[`${k}.retried`]));
    }
    assert.ok(doc.parts.burst!.facts.defaultPool, 'the default pool is reported');
  });

  it('throughput: commands.run at c=1 and under concurrent clients, next to local bash spawns', async () => {
    const doc = await runPart('throughput', ['--clients', '4', '--client-sandboxes', '2', '--seconds', '2', '-n', '2'], {
      'throughput.run1.p50': { baseline: true },
      'throughput.run1.other.p50': { baseline: true },
      'throughput.rate': { baseline: true },
      'throughput.p50': { baseline: true },
      'throughput.p99': { baseline: true },
    });
    const p = doc.parts.throughput!;
    assert.match(String(p.facts.sandboxRuns), /bash/);
    assert.ok(p.counts['load.ops']! > 0 && p.counts['local.spawns']! > 0);
  });

  it('density: memory per idle sandbox next to bare containers, and every sandbox deleted', async () => {
    const doc = await runPart('density', ['--sandboxes', '3', '-n', '2'], {
      'density.pss': { baseline: true },
      'density.envd.pss': { baseline: true },
      'density.kernel': { baseline: true },
      'density.serve': { baseline: false },
      'density.run.p50': { baseline: true },
    });
    const p = doc.parts.density!;
    assert.equal(p.counts.requested, 3);
    assert.equal(p.counts.fit, 3);
    assert.equal(p.facts.sandboxesLeft, 0);
  });

  it("floor: envd's start, CPU, memory and command latency next to a static init and a fork server, each container deleted", async () => {
    const doc = await runPart('floor', ['-n', '2'], {
      'floor.start.envd': { baseline: true },
      'floor.start.init': { baseline: true },
      'floor.cpu.envd': { baseline: true },
      'floor.pss.envd': { baseline: true },
      'floor.run.envd': { baseline: true },
      'floor.runcpu.envd': { baseline: true },
      'floor.pss.envd.used': { baseline: true },
      'floor.pss.envd.full': { baseline: true },
      'floor.runcpu.envd.full': { baseline: true },
    });
    const byId = new Map(doc.parts.floor!.figures.map((f) => [f.id, f]));
    // both agents really ran: envd took CPU to start and holds memory; the static init holds some
    assert.ok(byId.get('floor.cpu.envd')!.value > 0);
    assert.ok(byId.get('floor.pss.envd')!.baseline!.value > 0 && byId.get('floor.pss.envd.used')!.baseline!.value > 0);
  });

  it('cluster (--cluster): a local cluster against a single node, statements per create and heartbeat, and nothing left of either', async () => {
    const doc = await runPart('cluster', ['-n', '2', '--burst', '2'], {
      'cluster.create.p50': { baseline: true },
      'cluster.commands-run-true.p50': { baseline: true },
      'cluster.burst.rate': { baseline: true },
    });
    const c = doc.parts.cluster!.counts;
    assert.ok(c.statementsPerCreate! > 0 && c.statementsPerKill! > 0, JSON.stringify(c));
    // a heartbeat is one transaction: BEGIN, the node's row, two deletes, the tombstones, the volumes, (the routes,) COMMIT
    assert.equal(c.statementsPerHeartbeat, 7);
    assert.equal(c.heartbeatsFailed, 0);
    assert.ok(c.statementsPerHeartbeatHolding! > 7 && c.statementsPerHeartbeatHolding! <= 8, 'eight with sandboxes to record (a node with none: seven)');
    assert.equal(c.burstFailedCluster, 0);
    assert.equal(c.burstFailedSingle, 0);
    assert.ok(!existsSync('/var/tmp/cubebox-cluster-local'), 'the default local cluster was not touched');
  });

  it("profile: a create's CPU split into the service's JS, its processes by kind and the sandbox's own, next to bare run -d", async () => {
    const doc = await runPart('profile', ['-n', '1'], {
      'profile.create-cpu': { baseline: true },
      'profile.service-js': { baseline: false },
      'profile.processes': { baseline: false },
      'profile.sandbox': { baseline: false },
    });
    const p = doc.parts.profile!;
    assert.equal(p.counts.creates, 1);
    const d = p.detail as { processes: Array<{ kind: string; count: number }>; phases: Array<{ name: string }> };
    assert.ok(
      d.processes.some((k) => / run( |$)/.test(k.kind) && k.count === 1),
      `one runtime run per create: ${JSON.stringify(d.processes)}`,
    );
    assert.ok(['network', 'runtime run', 'envd ready + /init'].every((n) => d.phases.some((ph) => ph.name === n)));
    assert.ok(p.figures.find((f) => f.id === 'profile.sandbox')!.value > 0, "envd's start is counted");
  });
});
