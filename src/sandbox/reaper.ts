import type { SandboxRow } from '../store/store.js';
import { CubeboxError, errorMessage } from '../util/errors.js';
import type { SandboxCore } from './core.js';
import { pauseLocked } from './lifecycle.js';
import { teardown } from './teardown.js';
import type { StoredSpec } from './types.js';

/** How long the reaper waits before it tries again a timeout pause the team's quota refused. */
export const PAUSE_RETRY_MS = 30_000;

/**
 * The TTL reaper, driven by the node itself (rule 9): running sandboxes past endAt are killed
 * (the delete path, rule 5), or paused when their lifecycle says so; paused sandboxes past
 * their paused lifetime are deleted. Runs under each sandbox's lock like every other
 * operation (rule 6); a busy sandbox is left for the next round.
 */
export async function reap(core: SandboxCore, now = core.now()): Promise<string[]> {
  const rows = core.store.listSandboxes();
  const due = rows.filter((r) => r.state === 'running' && r.endAt !== null && r.endAt <= now && !(r.nextAttemptAt !== null && r.nextAttemptAt > now));
  const acted: string[] = [];
  for (const r of due) {
    await core.locks.tryRun(r.id, async () => {
      const row = core.store.getSandbox(r.id);
      if (!row || row.state !== 'running' || row.endAt === null || row.endAt > core.now()) return;
      const spec = JSON.parse(row.spec) as StoredSpec;
      try {
        if (spec.lifecycle.onTimeout === 'pause') {
          await pauseLocked(core, r.id, spec.lifecycle.keepMemory);
          if (row.nextAttemptAt !== null) core.store.updateSandbox(r.id, { lastError: null, nextAttemptAt: null });
        } else await teardown(core, r.id);
        acted.push(r.id);
        core.log.info({ sandbox: r.id, action: spec.lifecycle.onTimeout }, 'sandbox reached its end of life');
      } catch (err) {
        if (err instanceof CubeboxError && err.kind === 'unavailable' && core.store.getSandbox(r.id)?.state === 'running') {
          // refused before anything changed (the team holds its limit of paused sandboxes): it
          // keeps running, counted as running, and the pause is tried again later
          core.store.updateSandbox(r.id, { lastError: `timeout pause: ${errorMessage(err)}`, nextAttemptAt: core.now() + PAUSE_RETRY_MS });
          core.log.warn({ sandbox: r.id, err: errorMessage(err) }, 'the timeout pause was refused; trying again later');
          return;
        }
        core.log.error({ sandbox: r.id, err: errorMessage(err) }, 'the TTL reaper could not act');
      }
    });
  }
  acted.push(...(await reapPaused(core, rows, now)));
  return acted;
}

/**
 * Paused sandboxes past their paused lifetime go through the delete path. A paused sandbox
 * without a pause time (paused before they were recorded, or settled to paused by an
 * interrupted operation) gets one now.
 */
async function reapPaused(core: SandboxCore, rows: SandboxRow[], now: number): Promise<string[]> {
  const acted: string[] = [];
  for (const r of rows) {
    if (r.state !== 'paused') continue;
    const pausedAt = (JSON.parse(r.spec) as StoredSpec).pausedAt;
    if (pausedAt !== undefined && pausedAt + core.pausedLifetimeMs > now) continue;
    await core.locks.tryRun(r.id, async () => {
      const row = core.store.getSandbox(r.id);
      if (!row || row.state !== 'paused') return;
      const at = (JSON.parse(row.spec) as StoredSpec).pausedAt;
      if (at === undefined) return core.updateSpec(r.id, { pausedAt: core.now() });
      if (at + core.pausedLifetimeMs > core.now()) return;
      try {
        await teardown(core, r.id);
        acted.push(r.id);
        core.log.info({ sandbox: r.id, pausedAt: new Date(at).toISOString() }, 'paused sandbox reached the end of its paused lifetime');
      } catch (err) {
        core.log.error({ sandbox: r.id, err: errorMessage(err) }, 'the reaper could not delete an expired paused sandbox');
      }
    });
  }
  return acted;
}

/** Runs the reaper every intervalMs, one round at a time; returns the stop function. */
export function startReaper(core: SandboxCore, intervalMs: number): () => void {
  let running = false;
  const timer = setInterval(() => {
    if (running || core.closed) return;
    running = true;
    void reap(core)
      .catch((e) => core.log.error({ err: e }, 'reaper failed'))
      .finally(() => (running = false));
  }, intervalMs);
  timer.unref();
  return () => clearInterval(timer);
}
