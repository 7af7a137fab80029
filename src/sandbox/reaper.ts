import { errorMessage } from '../util/errors.js';
import type { SandboxCore } from './core.js';
import { pauseLocked } from './lifecycle.js';
import { teardown } from './teardown.js';
import type { StoredSpec } from './types.js';

/**
 * The TTL reaper, driven by the node itself (rule 9): running sandboxes past endAt are killed
 * (the delete path, rule 5), or paused when their lifecycle says so. Runs under each
 * sandbox's lock like every other operation (rule 6); a busy sandbox is left for the next round.
 */
export async function reap(core: SandboxCore, now = core.now()): Promise<string[]> {
  const due = core.store.listSandboxes().filter((r) => r.state === 'running' && r.endAt !== null && r.endAt <= now);
  const acted: string[] = [];
  for (const r of due) {
    await core.locks.tryRun(r.id, async () => {
      const row = core.store.getSandbox(r.id);
      if (!row || row.state !== 'running' || row.endAt === null || row.endAt > core.now()) return;
      const spec = JSON.parse(row.spec) as StoredSpec;
      try {
        if (spec.lifecycle.onTimeout === 'pause') await pauseLocked(core, r.id, spec.lifecycle.keepMemory);
        else await teardown(core, r.id);
        acted.push(r.id);
        core.log.info({ sandbox: r.id, action: spec.lifecycle.onTimeout }, 'sandbox reached its end of life');
      } catch (err) {
        core.log.error({ sandbox: r.id, err: errorMessage(err) }, 'the TTL reaper could not act');
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
