// Teams and their quotas. Every API key belongs to a team; a team's key sees and acts on that
// team's sandboxes, snapshots and templates only (others answer 404), an admin key on all.
// Quotas are checked by the manager's admission hook, synchronously right before the sandbox's
// row is written (create, warm-pool claim), it leaves `paused` (resume) or enters `pausing`
// (pause): check and write are one step of the single-threaded manager, so concurrent
// operations cannot overshoot a quota. New template layers are measured once they exist.
// Teams, their quotas and which have a live key come from the shared store's directory (a
// synchronous copy: see store/shared.ts); what sandboxes hold, from the node's own store.
import type { Logger } from 'pino';
import type { Admission, SandboxManager } from '../sandbox/manager.js';
import type { Template } from '../template/store.js';
import type { SharedStore, TeamDirectory } from '../store/shared.js';
import { sqliteDirectory } from '../store/shared-sqlite.js';
import type { SandboxState, Store, TeamRow } from '../store/store.js';
import { CubeboxError, invalid, notFound } from '../util/errors.js';
import { TeamLayers } from './layer-usage.js';

/** An error with its own HTTP status (403, 429), for the control plane's error handler. */
export class HttpError extends CubeboxError {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(status === 429 ? 'unavailable' : 'invalid_argument', message);
    this.name = 'HttpError';
  }
}

export const quotaExceeded = (message: string) => new HttpError(429, message);

export interface Quota {
  /** Sandboxes that hold a place on the host: running, or paused with their memory. */
  sandboxes: number;
  /** Total vCPUs of the running sandboxes (a paused one uses none). */
  vcpus: number;
  /** Total memory of the running sandboxes and of those paused with their memory, MiB. */
  memoryMB: number;
  /** Total disk of the team, MiB: its sandboxes' disks (running or paused) and its own template layers (snapshots, forks). */
  diskMB: number;
  /** Paused sandboxes the team keeps (with or without memory). */
  pausedSandboxes: number;
  /** Snapshots (templates made through the API) the team keeps. */
  snapshots: number;
  /** Bytes of one sandbox's metadata (keys and values, UTF-8). */
  metadataBytes: number;
  /** Secrets the team stores. */
  secrets: number;
  /** Persistent volumes the team keeps. */
  volumes: number;
  /** Total disk size of the team's volumes, MiB. */
  volumeMB: number;
}

export const DEFAULT_QUOTA: Quota = {
  sandboxes: 20,
  vcpus: 40,
  memoryMB: 20 * 1024,
  diskMB: 50 * 1024,
  pausedSandboxes: 50,
  snapshots: 100,
  metadataBytes: 16 * 1024,
  secrets: 100,
  volumes: 10,
  volumeMB: 20 * 1024,
};

export const QUOTA_KEYS = Object.keys(DEFAULT_QUOTA) as (keyof Quota)[];

const QUOTA_NAMES: Record<keyof Quota, string> = {
  sandboxes: 'sandboxes running or paused with memory',
  vcpus: 'total vCPUs',
  memoryMB: 'total memory (MiB)',
  diskMB: 'total disk (MiB)',
  pausedSandboxes: 'paused sandboxes',
  snapshots: 'snapshots',
  metadataBytes: 'metadata size (bytes)',
  secrets: 'secrets',
  volumes: 'volumes',
  volumeMB: 'total volume size (MiB)',
};

/** What sandboxes hold against their team's quotas. */
export interface Usage {
  sandboxes: number;
  vcpus: number;
  memoryMB: number;
  diskMB: number;
  pausedSandboxes: number;
}
export const USAGE_KEYS = ['sandboxes', 'vcpus', 'memoryMB', 'diskMB', 'pausedSandboxes'] as const;
export const NOTHING: Usage = { sandboxes: 0, vcpus: 0, memoryMB: 0, diskMB: 0, pausedSandboxes: 0 };

interface Costs {
  limits?: { cpuCount?: number; memoryMB?: number };
  diskMB?: number;
  coldPaused?: boolean;
  checkpointed?: boolean;
}

/**
 * What a sandbox in a state holds against its team's quotas. A running one (or one on its way
 * in or out) holds a place, its vCPUs, memory and disk. A pause with memory keeps the frozen
 * processes' RAM, the network slot and the id block: a place, memory and disk, no vCPUs; one
 * to disk (a checkpoint) keeps the place and, instead of the RAM, its image on disk (up to its
 * memory). A filesystem-only pause keeps its disk alone. `pausing` counts both ways until it is paused,
 * so that concurrent pauses cannot pass the paused limit. Stopped sandboxes keep their disk
 * until the reconciler deletes them.
 */
export function holds(state: SandboxState, spec: Costs): Usage {
  const disk = spec.diskMB ?? 0;
  const cpu = spec.limits?.cpuCount ?? 0;
  const mem = spec.limits?.memoryMB ?? 0;
  switch (state) {
    case 'creating':
    case 'running':
    case 'resuming':
      return { sandboxes: 1, vcpus: cpu, memoryMB: mem, diskMB: disk, pausedSandboxes: 0 };
    case 'pausing':
      return { sandboxes: 1, vcpus: cpu, memoryMB: mem, diskMB: disk, pausedSandboxes: 1 };
    case 'paused':
      if (spec.coldPaused) return { sandboxes: 0, vcpus: 0, memoryMB: 0, diskMB: disk, pausedSandboxes: 1 };
      if (spec.checkpointed) return { sandboxes: 1, vcpus: 0, memoryMB: 0, diskMB: disk + mem, pausedSandboxes: 1 };
      return { sandboxes: 1, vcpus: 0, memoryMB: mem, diskMB: disk, pausedSandboxes: 1 };
    case 'stopped':
      return { ...NOTHING, diskMB: disk };
    default:
      return NOTHING;
  }
}

const COUNTED: readonly SandboxState[] = ['creating', 'running', 'pausing', 'paused', 'resuming', 'stopped'];

export function metadataBytes(metadata: Record<string, string>): number {
  let n = 0;
  for (const [k, v] of Object.entries(metadata)) n += Buffer.byteLength(k) + Buffer.byteLength(v);
  return n;
}

/** Who is calling the control plane. */
export interface Caller {
  keyId: string;
  keyPrefix: string;
  team: string;
  admin: boolean;
}

export class Tenancy {
  /** Snapshots being taken per team (counted against the quota before they exist). */
  private readonly pendingSnapshots = new Map<string, number>();

  /** In a cluster: what the team's sandboxes hold on the other nodes (cluster/team-usage.ts). */
  elsewhere?: (team: string) => Promise<Usage>;

  /** The teams' own template layers on disk; without templates (the CLI) layers are not counted. */
  private readonly layers: TeamLayers | undefined;

  /** The teams and which have a live key (default: read from the node's own store). */
  private readonly directory: TeamDirectory;

  constructor(
    private readonly store: Store,
    templates?: { list(): Template[] },
    log?: Logger,
    directory?: TeamDirectory,
  ) {
    this.layers = templates && new TeamLayers(() => templates.list(), log);
    this.directory = directory ?? sqliteDirectory(store);
  }

  /** Brings the directory up to date for a request of `team`'s caller (throws 'unavailable' when the shared store cannot be read). */
  fresh(team?: string): Promise<void> {
    return this.directory.fresh(team);
  }

  team(ref: string): TeamRow | undefined {
    return this.directory.team(ref);
  }

  teams(): TeamRow[] {
    return this.directory.teams();
  }

  quota(team: string): Quota {
    const row = this.directory.team(team);
    return { ...DEFAULT_QUOTA, ...(row ? parseQuota(row.quota) : {}) };
  }

  /** A team without a live key is blocked: its sandboxes are refused on both planes. Host-made sandboxes (no team) never are. */
  blocked(team: string | null | undefined): boolean {
    return !!team && !this.directory.hasLiveKey(team);
  }

  /** What a team's sandboxes hold, leaving out one (the one being admitted), and its own template layers on disk. */
  usage(team: string, except?: string): Usage {
    const u = { ...NOTHING, diskMB: this.layers?.mb(team) ?? 0 };
    for (const r of this.store.teamSandboxes(team, COUNTED)) {
      if (r.id === except) continue;
      const h = holds(r.state, JSON.parse(r.spec) as Costs);
      for (const k of USAGE_KEYS) u[k] += h[k];
    }
    return u;
  }

  /** What the team holds: here, and in a cluster on the other nodes too (as their last figures say). */
  async usageEverywhere(team: string): Promise<Usage> {
    const u = this.usage(team);
    const other = await this.elsewhere?.(team);
    if (other) for (const k of USAGE_KEYS) u[k] += other[k];
    return u;
  }

  /**
   * The manager's admission hook: throws a 429 naming the limit a create, resume or pause
   * would pass. An operation is held only to what it adds: resuming a sandbox paused with its
   * memory adds only its vCPUs (it kept its place, memory and disk), a pause only a paused
   * sandbox; so a resume is never refused for a limit the sandbox already counted in.
   */
  admit(a: Admission): void {
    if (!a.team) return; // host-made and pooled sandboxes
    const { team, adds, q, name } = this.admission({ ...a, team: a.team });
    const u = this.usage(team, a.sandboxId);
    for (const k of USAGE_KEYS) {
      if (adds[k] > 0 && u[k] + adds[k] > q[k])
        throw quotaExceeded(`quota exceeded: ${QUOTA_NAMES[k]} of team '${name}' would be ${u[k] + adds[k]}, its limit (${k}) is ${q[k]}`);
    }
  }

  /**
   * What an operation adds to its team's usage (each limit it may pass: what the sandbox holds
   * after it, where that is more than before), with the checks that need no usage (a blocked
   * team, metadata) done. The sandbox's own holding before the operation is left out of `adds`.
   */
  admission(a: Admission & { team: string }): { team: string; adds: Usage; q: Quota; name: string } {
    if (a.op !== 'pause' && this.blocked(a.team)) throw new HttpError(403, `team '${this.teamName(a.team)}' has no live API key: its sandboxes are blocked`);
    const q = this.quota(a.team);
    const name = this.teamName(a.team);
    if (a.op === 'create') {
      const mb = metadataBytes(a.metadata);
      if (mb > q.metadataBytes)
        throw quotaExceeded(`quota exceeded: metadata is ${mb} bytes, the limit of team '${name}' (metadataBytes) is ${q.metadataBytes}`);
    }
    const row = a.op === 'create' ? undefined : this.store.getSandbox(a.sandboxId);
    const stored = row ? (JSON.parse(row.spec) as Costs) : {};
    const spec: Costs = { limits: a.limits, diskMB: a.diskMB, coldPaused: stored.coldPaused ?? false, checkpointed: stored.checkpointed ?? false };
    const before = row && row.team === a.team ? holds(row.state, spec) : NOTHING;
    const after =
      a.op === 'pause'
        ? holds('paused', { ...spec, coldPaused: a.memory === false, checkpointed: a.memory !== false && a.toDisk === true })
        : holds('running', spec);
    const adds = { ...NOTHING };
    for (const k of USAGE_KEYS) adds[k] = after[k] > before[k] ? after[k] : 0;
    return { team: a.team, adds, q, name };
  }

  /**
   * Teams with sandboxes on this node, each with what its sandboxes hold here (leaving out
   * `except`), template layers not included: what cluster/team-usage.ts counts across nodes.
   */
  usageByTeam(except?: string): Map<string, Usage> {
    const out = new Map<string, Usage>();
    for (const r of this.store.sandboxes.list()) {
      if (!r.team || r.id === except || !COUNTED.includes(r.state)) continue;
      const u = out.get(r.team) ?? { ...NOTHING };
      const h = holds(r.state, JSON.parse(r.spec) as Costs);
      for (const k of USAGE_KEYS) u[k] += h[k];
      out.set(r.team, u);
    }
    return out;
  }

  /**
   * A new template layer of the team exists (a snapshot, a fork's template): measures the
   * team's layers and throws a 429 when its disk now passes the quota (the caller removes
   * the layer again).
   */
  async admitLayer(team: string): Promise<void> {
    if (!this.layers) return;
    await this.layers.measure(team);
    const q = this.quota(team);
    const u = this.usage(team);
    if (u.diskMB > q.diskMB) {
      const layers = this.layers.mb(team);
      throw quotaExceeded(
        `quota exceeded: ${QUOTA_NAMES.diskMB} of team '${this.teamName(team)}' would be ${u.diskMB} ` +
          `(sandbox disks ${u.diskMB - layers}, template and snapshot layers ${layers}), its limit (diskMB) is ${q.diskMB}`,
      );
    }
  }

  /** Makes this the manager's quota admission (creates, resumes, pauses, new layers) and measures the teams' layers. */
  attach(manager: Pick<SandboxManager, 'admit' | 'admitLayer'>): void {
    manager.admit = (a) => this.admit(a);
    manager.admitLayer = (team) => this.admitLayer(team);
    void this.layers?.measureAll();
  }

  /** Metadata alone, before any work: the same limit admit() enforces. */
  checkMetadata(team: string, metadata: Record<string, string>): void {
    const q = this.quota(team);
    const mb = metadataBytes(metadata);
    if (mb > q.metadataBytes)
      throw quotaExceeded(`quota exceeded: metadata is ${mb} bytes, the limit of team '${this.teamName(team)}' (metadataBytes) is ${q.metadataBytes}`);
  }

  /**
   * Reserves one snapshot of the team's quota (existing snapshots plus those in progress);
   * the caller releases it when the snapshot exists or failed.
   */
  reserveSnapshot(team: string, existing: number): () => void {
    const q = this.quota(team);
    const pending = this.pendingSnapshots.get(team) ?? 0;
    if (existing + pending + 1 > q.snapshots) {
      throw quotaExceeded(
        `quota exceeded: snapshots of team '${this.teamName(team)}' would be ${existing + pending + 1}, its limit (snapshots) is ${q.snapshots}`,
      );
    }
    this.pendingSnapshots.set(team, pending + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const n = (this.pendingSnapshots.get(team) ?? 1) - 1;
      if (n > 0) this.pendingSnapshots.set(team, n);
      else this.pendingSnapshots.delete(team);
    };
  }

  /** A new volume of sizeMB next to the team's existing ones: throws a 429 naming the limit it would pass. */
  admitVolume(team: string, existing: { sizeMB: number }[], sizeMB: number): void {
    const q = this.quota(team);
    const name = this.teamName(team);
    if (existing.length + 1 > q.volumes)
      throw quotaExceeded(`quota exceeded: volumes of team '${name}' would be ${existing.length + 1}, its limit (volumes) is ${q.volumes}`);
    const mb = existing.reduce((n, v) => n + v.sizeMB, 0) + sizeMB;
    if (mb > q.volumeMB) throw quotaExceeded(`quota exceeded: ${QUOTA_NAMES.volumeMB} of team '${name}' would be ${mb}, its limit (volumeMB) is ${q.volumeMB}`);
  }

  private teamName(team: string): string {
    return this.directory.team(team)?.name ?? team;
  }
}

export function parseQuota(json: string): Partial<Quota> {
  try {
    const v = JSON.parse(json) as Record<string, unknown>;
    const out: Partial<Quota> = {};
    for (const k of QUOTA_KEYS) if (typeof v[k] === 'number' && Number.isFinite(v[k])) out[k] = v[k] as number;
    return out;
  } catch {
    return {};
  }
}

/** Sets (or, with null, resets to the default) some limits of a team; returns the effective quota. */
export async function setTeamQuota(store: SharedStore, ref: string, change: Partial<Record<keyof Quota, number | null>>): Promise<Quota> {
  // read and write under the team's lock: no other change slips in between (nor fails it)
  const row = await store.teams.changeQuota(ref, (quota) => JSON.stringify(changedQuota(quota, change)));
  if (!row) throw notFound(`no team '${ref}'`);
  store.directory.invalidate();
  return { ...DEFAULT_QUOTA, ...parseQuota(row.quota) };
}

function changedQuota(quota: string, change: Partial<Record<keyof Quota, number | null>>): Partial<Quota> {
  const cur = parseQuota(quota);
  for (const [k, v] of Object.entries(change) as [keyof Quota, number | null | undefined][]) {
    if (!QUOTA_KEYS.includes(k)) throw invalid(`unknown quota '${k}' (${QUOTA_KEYS.join(', ')})`);
    if (v === undefined) continue;
    if (v === null) delete cur[k];
    else if (!Number.isInteger(v) || v < 0) throw invalid(`quota ${k} must be a non-negative integer, got ${v}`);
    else cur[k] = v;
  }
  return cur;
}
