import { SANDBOX_STATES, type SandboxState } from '../store/store.js';
import { conflict, CubeboxError } from '../util/errors.js';

/**
 * The sandbox state machine on one page: the states, the transitions allowed between them,
 * the preconditions of each operation, the deadline of each transitional state, and how the
 * states look through E2B's API.
 *
 *              insert                      claim (warm pool)
 *   (none) ───────────► creating ◄────────────────────── pooled
 *                          │  └──── envd ready, pool fill ──►│
 *                          ▼ envd ready, /init done          │
 *   ┌──────────────────► running ◄─────────┐                │
 *   │   pause/snapshot     │                │ resume done    │
 *   │                      ▼                │                │
 *   │   snapshot done   pausing ──► paused ─┴──► resuming ───┘ (host shows)
 *   └──────────────────────┘           ▲                │
 *                                      └─ interrupted ──┘
 *   pausing / resuming, interrupted: settle to what the host shows (running, paused, stopped, failed)
 *   any state ──► deleting ──► (row gone)      a failed teardown keeps `deleting` (rule 4)
 *   running, paused, pooled ──► stopped (the main process exited); failed: an operation failed,
 *   or what the sandbox needs on the host (its disk, its network) is gone and cannot be made again
 */

// The names themselves are the store's vocabulary (a lower floor), re-exported here.
export { SANDBOX_STATES, type SandboxState };

/**
 * Every state change the manager makes, from -> to. `deleting` is reachable from every state
 * (rule 1) and from itself (a teardown retried). What the host shows may override a stored
 * running/paused/pooled state (the reconciler), and an interrupted pausing/resuming settles to
 * what the host shows.
 */
export const TRANSITIONS: Readonly<Record<SandboxState, readonly SandboxState[]>> = {
  creating: ['running', 'pooled', 'failed', 'deleting'],
  pooled: ['creating', 'paused', 'stopped', 'failed', 'deleting'],
  running: ['pausing', 'paused', 'stopped', 'failed', 'deleting'],
  pausing: ['paused', 'running', 'stopped', 'failed', 'deleting'],
  paused: ['resuming', 'running', 'stopped', 'failed', 'deleting'],
  resuming: ['running', 'paused', 'stopped', 'failed', 'deleting'],
  stopped: ['deleting'],
  failed: ['deleting'],
  deleting: ['deleting', 'failed'],
};

/** Whether the manager may move a sandbox from one state to another. */
export function canTransition(from: SandboxState, to: SandboxState): boolean {
  return TRANSITIONS[from].includes(to);
}

/** Throws an internal error for a transition the table does not allow (a bug, not a user error). */
export function assertTransition(from: SandboxState, to: SandboxState): void {
  if (!canTransition(from, to)) throw new CubeboxError('internal', `a sandbox cannot go from ${from} to ${to}`);
}

/** Operations whose precondition is the sandbox's state, read under its lock (rule 6). */
export type Operation = 'pause' | 'resume' | 'snapshot' | 'exec' | 'connect' | 'refresh' | 'setTimeout' | 'claim' | 'updateNetwork';

interface OperationRule {
  /** The states the operation may start from. */
  from: readonly SandboxState[];
  /** The conflict message for any other state. */
  refusal: (id: string, state: SandboxState) => string;
}

const OPERATIONS: Readonly<Record<Operation, OperationRule>> = {
  pause: {
    from: ['running'],
    refusal: (id, s) => (s === 'paused' ? `sandbox '${id}' is already paused` : `sandbox '${id}' is ${s}; only a running sandbox can be paused`),
  },
  resume: {
    from: ['paused'],
    refusal: (id, s) => (s === 'running' ? `sandbox '${id}' is already running` : `sandbox '${id}' is ${s}; only a paused sandbox can be resumed`),
  },
  snapshot: { from: ['running', 'paused'], refusal: (id, s) => `sandbox '${id}' is ${s}; only a running or paused sandbox can be snapshotted` },
  exec: {
    from: ['running'],
    refusal: (id, s) =>
      s === 'paused' ? `sandbox '${id}' is paused; resume it before running commands` : `sandbox '${id}' is ${s}; commands need a running sandbox`,
  },
  connect: { from: ['running', 'paused'], refusal: (id, s) => (s === 'deleting' ? `sandbox '${id}' is being deleted` : `sandbox '${id}' is ${s}`) },
  refresh: { from: ['running'], refusal: (id, s) => `sandbox '${id}' is ${s}` },
  setTimeout: { from: SANDBOX_STATES.filter((s) => s !== 'deleting'), refusal: (id) => `sandbox '${id}' is being deleted` },
  updateNetwork: { from: ['running', 'paused'], refusal: (id, s) => `sandbox '${id}' is ${s}` },
  claim: { from: ['pooled'], refusal: (id, s) => `sandbox '${id}' is ${s}, not pooled` },
};

/** Whether an operation may start from this state. */
export function allows(op: Operation, state: SandboxState): boolean {
  return OPERATIONS[op].from.includes(state);
}

/** Throws the operation's conflict (HTTP 409, exit code 4) unless it may start from this state. */
export function assertOperation(op: Operation, id: string, state: SandboxState): void {
  if (!allows(op, state)) throw conflict(OPERATIONS[op].refusal(id, state));
}

/**
 * How long each transitional state may last before the reconciler resolves it (rule 9).
 * Longer than one runtime call's timeout (RUNTIME_CALL_TIMEOUT_MS), so a hung call ends first.
 */
export const STATE_DEADLINE_MS: Readonly<Partial<Record<SandboxState, number>>> = {
  creating: 120_000,
  pausing: 30_000,
  resuming: 30_000,
  deleting: 60_000,
};

/** The deadline of a state entered at `now`, or null for a state that may last. */
export function deadlineFor(state: SandboxState, now: number): number | null {
  const d = STATE_DEADLINE_MS[state];
  return d ? now + d : null;
}

/** States that are not E2B's but shown through its API as paused, with `cubeboxState` and `error`. */
const SHOWN_AS_PAUSED: readonly SandboxState[] = ['stopped', 'failed', 'deleting'];

/**
 * running/paused as E2B reports them; undefined for sandboxes the API treats as gone (pooled
 * ones are nobody's yet). stopped, failed and deleting sandboxes still exist and hold their
 * disk but run nothing: shown as paused, with `cubeboxState` (see below), so DELETE can retry.
 */
export function e2bStateOf(state: SandboxState): 'running' | 'paused' | undefined {
  switch (state) {
    case 'creating':
    case 'running':
    case 'pausing':
      return 'running';
    case 'paused':
    case 'resuming':
      return 'paused';
    case 'stopped':
    case 'failed':
    case 'deleting':
      return 'paused';
    default:
      return undefined;
  }
}

/** The cubebox state to show next to E2B's when E2B's alone would mislead (see e2bStateOf). */
export function cubeboxStateShown(state: SandboxState): SandboxState | undefined {
  return SHOWN_AS_PAUSED.includes(state) ? state : undefined;
}
