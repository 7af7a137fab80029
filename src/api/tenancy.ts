// Teams and their quotas. Every API key belongs to a team; a team's key sees and acts on that
// team's sandboxes, snapshots and templates only (others answer 404), an admin key on all.
// Quotas are checked by the manager's admission hook, synchronously right before the sandbox's
// row is written (create, warm-pool claim) or it leaves `paused` (resume): check and write are
// one step of the single-threaded manager, so concurrent creates cannot overshoot a quota.
import type { Admission } from '../sandbox/manager.js';
import type { SandboxState, Store, TeamRow } from '../store/store.js';
import { CubeboxError, invalid, notFound } from '../util/errors.js';

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
  /** Sandboxes running at once (paused ones do not count; resuming one does). */
  sandboxes: number;
  /** Total vCPUs of the running sandboxes. */
  vcpus: number;
  /** Total memory of the running sandboxes, MiB. */
  memoryMB: number;
  /** Total disk size of the team's sandboxes, running or paused, MiB. */
  diskMB: number;
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
  snapshots: 100,
  metadataBytes: 16 * 1024,
  secrets: 100,
  volumes: 10,
  volumeMB: 20 * 1024,
};

export const QUOTA_KEYS = Object.keys(DEFAULT_QUOTA) as (keyof Quota)[];

const QUOTA_NAMES: Record<keyof Quota, string> = {
  sandboxes: 'concurrent sandboxes',
  vcpus: 'total vCPUs',
  memoryMB: 'total memory (MiB)',
  diskMB: 'total disk (MiB)',
  snapshots: 'snapshots',
  metadataBytes: 'metadata size (bytes)',
  secrets: 'secrets',
  volumes: 'volumes',
  volumeMB: 'total volume size (MiB)',
};

const RUNNING: readonly SandboxState[] = ['creating', 'running', 'pausing', 'resuming'];
const HOLDING_DISK: readonly SandboxState[] = [...RUNNING, 'paused', 'stopped'];

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

  constructor(private readonly store: Store) {}

  team(ref: string): TeamRow | undefined {
    return this.store.getTeam(ref);
  }

  teams(): TeamRow[] {
    return this.store.listTeams();
  }

  quota(team: string): Quota {
    const row = this.store.getTeam(team);
    return { ...DEFAULT_QUOTA, ...(row ? parseQuota(row.quota) : {}) };
  }

  /** A team without a live key is blocked: its sandboxes are refused on both planes. Host-made sandboxes (no team) never are. */
  blocked(team: string | null | undefined): boolean {
    return !!team && !this.store.teamHasLiveKey(team);
  }

  /** Usage of a team, leaving out one sandbox (the one being admitted). */
  usage(team: string, except?: string): { sandboxes: number; vcpus: number; memoryMB: number; diskMB: number } {
    const u = { sandboxes: 0, vcpus: 0, memoryMB: 0, diskMB: 0 };
    for (const r of this.store.teamSandboxes(team, HOLDING_DISK)) {
      if (r.id === except) continue;
      const spec = JSON.parse(r.spec) as { limits?: { cpuCount?: number; memoryMB?: number }; diskMB?: number };
      u.diskMB += spec.diskMB ?? 0;
      if (!RUNNING.includes(r.state)) continue;
      u.sandboxes++;
      u.vcpus += spec.limits?.cpuCount ?? 0;
      u.memoryMB += spec.limits?.memoryMB ?? 0;
    }
    return u;
  }

  /** The manager's admission hook: throws a 429 naming the limit a create or resume would pass. */
  admit(a: Admission): void {
    if (!a.team) return; // host-made and pooled sandboxes
    if (this.blocked(a.team)) throw new HttpError(403, `team '${this.teamName(a.team)}' has no live API key: its sandboxes are blocked`);
    const q = this.quota(a.team);
    const name = this.teamName(a.team);
    const refuse = (k: keyof Quota, want: number) =>
      quotaExceeded(`quota exceeded: ${QUOTA_NAMES[k]} of team '${name}' would be ${want}, its limit (${k}) is ${q[k]}`);
    if (a.op === 'create') {
      const mb = metadataBytes(a.metadata);
      if (mb > q.metadataBytes)
        throw quotaExceeded(`quota exceeded: metadata is ${mb} bytes, the limit of team '${name}' (metadataBytes) is ${q.metadataBytes}`);
    }
    const u = this.usage(a.team, a.sandboxId);
    if (u.sandboxes + 1 > q.sandboxes) throw refuse('sandboxes', u.sandboxes + 1);
    if (u.vcpus + a.limits.cpuCount > q.vcpus) throw refuse('vcpus', u.vcpus + a.limits.cpuCount);
    if (u.memoryMB + a.limits.memoryMB > q.memoryMB) throw refuse('memoryMB', u.memoryMB + a.limits.memoryMB);
    if (u.diskMB + a.diskMB > q.diskMB) throw refuse('diskMB', u.diskMB + a.diskMB);
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
    return this.store.getTeam(team)?.name ?? team;
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
export function setTeamQuota(store: Store, ref: string, change: Partial<Record<keyof Quota, number | null>>): Quota {
  const row = store.getTeam(ref);
  if (!row) throw notFound(`no team '${ref}'`);
  const cur = parseQuota(row.quota);
  for (const [k, v] of Object.entries(change) as [keyof Quota, number | null | undefined][]) {
    if (!QUOTA_KEYS.includes(k)) throw invalid(`unknown quota '${k}' (${QUOTA_KEYS.join(', ')})`);
    if (v === undefined) continue;
    if (v === null) delete cur[k];
    else if (!Number.isInteger(v) || v < 0) throw invalid(`quota ${k} must be a non-negative integer, got ${v}`);
    else cur[k] = v;
  }
  store.setTeamQuota(row.id, JSON.stringify(cur));
  return { ...DEFAULT_QUOTA, ...cur };
}
