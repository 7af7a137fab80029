// What an admin sees of the host (GET /admin/host): CPUs, memory, the data directory's disk,
// network slots, pids, the warm pool and create gate, the runtimes and the doctor's findings.
// The findings are `cubebox doctor`'s own probe (runtime/probe.ts), run at most once per
// PROBE_TTL_MS: it starts a container per runtime, too much for every request, and no request
// waits for it (the first answers say it is in progress).
import { readFileSync, statfsSync } from 'node:fs';
import { availableParallelism, freemem, loadavg, totalmem } from 'node:os';
import type { HostStatus } from '../protocol/host-status.js';
import { probeHost, type Check, type HostReport } from '../runtime/probe.js';
import { runtimeNames } from '../runtime/registry.js';
import type { SandboxManager } from '../sandbox/manager.js';
import { errorMessage } from '../util/errors.js';

const PROBE_TTL_MS = 5 * 60_000;
const MIB = 1024 * 1024;

export type { HostStatus };

function readNumber(file: string, fallback: number): number {
  try {
    return Number(readFileSync(file, 'utf8').trim().split(/\s+/)[0]) || fallback;
  } catch {
    return fallback;
  }
}

/** MiB of memory the host can still give (MemAvailable). */
export function memAvailableMB(): number {
  try {
    const m = /^MemAvailable:\s+(\d+) kB/m.exec(readFileSync('/proc/meminfo', 'utf8'));
    if (m) return Math.floor(Number(m[1]) / 1024);
  } catch {
    /* not Linux: what node says */
  }
  return Math.floor(freemem() / MIB);
}

/** Threads on the host now (the 4th field of /proc/loadavg is running/total). */
function tasksNow(): number {
  try {
    return Number(readFileSync('/proc/loadavg', 'utf8').split(' ')[3]?.split('/')[1]) || 0;
  } catch {
    return 0;
  }
}

const failedFirst = (a: Check, b: Check) => Number(a.ok) - Number(b.ok);

/** The host status of a manager, with the doctor's probe cached. */
export function hostStatus(manager: SandboxManager): () => Promise<HostStatus> {
  // the last probe that finished, and the one running
  let last: { at: number; report?: HostReport; error?: string } | undefined;
  let running: Promise<void> | undefined;
  const probe = () => {
    if (running || (last && Date.now() - last.at < PROBE_TTL_MS)) return;
    const nestedTemplates = manager.templates
      .list()
      .filter((t) => t.config.nestedContainers === true)
      .map((t) => t.name);
    const at = Date.now();
    running = probeHost({ runtimes: runtimeNames(), nestedTemplates })
      .then(
        (report) => void (last = { at, report }),
        (err: unknown) => void (last = { at, error: errorMessage(err) }),
      )
      .finally(() => (running = undefined));
  };
  return async () => {
    probe();
    const report = last?.report;
    const fs = statfsSync(manager.paths.dataDir);
    const networkSlots = slotsOf(manager);
    const states: Record<string, number> = {};
    let pidsOfSandboxes = 0;
    for (const s of manager.list()) {
      states[s.state] = (states[s.state] ?? 0) + 1;
      pidsOfSandboxes += s.limits.pids ?? 0;
    }
    const [load1, load5, load15] = loadavg();
    return {
      cpus: { count: availableParallelism(), load1: load1!, load5: load5!, load15: load15! },
      memory: { totalMB: Math.floor(totalmem() / MIB), availableMB: memAvailableMB() },
      disk: { path: manager.paths.dataDir, totalMB: Math.floor((fs.blocks * fs.bsize) / MIB), freeMB: Math.floor((fs.bavail * fs.bsize) / MIB) },
      networkSlots,
      pids: { max: readNumber('/proc/sys/kernel/pid_max', 0), tasks: tasksNow(), sandboxes: pidsOfSandboxes },
      pool: manager.poolStatus(),
      gate: { concurrency: manager.gate.opts.concurrency, inFlight: manager.gate.inFlight, queued: manager.gate.queued, maxQueue: manager.gate.opts.maxQueue },
      creates: { ...manager.createCounts },
      sandboxes: states,
      defaultRuntime: manager.runtime.name,
      runtimes: report?.runtimes ?? [],
      doctor: report
        ? {
            probedAt: new Date(last!.at).toISOString(),
            ready: report.ready,
            checks: [...report.checks].sort(failedFirst),
            isolation: [...report.isolation].sort(failedFirst),
          }
        : last?.error !== undefined
          ? { error: last.error }
          : { probing: true as const },
    };
  };
}

/** The network slots (a namespace and address each) in use and free; null: sandboxes have loopback only. */
export function slotsOf(manager: SandboxManager): HostStatus['networkSlots'] {
  const slots = manager.deps.net?.plan?.slots;
  if (slots === undefined) return null;
  const net = manager.store.netSlots;
  const used = net.count('used') + net.count('making') + net.count('releasing');
  return { total: slots, used, free: Math.max(0, slots - used) };
}
