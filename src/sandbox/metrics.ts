import { readFileSync, statfsSync } from 'node:fs';
import { join } from 'node:path';
import type { SandboxManager } from './manager.js';

/** One sample of a sandbox's resource use, in E2B's SandboxMetric shape (without timestamps). */
export interface MetricSample {
  ts: number; // ms epoch
  cpuCount: number;
  cpuUsedPct: number;
  memUsed: number;
  memTotal: number;
  memCache: number;
  diskUsed: number;
  diskTotal: number;
}

const KEEP_MS = 60 * 60 * 1000;
/** Team series are small (two numbers a tick): a day of them. */
const TEAM_KEEP_MS = 24 * 60 * 60 * 1000;

/** One point of a team's series, in E2B's TeamMetric terms (without timestamps). */
export interface TeamSample {
  ts: number; // ms epoch
  concurrentSandboxes: number;
  /** Sandboxes started per second since the previous point. */
  sandboxStartRate: number;
}

/** Sandboxes that count as running for a team: E2B counts what holds resources now. */
const LIVE_STATES = new Set(['creating', 'running', 'pausing', 'resuming']);

/**
 * Samples every running sandbox's cgroup (CPU, memory) and writable layer (disk) on an
 * interval, keeping an hour of history per sandbox for the metrics routes.
 */
export class MetricsSampler {
  private readonly history = new Map<string, MetricSample[]>();
  private readonly lastCpu = new Map<string, { at: number; usageNs: number }>();
  private readonly teams = new Map<string, TeamSample[]>();
  private lastTeamTick = Date.now();
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly manager: SandboxManager) {}

  start(intervalMs = 5000): void {
    this.timer = setInterval(() => this.sampleAll(), intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }

  private sampleAll(): void {
    this.sampleTeams();
    const live = new Set<string>();
    for (const s of this.manager.list()) {
      if (s.state !== 'running') continue;
      live.add(s.id);
      try {
        this.record(s.id, this.sample(s.id));
      } catch {
        /* the sandbox went away meanwhile */
      }
    }
    for (const id of this.history.keys()) if (!live.has(id) && !this.manager.store.getSandbox(id)) this.forget(id);
  }

  private record(id: string, m: MetricSample): void {
    const list = this.history.get(id) ?? [];
    list.push(m);
    while (list.length && list[0]!.ts < m.ts - KEEP_MS) list.shift();
    this.history.set(id, list);
  }

  forget(id: string): void {
    this.history.delete(id);
    this.lastCpu.delete(id);
  }

  /** Samples in [startMs, endMs], plus a fresh one when the sandbox runs and none is recent. */
  range(id: string, startMs?: number, endMs?: number): MetricSample[] {
    const info = this.manager.get(id);
    if (info.state === 'running') {
      const list = this.history.get(id) ?? [];
      const last = list[list.length - 1];
      if (!last || Date.now() - last.ts > 100) this.record(id, this.sample(id));
    }
    return (this.history.get(id) ?? []).filter((m) => (startMs === undefined || m.ts >= startMs) && (endMs === undefined || m.ts <= endMs));
  }

  /**
   * Every team's concurrent sandboxes now, and its start rate since the last tick (sandboxes
   * whose start falls in between: one created and deleted within a tick is not seen).
   */
  private sampleTeams(now = Date.now()): void {
    const counts = this.teamCounts(this.lastTeamTick, now);
    for (const t of this.teams.keys()) if (!counts.has(t)) counts.set(t, { ts: now, concurrentSandboxes: 0, sandboxStartRate: 0 });
    this.lastTeamTick = now;
    for (const [team, point] of counts) {
      const list = this.teams.get(team) ?? [];
      list.push(point);
      while (list.length && list[0]!.ts < now - TEAM_KEEP_MS) list.shift();
      this.teams.set(team, list);
    }
  }

  private teamCounts(since: number, now: number): Map<string, TeamSample> {
    const counts = new Map<string, { live: number; started: number }>();
    for (const s of this.manager.list()) {
      if (!s.team) continue;
      const c = counts.get(s.team) ?? { live: 0, started: 0 };
      if (LIVE_STATES.has(s.state)) c.live++;
      const started = s.startedAt ?? s.createdAt;
      if (started > since && started <= now) c.started++;
      counts.set(s.team, c);
    }
    const seconds = Math.max(1, (now - since) / 1000);
    return new Map(
      [...counts].map(([team, c]) => [team, { ts: now, concurrentSandboxes: c.live, sandboxStartRate: Math.round((c.started / seconds) * 1000) / 1000 }]),
    );
  }

  /**
   * A team's points in [startMs, endMs]; a window reaching the present ends with a point taken
   * now (not stored), so a caller sees sandboxes it created since the last tick.
   */
  teamRange(team: string, startMs?: number, endMs?: number): TeamSample[] {
    const now = Date.now();
    const points = (this.teams.get(team) ?? []).filter((m) => (startMs === undefined || m.ts >= startMs) && (endMs === undefined || m.ts <= endMs));
    const presentInWindow = (endMs === undefined || endMs >= now - 1000) && (startMs === undefined || startMs <= now);
    if (presentInWindow && now > this.lastTeamTick) {
      const live = this.teamCounts(this.lastTeamTick, now).get(team) ?? { ts: now, concurrentSandboxes: 0, sandboxStartRate: 0 };
      points.push({ ...live, ts: endMs === undefined ? now : Math.min(now, endMs) });
    }
    return points;
  }

  latest(id: string): MetricSample | undefined {
    const r = this.range(id);
    return r[r.length - 1];
  }

  sample(id: string): MetricSample {
    const info = this.manager.get(id);
    const dirs = this.manager.cgroup(id).existing();
    const now = Date.now();
    const cpuNs = readCpuNs(dirs);
    const prev = this.lastCpu.get(id);
    let cpuUsedPct = 0;
    if (prev && now > prev.at) cpuUsedPct = Math.max(0, ((cpuNs - prev.usageNs) / 1e6 / (now - prev.at) / info.limits.cpuCount) * 100);
    this.lastCpu.set(id, { at: now, usageNs: cpuNs });
    const mem = readMemory(dirs);
    return {
      ts: now,
      cpuCount: info.limits.cpuCount,
      cpuUsedPct: Math.round(cpuUsedPct * 100) / 100,
      memUsed: mem.used,
      memTotal: info.limits.memoryMB * 1024 * 1024,
      memCache: mem.cache,
      diskUsed: this.diskUsed(id),
      diskTotal: 0, // filled by the caller from the template's disk size
    };
  }

  /** Bytes used on the sandbox's own disk (its writable layer). */
  private diskUsed(id: string): number {
    let bytes = 0;
    try {
      const st = statfsSync(join(this.manager.sandboxDir(id), 'disk'));
      bytes = (st.blocks - st.bfree) * st.bsize;
    } catch {
      /* no disk mounted */
    }
    return bytes;
  }
}

function read(file: string): string | undefined {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
}

function readCpuNs(dirs: string[]): number {
  for (const d of dirs) {
    const v1 = read(join(d, 'cpuacct.usage'));
    if (v1 !== undefined) return Number(v1.trim());
    const v2 = read(join(d, 'cpu.stat'));
    const m = v2?.match(/usage_usec (\d+)/);
    if (m) return Number(m[1]) * 1000;
  }
  return 0;
}

function readMemory(dirs: string[]): { used: number; cache: number } {
  for (const d of dirs) {
    const usage = read(join(d, 'memory.usage_in_bytes')) ?? read(join(d, 'memory.current'));
    if (usage === undefined) continue;
    const stat = read(join(d, 'memory.stat')) ?? '';
    const field = (name: string) => Number(stat.match(new RegExp(`^${name} (\\d+)`, 'm'))?.[1] ?? 0);
    const cache = field('cache') || field('file');
    const inactive = field('total_inactive_file') || field('inactive_file');
    return { used: Math.max(0, Number(usage.trim()) - inactive), cache };
  }
  return { used: 0, cache: 0 };
}
