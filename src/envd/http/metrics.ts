// GET /metrics: CPU, memory and disk of the sandbox. Inside a sandbox /sys/fs/cgroup is the
// sandbox's own cgroup (cgroup namespace), v2 or v1; without usable cgroup files it falls back to
// /proc/meminfo and /proc/stat. Disk is statfs of the root filesystem.
import { readFile, statfs } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';

interface CpuSample {
  /** CPU time used, microseconds. */
  usedUs: number;
  /** Wall clock (or total CPU time for /proc/stat), microseconds. */
  atUs: number;
  /** Whether atUs is total CPU time across CPUs (/proc/stat) rather than wall time. */
  totalIsCpuTime: boolean;
}

async function readText(p: string): Promise<string | undefined> {
  try {
    return await readFile(p, 'utf8');
  } catch {
    return undefined;
  }
}

async function readNumber(p: string): Promise<number | undefined> {
  const t = (await readText(p))?.trim();
  if (t === undefined || t === '' || t === 'max') return undefined;
  const n = Number(t);
  return Number.isFinite(n) ? n : undefined;
}

function keyValues(text: string | undefined): Map<string, number> {
  const m = new Map<string, number>();
  for (const line of (text ?? '').split('\n')) {
    const parts = line.trim().split(/\s+/);
    if (parts.length >= 2 && parts[0]) m.set(parts[0].replace(/:$/, ''), Number(parts[1]));
  }
  return m;
}

const HUGE_LIMIT = 2 ** 60;

export class MetricsCollector {
  private last?: CpuSample;
  private v2?: string;
  private v1?: { memory?: string; cpuacct?: string; cpu?: string };
  private probed = false;

  constructor(private readonly cgroupRoot = '/sys/fs/cgroup') {}

  /** Locate the cgroup files: the mount root (a sandbox's own cgroup) or this process's cgroup. */
  private async probe(): Promise<void> {
    if (this.probed) return;
    this.probed = true;
    const root = this.cgroupRoot;
    if ((await readText(join(root, 'cgroup.controllers'))) !== undefined) {
      const candidates = [root];
      const self = await readText('/proc/self/cgroup');
      const line = self?.split('\n').find((l) => l.startsWith('0::'));
      if (line) candidates.push(join(root, line.slice(3)));
      for (const c of candidates) {
        if ((await readText(join(c, 'memory.current'))) !== undefined) {
          this.v2 = c;
          return;
        }
      }
      for (const c of candidates) {
        if ((await readText(join(c, 'cpu.stat'))) !== undefined) {
          this.v2 = c;
          return;
        }
      }
      return;
    }
    const v1: { memory?: string; cpuacct?: string; cpu?: string } = {};
    for (const ctl of ['memory', 'cpuacct', 'cpu'] as const) {
      for (const dir of [join(root, ctl), join(root, 'cpu,cpuacct')]) {
        const probeFile = ctl === 'memory' ? 'memory.usage_in_bytes' : ctl === 'cpuacct' ? 'cpuacct.usage' : 'cpu.cfs_quota_us';
        if ((await readText(join(dir, probeFile))) !== undefined) {
          v1[ctl] = dir;
          break;
        }
      }
    }
    if (v1.memory || v1.cpuacct) this.v1 = v1;
  }

  private async cpuCount(): Promise<number> {
    const host = availableParallelism();
    if (this.v2) {
      const max = (await readText(join(this.v2, 'cpu.max')))?.trim().split(/\s+/);
      if (max && max[0] && max[0] !== 'max') {
        const q = Number(max[0]);
        const p = Number(max[1] ?? 100000);
        if (q > 0 && p > 0) return Math.max(1, Math.min(host, Math.ceil(q / p)));
      }
    } else if (this.v1?.cpu) {
      const q = await readNumber(join(this.v1.cpu, 'cpu.cfs_quota_us'));
      const p = await readNumber(join(this.v1.cpu, 'cpu.cfs_period_us'));
      if (q && q > 0 && p && p > 0) return Math.max(1, Math.min(host, Math.ceil(q / p)));
    }
    return host;
  }

  private async cpuSample(): Promise<CpuSample | undefined> {
    const now = Number(process.hrtime.bigint() / 1000n);
    if (this.v2) {
      const usage = keyValues(await readText(join(this.v2, 'cpu.stat'))).get('usage_usec');
      if (usage !== undefined) return { usedUs: usage, atUs: now, totalIsCpuTime: false };
    }
    if (this.v1?.cpuacct) {
      const ns = await readNumber(join(this.v1.cpuacct, 'cpuacct.usage'));
      if (ns !== undefined) return { usedUs: ns / 1000, atUs: now, totalIsCpuTime: false };
    }
    const line = (await readText('/proc/stat'))?.split('\n').find((l) => l.startsWith('cpu '));
    if (!line) return undefined;
    const f = line.trim().split(/\s+/).slice(1).map(Number);
    const total = f.reduce((a, b) => a + (Number.isFinite(b) ? b : 0), 0);
    const idle = (f[3] ?? 0) + (f[4] ?? 0);
    return { usedUs: (total - idle) * 10_000, atUs: total * 10_000, totalIsCpuTime: true };
  }

  private async cpuPercent(cpus: number): Promise<number> {
    let prev = this.last;
    if (!prev) {
      prev = await this.cpuSample();
      await new Promise((r) => setTimeout(r, 100));
    }
    const cur = await this.cpuSample();
    this.last = cur;
    if (!prev || !cur || cur.atUs <= prev.atUs) return 0;
    const used = cur.usedUs - prev.usedUs;
    const span = cur.atUs - prev.atUs;
    const pct = cur.totalIsCpuTime ? (used / span) * 100 : (used / (span * cpus)) * 100;
    return Math.round(Math.min(100, Math.max(0, pct)) * 100) / 100;
  }

  private async memory(): Promise<{ used: number; total: number; cache: number }> {
    const info = keyValues(await readText('/proc/meminfo'));
    const hostTotal = (info.get('MemTotal') ?? 0) * 1024;
    const hostAvail = (info.get('MemAvailable') ?? info.get('MemFree') ?? 0) * 1024;
    const hostCache = (info.get('Cached') ?? 0) * 1024;
    if (this.v2) {
      const current = await readNumber(join(this.v2, 'memory.current'));
      if (current !== undefined) {
        const max = await readNumber(join(this.v2, 'memory.max'));
        const stat = keyValues(await readText(join(this.v2, 'memory.stat')));
        const total = max && max < HUGE_LIMIT ? Math.min(max, hostTotal || max) : hostTotal;
        const inactive = stat.get('inactive_file') ?? 0;
        return { used: Math.max(0, current - inactive), total, cache: stat.get('file') ?? 0 };
      }
    }
    if (this.v1?.memory) {
      const usage = await readNumber(join(this.v1.memory, 'memory.usage_in_bytes'));
      if (usage !== undefined) {
        const limit = await readNumber(join(this.v1.memory, 'memory.limit_in_bytes'));
        const stat = keyValues(await readText(join(this.v1.memory, 'memory.stat')));
        const total = limit && limit < HUGE_LIMIT ? Math.min(limit, hostTotal || limit) : hostTotal;
        const inactive = stat.get('total_inactive_file') ?? 0;
        return { used: Math.max(0, usage - inactive), total, cache: stat.get('total_cache') ?? stat.get('cache') ?? 0 };
      }
    }
    return { used: Math.max(0, hostTotal - hostAvail), total: hostTotal, cache: hostCache };
  }

  async collect(): Promise<Record<string, number>> {
    await this.probe();
    const cpus = await this.cpuCount();
    const [cpu, mem, disk] = await Promise.all([this.cpuPercent(cpus), this.memory(), statfs('/').catch(() => undefined)]);
    const diskTotal = disk ? disk.blocks * disk.bsize : 0;
    const diskUsed = disk ? (disk.blocks - disk.bfree) * disk.bsize : 0;
    return {
      ts: Math.floor(Date.now() / 1000),
      cpu_count: cpus,
      cpu_used_pct: cpu,
      mem_used: mem.used,
      mem_total: mem.total,
      mem_used_mib: Math.floor(mem.used / (1024 * 1024)),
      mem_total_mib: Math.floor(mem.total / (1024 * 1024)),
      mem_cache: mem.cache,
      disk_used: diskUsed,
      disk_total: diskTotal,
    };
  }
}
