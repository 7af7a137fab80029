// `cubebox bench`: runs the chosen parts in order, prints each part's table as it finishes (or,
// with --json, one document at the end), progress on stderr. Every figure stands next to a
// baseline measured in the same run: compare ratios, not times, on a shared machine.
import { loadavg } from 'node:os';
import { DEFAULT_RUNTIME, type RuntimeName } from '../runtime/registry.js';
import { burstBench } from './burst-bench.js';
import { densityBench } from './density-bench.js';
import { BenchService, type BenchNode, type PoolConfig } from './harness.js';
import { emptyCleanup, emptyPart, formatPart, machineInfo, rowsToPart, type BenchDocument, type PartReport } from './report.js';
import { throughputBench } from './throughput-bench.js';

export const PARTS = ['runtime', 'runtimes', 'network', 'service', 'burst', 'throughput', 'density', 'floor', 'profile', 'cluster'] as const;
export type PartName = (typeof PARTS)[number];

export interface BenchRunOptions {
  iterations: number;
  only?: string;
  burst: number;
  sandboxes: number;
  clients: number;
  clientSandboxes: number;
  seconds: number;
  json?: boolean;
  /** Runtimes the runtime part measures, side by side (default: the node's). */
  runtimes?: RuntimeName[];
  /** The pool `cubebox serve` starts with by default. */
  defaultPool: PoolConfig;
  /** The node's configuration and how it is served (from the CLI). */
  node: BenchNode;
}

const TITLES: Record<PartName, string> = {
  runtime: 'sandbox lifecycle through the manager (medians)',
  runtimes: 'the runtimes side by side through `cubebox serve` with the e2b SDK (medians; ratios to the first)',
  network: 'sandbox networking (medians)',
  service: 'through `cubebox serve` with the e2b SDK (medians)',
  burst: 'bursts of creates through the service with the e2b SDK',
  throughput: "commands.run('true') through the service with the e2b SDK",
  density: 'idle sandboxes on one host',
  floor: "the sandbox agent's own cost: today's envd (Node) beside a static init and a fork server, on bare containers",
  profile: 'where the CPU of a cold create goes (through the manager, no pool)',
  cluster: 'a local cluster (PostgreSQL, 3 nodes, 2 API replicas) against a single node, with the e2b SDK',
};

/** Runs the bench; resolves false when a part failed (the others still ran). */
export async function runBench(o: BenchRunOptions): Promise<boolean> {
  const progress = (s: string) => process.stderr.write(`\r${s.slice(0, 78).padEnd(78)}`);
  // the runtimes side by side only when asked for (--runtimes), the CPU profile and the cluster only with --profile or --cluster (or --only)
  const parts = PARTS.filter(
    (p) => (!o.only || o.only === p) && (p !== 'runtimes' || !!o.runtimes?.length) && ((p !== 'profile' && p !== 'cluster') || o.only === p),
  );
  const t0 = Date.now();
  const doc: BenchDocument = {
    version: 1,
    startedAt: new Date(t0).toISOString(),
    machine: machineInfo(o.node.manager.runtime ?? DEFAULT_RUNTIME),
    options: {
      iterations: o.iterations,
      parts,
      burst: o.burst,
      sandboxes: o.sandboxes,
      clients: o.clients,
      clientSandboxes: Math.min(o.clientSandboxes, o.clients),
      seconds: o.seconds,
    },
    parts: {},
    cleanup: emptyCleanup(),
  };
  let ok = true;
  let svc: BenchService | undefined;
  const service = async () => (svc ??= await BenchService.open({ node: o.node, defaultPool: o.defaultPool, log: progress }));
  try {
    for (const name of parts) {
      let report: PartReport;
      try {
        report = await runPart(name, o, service, progress);
      } catch (err) {
        ok = false;
        report = emptyPart();
        report.facts.error = (err as Error).message;
      }
      process.stderr.write('\n');
      // a figure without a value (every attempt failed) fails the run, after the report
      if (report.figures.some((f) => !Number.isFinite(f.value))) ok = false;
      doc.parts[name] = report;
      if (!o.json) console.log(`\n${formatPart(TITLES[name], report)}`);
    }
  } finally {
    if (svc) {
      progress('cleaning up');
      doc.machine.runtime = svc.bare.name;
      try {
        doc.cleanup = await svc.close();
      } catch (err) {
        ok = false;
        doc.cleanup.leaks.push(`clean-up failed: ${(err as Error).message}`);
      }
      process.stderr.write('\n');
    }
  }
  if (doc.cleanup.sandboxesLeft || doc.cleanup.leaks.length) ok = false;
  doc.machine.loadavgEnd = loadavg().map((x) => Math.round(x * 100) / 100);
  doc.durationS = Math.round((Date.now() - t0) / 100) / 10;
  if (o.json) process.stdout.write(JSON.stringify(doc, null, 2) + '\n');
  else {
    const m = doc.machine;
    console.log(
      `\n${m.cpus} vCPUs (${m.cpuModel}), ${m.memTotalMiB} MiB, ${m.runtime}, node ${m.node}; load average ${m.loadavgStart.join(' ')} at the start, ${m.loadavgEnd!.join(' ')} at the end; ${doc.durationS} s`,
    );
    if (doc.cleanup.sandboxesLeft || doc.cleanup.leaks.length)
      console.log(`left behind: ${doc.cleanup.sandboxesLeft} sandboxes; ${doc.cleanup.leaks.join('; ')}`);
  }
  return ok;
}

async function runPart(name: PartName, o: BenchRunOptions, service: () => Promise<BenchService>, progress: (s: string) => void): Promise<PartReport> {
  switch (name) {
    case 'runtime': {
      const { runtimeBench } = await import('./runtime-bench.js');
      // one column of figures per runtime, each against that runtime's bare baseline, in one run
      const runtimes = o.runtimes?.length ? o.runtimes : [o.node.manager.runtime ?? DEFAULT_RUNTIME];
      const rows = [];
      for (const runtime of runtimes) {
        const node = { ...o.node, manager: { ...o.node.manager, runtime } };
        const got = await runtimeBench(node, o.iterations, progress);
        rows.push(...(runtimes.length > 1 ? got.map((r) => ({ ...r, name: `${runtime}: ${r.name}` })) : got));
      }
      return rowsToPart('runtime', rows);
    }
    case 'runtimes': {
      const { runtimesBench } = await import('./runtimes-bench.js');
      return runtimesBench(o.node, o.runtimes!, o.iterations, progress);
    }
    case 'network': {
      const { networkBench } = await import('./network-bench.js');
      const { rows, notes } = await networkBench(o.node, o.iterations, progress);
      return rowsToPart('network', rows, notes);
    }
    case 'service': {
      const { serviceBench } = await import('./service-bench.js');
      const { rows, notes } = await serviceBench(o.node, o.iterations, progress);
      return rowsToPart('service', rows, notes);
    }
    case 'burst':
      return burstBench(await service(), { burst: o.burst, iterations: o.iterations }, progress);
    case 'throughput':
      return throughputBench(
        await service(),
        { clients: o.clients, sandboxes: Math.min(o.clientSandboxes, o.clients), seconds: o.seconds, iterations: o.iterations },
        progress,
      );
    case 'profile': {
      const { profileBench } = await import('./profile-bench.js');
      return profileBench(o.node, o.iterations, progress);
    }
    case 'density':
      return densityBench(await service(), { sandboxes: o.sandboxes, iterations: o.iterations }, progress);
    case 'floor': {
      const { floorBench } = await import('./floor-bench.js');
      return floorBench(await service(), o.iterations, progress);
    }
    case 'cluster': {
      const { clusterBench } = await import('./cluster-bench.js');
      return clusterBench({ iterations: o.iterations, burst: o.burst }, progress);
    }
  }
}
