// What an instance keeps under /run/cubebox/<instance>: one state root per OCI runtime, holding
// the state of its running containers.
import { rmdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { SandboxRuntime } from './oci-runtime.js';

/**
 * Removes what the instance made there once nothing in it is needed: the state root of each
 * runtime that has no container left, then the instance's directory and /run/cubebox when
 * empty. A runtime with containers (sandboxes that run on across a stop, for the next start
 * to adopt) keeps its state root, and with it the instance's directory.
 */
export async function releaseRunRoot(runRoot: string, runtimes: SandboxRuntime[]): Promise<void> {
  for (const rt of runtimes) {
    if ((await rt.list()).length === 0) rmSync(join(runRoot, rt.name), { recursive: true, force: true });
  }
  for (const dir of [runRoot, dirname(runRoot)]) {
    try {
      rmdirSync(dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') return; // not empty: what remains is in use
    }
  }
}
