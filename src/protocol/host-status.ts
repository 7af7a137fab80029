// What GET /admin/host answers: shared by the API that builds it (api/host-status.ts) and the
// dashboard that shows it. Types only and no imports: the dashboard's browser bundle pulls this in.

/** One of the doctor's findings. */
export interface Check {
  name: string;
  ok: boolean;
  essential: boolean;
  detail: string;
}

/** A runtime as the doctor found it. */
export interface RuntimeStatus {
  name: string;
  installed: boolean;
  version?: string;
  works: boolean;
  detail: string;
}

export interface HostStatus {
  cpus: { count: number; load1: number; load5: number; load15: number };
  memory: { totalMB: number; availableMB: number };
  /** The filesystem of the data directory. */
  disk: { path: string; totalMB: number; freeMB: number };
  /** Network slots (a namespace and address each): null when sandboxes have loopback only. */
  networkSlots: { total: number; used: number; free: number } | null;
  /** Host-wide pid_max and tasks now; what the sandboxes here may hold together. */
  pids: { max: number; tasks: number; sandboxes: number };
  pool: Array<{ template: string; min: number; max: number; target: number; ready: number }>;
  gate: { concurrency: number; inFlight: number; queued: number; maxQueue: number };
  creates: { pool: number; new: number; refused: number };
  sandboxes: Record<string, number>;
  /** The runtime new sandboxes get, and every runtime as the doctor found it. */
  defaultRuntime: string;
  runtimes: RuntimeStatus[];
  /** The doctor's checks and isolation warnings (ok: false first), and when they were probed. */
  doctor: { probedAt: string; ready: boolean; checks: Check[]; isolation: Check[] } | { probing: true } | { error: string };
}
