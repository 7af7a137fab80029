// `cubebox bench --profile`: where a cold create's CPU goes. N creates of the base template
// through the manager, one at a time and no pool, each split into the service's own JS (by
// provisioning phase), the host processes it spawns (count and CPU by kind) and the sandbox's own
// processes (its cgroup's CPU when the create returns: envd's start and first requests); what
// the service does after a create returned (refilling warm network slots) is shown apart. A bare
// `<runtime> run -d` of a busybox bundle, measured the same way in the same run, is the baseline.
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { naming } from '../config.js';
import { v1Hierarchies } from '../runtime/cgroups.js';
import { SandboxManager } from '../sandbox/manager.js';
import { BareRuntime } from './bare.js';
import { CpuAccount, kernelThreadsCpuMs, LAST_PHASE, type CpuWindow } from './cpu-account.js';
import type { BenchNode } from './harness.js';
import { emptyPart, figure, median, sleep, type PartReport } from './report.js';

/** CPU (ms, user + system) of every process that ran in a sandbox's cgroup so far; NaN when unreadable. */
export function sandboxCpuMs(m: SandboxManager, id: string): number {
  const rel = naming.cgroupPath(m.paths.instanceId, id);
  try {
    if (m.cgroupMode === 'v2') {
      const usec = readFileSync(join('/sys/fs/cgroup', rel, 'cpu.stat'), 'utf8').match(/^usage_usec (\d+)$/m)?.[1];
      return usec ? Number(usec) / 1000 : NaN;
    }
    const h = v1Hierarchies().find((x) => x.split(',').includes('cpuacct'));
    const file = h ? join('/sys/fs/cgroup', h, rel, 'cpuacct.usage') : '';
    return file && existsSync(file) ? Number(readFileSync(file, 'utf8')) / 1e6 : NaN;
  } catch {
    return NaN;
  }
}

/** CPU (ms) of the cgroup a process is in, when that is a cgroup of its own (not the root); NaN otherwise. */
export function processCgroupCpuMs(pid: number): number {
  try {
    for (const line of readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n')) {
      const [hid, ctl, path] = line.split(':');
      if (!path || path === '/') continue;
      if (hid === '0' && ctl === '' && !existsSync('/sys/fs/cgroup/cpuacct')) {
        const usec = readFileSync(join('/sys/fs/cgroup', path, 'cpu.stat'), 'utf8').match(/^usage_usec (\d+)$/m)?.[1];
        if (usec) return Number(usec) / 1000;
      }
      const h = v1Hierarchies().find((x) => x.split(',').includes('cpuacct'));
      if (h && ctl!.split(',').includes('cpuacct')) return Number(readFileSync(join('/sys/fs/cgroup', h, path, 'cpuacct.usage'), 'utf8')) / 1e6;
    }
  } catch {
    /* gone, or not readable */
  }
  return NaN;
}

/** Waits until no observed child is running and none ended for quietMs (at most 10 s). */
async function quiet(acc: CpuAccount, quietMs = 300): Promise<void> {
  const until = Date.now() + 10_000;
  while (Date.now() < until && (acc.live > 0 || Date.now() - acc.lastExit < quietMs)) await sleep(50);
}

interface Sample {
  create: CpuWindow;
  sandboxMs: number;
  /** The host's kernel threads during the create (other load included). */
  kernelMs: number;
  after: CpuWindow;
  /** The delete that follows, until no process ran for a while (a network slot made again goes here). */
  del: CpuWindow;
  bare: CpuWindow;
  /** The bare container's own cgroup (what its runtime's child did after it joined it), when it has one. */
  bareContainerMs: number;
}

export async function profileBench(node: BenchNode, iterations: number, log: (s: string) => void = () => undefined): Promise<PartReport> {
  const dataDir = mkdtempSync('/var/tmp/cubebox-bench-');
  let m: SandboxManager | undefined;
  let bare: BareRuntime | undefined;
  const acc = new CpuAccount();
  const samples: Sample[] = [];
  try {
    m = await SandboxManager.open({ ...node.manager, dataDir, network: { ...node.manager.network, warmSlots: 4 } });
    log('preparing the base template');
    await m.templates.addDebianBase('base', { cacheDir: node.cacheDir });
    const busybox = await m.templates.addBusybox('busybox');
    const br = (bare = new BareRuntime(m, dataDir, busybox.layers[0]!, node.manager.runtimeBinaries?.[m.runtime.name]));
    // one round first, not counted: first-use costs (JIT, caches, the first warm slots)
    for (let i = -1; i < iterations; i++) {
      await quiet(acc);
      const kernel0 = kernelThreadsCpuMs();
      acc.take();
      const { id } = await m.create({ template: 'base' });
      acc.endPhase(LAST_PHASE);
      const sandboxMs = sandboxCpuMs(m, id);
      const create = acc.take();
      const kernelMs = kernelThreadsCpuMs() - kernel0;
      await quiet(acc);
      const after = acc.take();
      await m.delete(id);
      await quiet(acc);
      const del = acc.take();

      const c = br.prepare();
      acc.take();
      const barePid = await br.run(c);
      const bareContainerMs = processCgroupCpuMs(barePid);
      const bareW = acc.take();
      await br.delete(c.id);
      if (i >= 0) samples.push({ create, sandboxMs, kernelMs, after, del, bare: bareW, bareContainerMs });
      log(`profile ${i + 1}/${iterations}`);
    }
  } finally {
    acc.close();
    await bare?.deleteAll();
    if (m) {
      for (const s of m.list()) await m.delete(s.id).catch(() => undefined);
      const runRoot = m.paths.runRoot;
      await m.close();
      rmSync(runRoot, { recursive: true, force: true });
    }
    rmSync(dataDir, { recursive: true, force: true });
  }
  return report(samples, m?.runtime.name ?? 'runtime');
}

const r1 = (x: number) => (Number.isFinite(x) ? x.toFixed(1) : 'n/a');
const pct = (x: number, total: number) => (total > 0 ? `${Math.round((100 * x) / total)}%` : '');

/** Sums per kind over the samples, divided by their number. */
function perCreate(ws: CpuWindow[]): Array<{ kind: string; count: number; cpuMs: number; spawnMs: number }> {
  const sum = new Map<string, { count: number; cpuMs: number; spawnMs: number }>();
  for (const w of ws)
    for (const [k, v] of w.kinds) {
      const s = sum.get(k) ?? { count: 0, cpuMs: 0, spawnMs: 0 };
      s.count += v.count;
      s.cpuMs += v.cpuMs;
      s.spawnMs += v.spawnMs;
      sum.set(k, s);
    }
  const n = Math.max(1, ws.length);
  return [...sum]
    .map(([kind, s]) => ({ kind, count: s.count / n, cpuMs: s.cpuMs / n, spawnMs: s.spawnMs / n }))
    .sort((a, b) => b.cpuMs - a.cpuMs || b.count - a.count);
}

function report(samples: Sample[], runtime: string): PartReport {
  const n = samples.length;
  const mean = (xs: number[]) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN);
  const js = samples.map((s) => s.create.jsMs);
  const procs = samples.map((s) => s.create.childrenMs);
  const sbx = samples.map((s) => s.sandboxMs);
  const total = samples.map((s) => s.create.jsMs + s.create.childrenMs + (Number.isFinite(s.sandboxMs) ? s.sandboxMs : 0));
  const bareTotal = samples.map((s) => s.bare.jsMs + s.bare.childrenMs + (Number.isFinite(s.bareContainerMs) ? s.bareContainerMs : 0));
  const meanTotal = mean(js) + mean(procs) + (mean(sbx) || 0);
  const baseline = { name: `bare ${runtime} run -d (CPU)`, value: median(bareTotal) };

  const p = emptyPart();
  p.figures.push(
    figure('profile.create-cpu', 'CPU of a cold create (user+sys, all parts)', 'median', median(total), 'ms', baseline),
    figure('profile.service-js', "the service's own JS", 'median', median(js), 'ms'),
    figure('profile.processes', 'processes the service spawned', 'median', median(procs), 'ms'),
    figure('profile.sandbox', "the sandbox's own processes (envd) at return", 'median', median(sbx), 'ms'),
    figure(
      'profile.after-return',
      'service work after the create returned (JS + processes)',
      'median',
      median(samples.map((s) => s.after.jsMs + s.after.childrenMs)),
      'ms',
    ),
  );

  const kinds = perCreate(samples.map((s) => s.create));
  const afterKinds = perCreate(samples.map((s) => s.after));
  const delKinds = perCreate(samples.map((s) => s.del));
  const bareKinds = perCreate(samples.map((s) => s.bare));
  const phaseNames = [...new Set(samples.flatMap((s) => [...s.create.phases.keys()]))];
  const phases = phaseNames.map((name) => ({
    name,
    jsMs: mean(samples.map((s) => s.create.phases.get(name)?.jsMs ?? 0)),
    childrenMs: mean(samples.map((s) => s.create.phases.get(name)?.childrenMs ?? 0)),
  }));
  const unattributed = mean(samples.map((s) => s.create.unattributedMs));

  // a process costs twice: its own CPU, and the service's in the spawn call (counted in the JS)
  const rows: string[][] = [['part', 'procs', 'CPU ms', 'share', 'spawn ms in JS']];
  const row = (name: string, count: number | '', ms: number, spawnMs?: number) =>
    rows.push([name, count === '' ? '' : r1(count), r1(ms), pct(ms, meanTotal), spawnMs === undefined ? '' : r1(spawnMs)]);
  const spawning = kinds.reduce((a, k) => a + k.spawnMs, 0);
  row("service's own JS (process.cpuUsage)", '', mean(js), spawning);
  for (const ph of phases) rows.push([`  phase ${ph.name}`, '', `${r1(ph.jsMs)} js + ${r1(ph.childrenMs)} procs`, '', '']);
  row(
    'processes it spawned (reaped children)',
    kinds.reduce((a, k) => a + k.count, 0),
    mean(procs),
    spawning,
  );
  for (const k of kinds) row(`  ${k.kind}`, k.count, k.cpuMs, k.spawnMs);
  if (unattributed) row('  not seen spawning (bypass spawnChild)', '', unattributed);
  row("sandbox's own processes at return (cgroup)", '', mean(sbx));
  row('total', '', meanTotal);
  const width = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  const table = rows.map((r) => r.map((c, i) => (i === 0 ? c.padEnd(width[i]!) : c.padStart(width[i]!))).join('  '));

  const list = (ks: typeof kinds) => ks.map((k) => `${k.kind} ${r1(k.count)}x ${r1(k.cpuMs)} ms (+${r1(k.spawnMs)} to spawn)`).join(', ') || 'none';
  p.notes.push(
    '',
    `CPU per cold create of the base template, means over ${n} creates (shares of the mean total; the medians are above):`,
    ...table,
    `kernel threads of the whole host during the create (loop devices, kworkers; other load included; not in the total): ${r1(mean(samples.map((s) => s.kernelMs)))} ms, median ${r1(median(samples.map((s) => s.kernelMs)))} ms`,
    `after the create returned, until no process ran for 300 ms: JS ${r1(mean(samples.map((s) => s.after.jsMs)))} ms, processes ${list(afterKinds)}`,
    `then its delete, until no process ran for 300 ms (not in the total): JS ${r1(mean(samples.map((s) => s.del.jsMs)))} ms, processes ${list(delKinds)}`,
    `baseline bare ${runtime} run -d: JS ${r1(mean(samples.map((s) => s.bare.jsMs)))} ms, processes ${list(bareKinds)}, its container's cgroup ${r1(mean(samples.map((s) => s.bareContainerMs)))} ms`,
    "a process's CPU is what the service's reaped-children CPU grew by as it was reaped (10 ms ticks; exact summed over the run, coarse per process);",
    "'spawn ms in JS' is the service's own CPU inside the spawn calls (forking a large process), already counted in its JS.",
  );
  p.counts.creates = n;
  p.detail = { creates: n, phases, processes: kinds, afterReturn: afterKinds, delete: delKinds, bare: bareKinds, unattributedMs: unattributed };
  return p;
}
