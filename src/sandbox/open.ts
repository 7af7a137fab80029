// The real dependencies of a data directory's one manager, from explicit options (the
// configuration module decides them; nothing here reads the environment): the lock, the
// store, the support tree, sandbox networking, the runtimes, the host operations, the templates.
import { chmodSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import pino from 'pino';
import { openPaths } from '../config.js';
import { detectCgroupMode } from '../runtime/cgroups.js';
import { prepareSupportTree } from '../runtime/support.js';
import { SandboxNetwork } from '../network/network.js';
import { ManagerLock, Store } from '../store/store.js';
import { TemplateStore } from '../template/store.js';
import { CubeboxError, errorMessage } from '../util/errors.js';
import { ociRuntimes, parseRuntimeName, realHostOps, systemClock, type ManagerDeps } from './deps.js';
import type { ManagerOptions, StoredSpec } from './types.js';

/**
 * Checks for root, takes the data directory's lock and builds the real dependencies. Throws a
 * 'unavailable' error when another manager owns the directory; releases what it took on failure.
 */
export async function openManagerDeps(opts: ManagerOptions): Promise<ManagerDeps> {
  if (process.getuid?.() !== 0) throw new CubeboxError('unavailable', 'cubebox must run as root (it creates namespaces, cgroups and mounts)');
  const paths = openPaths(opts.dataDir);
  // Traversable but not listable: the runtime reaches the rootfs as the sandbox's unprivileged root.
  chmodSync(paths.dataDir, 0o711);
  mkdirSync(paths.sandboxesDir, { recursive: true });
  chmodSync(paths.sandboxesDir, 0o711);
  const lock = new ManagerLock(paths.lockFile);
  if (!lock.tryAcquire()) throw new CubeboxError('unavailable', `another cubebox manager owns ${paths.dataDir}`);
  const log = opts.logger ?? pino({ level: 'warn' }, pino.destination(2));
  const store = new Store(paths.db);
  const cgroupMode = detectCgroupMode();
  const runtimeName = parseRuntimeName(opts.runtime);
  let supportDir: string;
  try {
    const inUse = new Set(store.listSandboxes().map((r) => (JSON.parse(r.spec) as StoredSpec).support));
    supportDir = (await prepareSupportTree(join(paths.dataDir, 'support'), inUse)).dir;
  } catch (err) {
    store.close();
    lock.release();
    throw new CubeboxError('unavailable', `cannot prepare the sandbox support tree: ${errorMessage(err)}`);
  }
  let net: SandboxNetwork | undefined;
  const netOpts = opts.network ?? {};
  if (netOpts !== false) {
    try {
      net = new SandboxNetwork(store.netSlots, {
        instanceId: paths.instanceId,
        dataDir: paths.dataDir,
        subnet: netOpts.subnet,
        // pre-made slots pay off in a long-lived manager (serve); a CLI call would make and remove them for nothing
        warmSlots: netOpts.warmSlots ?? (opts.reconcileIntervalMs ? undefined : 0),
        allowPrivate: netOpts.allowPrivate,
        maxFlows: netOpts.maxFlows,
        log,
      });
      await net.start();
    } catch (err) {
      store.close();
      lock.release();
      throw new CubeboxError(
        'unavailable',
        `cannot set up sandbox networking: ${errorMessage(err)} (needs iproute2 and nftables; CUBEBOX_NETWORK=off runs sandboxes with loopback only)`,
      );
    }
  }
  return {
    net,
    paths,
    store,
    runtimes: ociRuntimes(runtimeName, paths.runRoot, cgroupMode, { binaries: opts.runtimeBinaries, callTimeoutMs: opts.runtimeTimeoutMs }),
    host: realHostOps(cgroupMode, opts.pidsBudget),
    templates: new TemplateStore(paths, store),
    clock: systemClock,
    log,
    supportDir,
    lock,
  };
}
