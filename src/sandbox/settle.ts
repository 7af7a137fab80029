import { errorMessage } from '../util/errors.js';
import { settleCheckpoint } from './checkpoint.js';
import type { SandboxCore } from './core.js';
import type { SandboxState } from './states.js';
import { stopContainer } from './teardown.js';
import type { StoredSpec } from './types.js';

/** After a failed or interrupted operation: make the stored state what the host shows. */
export async function settleFromHost(core: SandboxCore, id: string, error?: string): Promise<void> {
  const row = core.store.getSandbox(id);
  if (!row) return;
  const spec = JSON.parse(row.spec) as StoredSpec;
  if (spec.checkpointed) return settleCheckpoint(core, id, error);
  if (spec.coldPaused) {
    // A filesystem-only pause, or the boot of its resume, was cut short. The safe state is
    // paused, with its disk and no process: a half-booted sandbox may lack its /init.
    await stopContainer(core, id);
    core.setState(id, 'paused', error ? { lastError: error } : {});
    return;
  }
  let state: SandboxState = 'stopped';
  try {
    const st = await core.runtimeOf(id).state(core.containerId(id));
    if (st?.status === 'running') state = 'running';
    else if (st?.status === 'paused') state = 'paused';
  } catch (err) {
    state = 'failed';
    error = `${error ?? ''} state: ${errorMessage(err)}`.trim();
  }
  core.setState(id, state, error ? { lastError: error } : {});
}
