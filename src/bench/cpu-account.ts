// CPU accounting for `cubebox bench --profile`. The service's own JS is process.cpuUsage() (every
// thread of this process). Each host-side process is seen through spawnChild's observer and is
// charged what this process's reaped-children CPU (cutime + cstime of /proc/self/stat, which
// includes the grandchildren each child reaped) grew by when it was reaped: those are counted in
// clock ticks (10 ms), so one process's figure is coarse, but the figures telescope and their sum
// over a run is exact to a tick. Children reaped together share the growth evenly. A create's
// phases are the fault points provisioning passes (src/sandbox/provision.ts).
import type { ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { isRuntimeName } from '../runtime/registry.js';
import { observeSpawns } from '../util/exec.js';
import { observeFaultPoints } from '../util/fault.js';

/** USER_HZ: Linux reports children's CPU in 1/100 s on every architecture it runs on. */
const TICK_MS = 10;

const RUNTIME_VERBS = new Set([
  'run',
  'create',
  'start',
  'exec',
  'delete',
  'kill',
  'state',
  'list',
  'pause',
  'resume',
  'checkpoint',
  'restore',
  'ps',
  'events',
]);

/** What a create's segment ending at a fault point does (unknown points keep their name). */
const PHASES: Record<string, string> = {
  'create:after-dir': 'row + directory',
  'create:after-disk': 'disk image',
  'create:after-mount': 'rootfs mounts',
  'create:after-network': 'network',
  'create:before-run': 'bundle',
  'create:after-run': 'runtime run',
  'create:after-agent': 'envd ready + /init',
};
export const LAST_PHASE = 'state running';

/** CPU of this process's reaped children (and theirs) so far, ms, to a tick. */
export function childrenCpuMs(): number {
  const stat = readFileSync('/proc/self/stat', 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[13]) + Number(f[14])) * TICK_MS; // fields 16 and 17: cutime, cstime
}

/**
 * CPU (ms) every kernel thread of the host has used so far (loop devices, kworkers, softirqs):
 * work a create causes that no process is charged. Host-wide, so other load lands here too.
 */
export function kernelThreadsCpuMs(): number {
  let ns = 0;
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
      if (e !== '2' && stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1] !== '2') continue; // kthreadd's children
      ns += Number(readFileSync(`/proc/${e}/schedstat`, 'utf8').split(' ')[0]);
    } catch {
      /* gone */
    }
  }
  return ns / 1e6;
}

export const jsCpuMs = (since?: NodeJS.CpuUsage): number => {
  const u = process.cpuUsage(since);
  return (u.user + u.system) / 1000;
};

/** A spawn's kind: the program, with the runtime's verb (also when the helper runs the runtime) or ip's object. */
export function kindOf(file: string, args: readonly string[]): string {
  const name = basename(file);
  if (args[0] === 'run-runtime') {
    const i = args.findIndex((a) => a.startsWith('/'));
    const verb = args.slice(i + 1).find((a) => RUNTIME_VERBS.has(a)) ?? '?';
    return `${i >= 0 ? basename(args[i]!) : '?'} ${verb} (via ${name})`;
  }
  if (isRuntimeName(name)) return `${name} ${args.find((a) => RUNTIME_VERBS.has(a)) ?? '?'}`;
  if (name === 'ip') {
    for (let i = 0; i < args.length; i++) {
      if (args[i] === '-n' || args[i] === '-netns') i++;
      else if (!args[i]!.startsWith('-')) return `ip ${args[i]}`;
    }
  }
  return name;
}

export interface KindFigures {
  count: number;
  /** The processes' own CPU (reaped children). */
  cpuMs: number;
  /** The service's CPU in the spawn calls (fork and exec of a large process): part of its JS figure. */
  spawnMs: number;
}

/** What a window of time (a create, its aftermath) cost. */
export interface CpuWindow {
  jsMs: number;
  /** Growth of the reaped children's CPU (to a tick). */
  childrenMs: number;
  kinds: Map<string, KindFigures>;
  /** Per phase: the service's JS and its children reaped in it. */
  phases: Map<string, { jsMs: number; childrenMs: number }>;
  /** Children's CPU no observed spawn accounts for (spawns that bypass spawnChild). */
  unattributedMs: number;
}

export class CpuAccount {
  /** Observed children not reaped yet. */
  live = 0;
  lastExit = 0;
  private kinds = new Map<string, KindFigures>();
  private phases = new Map<string, { jsMs: number; childrenMs: number }>();
  private pending: string[] = [];
  private flushing = false;
  private unattributed = 0;
  private children = childrenCpuMs();
  private childrenAtStart = this.children;
  private js = process.cpuUsage();
  private phaseJs = process.cpuUsage();
  private phaseChildren = this.children;

  constructor() {
    observeSpawns((file, args) => {
      const kind = kindOf(file, args);
      const t0 = process.cpuUsage();
      return (child) => {
        this.kind(kind).spawnMs += jsCpuMs(t0);
        this.spawned(kind, child);
      };
    });
    observeFaultPoints((name) => this.endPhase(PHASES[name] ?? name));
  }

  close(): void {
    observeSpawns(undefined);
    observeFaultPoints(undefined);
  }

  /** Ends the current window: its figures, and a new window starts. */
  take(): CpuWindow {
    this.flush();
    const w: CpuWindow = {
      jsMs: jsCpuMs(this.js),
      childrenMs: this.children - this.childrenAtStart,
      kinds: this.kinds,
      phases: this.phases,
      unattributedMs: this.unattributed,
    };
    this.kinds = new Map();
    this.phases = new Map();
    this.unattributed = 0;
    this.childrenAtStart = this.children;
    this.js = this.phaseJs = process.cpuUsage();
    this.phaseChildren = this.children;
    return w;
  }

  /** Charges the JS (and the children reaped) since the last phase end to `phase`. */
  endPhase(phase: string): void {
    this.flush();
    const p = this.phase(phase);
    p.jsMs += jsCpuMs(this.phaseJs);
    p.childrenMs += this.children - this.phaseChildren;
    this.phaseJs = process.cpuUsage();
    this.phaseChildren = this.children;
  }

  private phase(name: string) {
    let p = this.phases.get(name);
    if (!p) this.phases.set(name, (p = { jsMs: 0, childrenMs: 0 }));
    return p;
  }

  private kind(name: string): KindFigures {
    let k = this.kinds.get(name);
    if (!k) this.kinds.set(name, (k = { count: 0, cpuMs: 0, spawnMs: 0 }));
    return k;
  }

  private spawned(kind: string, child: ChildProcess): void {
    this.kind(kind).count++;
    if (child.pid === undefined) return;
    this.live++;
    child.once('exit', () => {
      this.live--;
      this.lastExit = Date.now();
      this.pending.push(kind);
      // every child libuv reaped in this round is in the growth: share it once they all reported
      if (!this.flushing) {
        this.flushing = true;
        setImmediate(() => this.flush());
      }
    });
  }

  private flush(): void {
    this.flushing = false;
    const now = childrenCpuMs();
    const grew = now - this.children;
    this.children = now;
    if (!grew && !this.pending.length) return;
    if (this.pending.length) for (const k of this.pending) this.kind(k).cpuMs += grew / this.pending.length;
    else this.unattributed += grew;
    this.pending = [];
  }
}
