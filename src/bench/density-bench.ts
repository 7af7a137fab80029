// Density: M idle sandboxes (envd running, made through the manager) and what each costs the
// host: the PSS of its processes (envd apart), the kernel's MemAvailable drop and the service
// process's own growth; the latency of a command with all of them up against with one up. The
// baselines are bare containers of the runtime (a busybox sleep) and an idle node process, in
// the same run. It stops early, and says so, when the host refuses another sandbox.
import { spawn } from 'node:child_process';
import { totalmem } from 'node:os';
import { memAvailableKiB, isEnvd, pssKiB } from './host.js';
import type { BenchService } from './harness.js';
import { deleteAllSandboxes } from './harness.js';
import { emptyPart, figure, mapLimit, now, percentile, sleep, timed, type PartReport } from './report.js';

export interface DensityOptions {
  sandboxes: number;
  /** Commands timed on one sandbox: five times this. */
  iterations: number;
}

/** Bare containers measured next to the sandboxes (enough for a steady per-container figure). */
const MAX_BARE = 100;
/** A create slower than this stops the ramp: the service has slowed past use (reported as such). */
const SLOW_CREATE_MS = 120_000;
/** Creates at once: enough to keep the manager's create gate busy. */
const CREATE_CONCURRENCY = 4;

/** The host's floor: no sandbox is started once MemAvailable is below this (KiB). */
const memoryFloorKiB = () => Math.max(2 * 1024 * 1024, (totalmem() / 1024) * 0.15);

/** PSS of an idle node process on the host (what envd would cost outside a sandbox), KiB. */
async function idleNodePssKiB(): Promise<number> {
  const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1 << 30)'], { stdio: 'ignore' });
  try {
    await sleep(1500);
    return child.pid ? pssKiB(child.pid) : NaN;
  } finally {
    child.kill('SIGKILL');
    await new Promise((r) => (child.exitCode !== null || child.signalCode !== null ? r(undefined) : child.once('exit', r)));
  }
}

/** PSS of every process of a sandbox, and of its envd, KiB. */
function sandboxPss(svc: BenchService, id: string): { all: number; envd: number; processes: number } {
  let all = 0;
  let envd = 0;
  const pids = svc.manager.cgroup(id).pids();
  for (const pid of pids) {
    const p = pssKiB(pid);
    all += p;
    if (isEnvd(pid)) envd += p;
  }
  return { all, envd, processes: pids.length };
}

async function commandP50(svc: BenchService, id: string, runs: number): Promise<number> {
  const sbx = await svc.Sandbox.connect(id);
  await sbx.commands.run('true');
  const ms: number[] = [];
  for (let i = 0; i < runs; i++) ms.push(await timed(() => sbx.commands.run('true')));
  return percentile(ms, 50);
}

export async function densityBench(svc: BenchService, o: DensityOptions, log: (s: string) => void = () => undefined): Promise<PartReport> {
  const part = emptyPart();
  const m = svc.manager;
  const rt = svc.bare.name;
  await svc.noPool();
  const floor = memoryFloorKiB();
  const MiB = (kib: number) => kib / 1024;

  // the baselines: bare containers and an idle node
  const bareCount = Math.min(o.sandboxes, MAX_BARE);
  log(`${bareCount} bare containers`);
  const bareBefore = memAvailableKiB();
  const bundles = Array.from({ length: bareCount }, () => svc.bare.prepare());
  const barePids = await mapLimit(bundles, CREATE_CONCURRENCY, (b) => svc.bare.run(b));
  await sleep(1000);
  const barePss = barePids.reduce((s, pid) => s + pssKiB(pid), 0) / bareCount;
  const bareKernel = (bareBefore - memAvailableKiB()) / bareCount;
  await mapLimit(bundles, CREATE_CONCURRENCY, (b) => svc.bare.delete(b.id));
  const nodePss = await idleNodePssKiB();

  // one sandbox up: the command latency baseline of the crowded case
  const memBefore = memAvailableKiB();
  const serveBefore = pssKiB(process.pid);
  const ids: string[] = [];
  let stopped: string | null = null;
  const createOne = async (): Promise<void> => {
    for (;;) {
      if (stopped) return;
      if (memAvailableKiB() < floor) {
        stopped ??= `MemAvailable below ${Math.round(MiB(floor))} MiB`;
        return;
      }
      try {
        const t = now();
        ids.push((await m.create({ template: 'base', team: svc.team })).id);
        if (now() - t > SLOW_CREATE_MS) stopped ??= `create ${ids.length} took ${Math.round((now() - t) / 1000)} s: the service has slowed down too far`;
        return;
      } catch (err) {
        const e = err as { kind?: string; retryAfterSec?: number; message?: string };
        if (e.kind === 'busy') {
          await sleep((e.retryAfterSec ?? 1) * 1000);
          continue;
        }
        stopped ??= `create ${ids.length + 1} refused: ${e.message ?? String(err)}`;
        return;
      }
    }
  };
  await createOne();
  if (!ids.length) throw new Error(`no sandbox could be created: ${stopped}`);
  const runs = o.iterations * 5;
  const oneUp = await commandP50(svc, ids[0]!, runs);

  // M up
  const t0 = now();
  let last = 0;
  // how the pace changes as sandboxes pile up: seconds from the start to each tenth of M
  const step = Math.max(10, Math.ceil(o.sandboxes / 10));
  let nextMark = step;
  await mapLimit(Array.from({ length: o.sandboxes - 1 }), CREATE_CONCURRENCY, async () => {
    await createOne();
    if (ids.length >= nextMark) {
      part.facts[`secondsTo${nextMark}`] = Math.round((now() - t0) / 100) / 10;
      nextMark += step;
    }
    if (ids.length - last >= 10 || ids.length === o.sandboxes) {
      last = ids.length;
      log(`${ids.length}/${o.sandboxes} sandboxes up`);
    }
  });
  const createS = (now() - t0) / 1000;
  const fit = ids.length;
  part.counts.requested = o.sandboxes;
  part.counts.fit = fit;
  part.facts.stoppedBecause = stopped;
  part.facts.createSeconds = Math.round(createS * 10) / 10;
  log('settling');
  await sleep(3000);

  let all = 0;
  let envd = 0;
  let processes = 0;
  for (const id of ids) {
    const p = sandboxPss(svc, id);
    all += p.all;
    envd += p.envd;
    processes += p.processes;
  }
  const memAfter = memAvailableKiB();
  const serveAfter = pssKiB(process.pid);
  const allUp = await commandP50(svc, ids[0]!, runs);

  const bareName = `bare ${rt} container (busybox sleep), x${bareCount}`;
  part.figures.push(
    figure('density.pss', `PSS per sandbox, ${fit} idle`, 'mean', MiB(all / fit), 'MiB', { name: bareName, value: MiB(barePss) }),
    figure('density.envd.pss', `envd PSS per sandbox, ${fit} idle`, 'mean', MiB(envd / fit), 'MiB', {
      name: 'idle node process on the host',
      value: MiB(nodePss),
    }),
    figure('density.kernel', `MemAvailable drop per sandbox, ${fit} idle`, 'mean', MiB((memBefore - memAfter) / fit), 'MiB', {
      name: `the same per ${bareName}`,
      value: MiB(bareKernel),
    }),
    figure('density.serve', `service process PSS growth per sandbox`, 'mean', MiB((serveAfter - serveBefore) / fit), 'MiB'),
    figure('density.run.p50', `commands.run('true') with ${fit} up`, 'p50', allUp, 'ms', { name: 'the same with 1 up', value: oneUp }),
  );
  part.facts.processesPerSandbox = Math.round((processes / fit) * 10) / 10;

  log(`deleting ${fit} sandboxes`);
  const delMs = await timed(() => deleteAllSandboxes(m));
  part.facts.deleteSeconds = Math.round(delMs / 100) / 10;
  part.facts.sandboxesLeft = m.list().length;
  return part;
}
