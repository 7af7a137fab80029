import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { DEFAULT_NETWORK, egressPolicy } from '../network/policy.js';
import { errorMessage } from '../util/errors.js';
import { SANDBOX_ID_RE } from '../util/ids.js';
import { reconcileVolumes } from '../volume/volumes.js';
import { rotateConsoleLog } from './console-log.js';
import type { SandboxCore } from './core.js';
import type { SandboxState } from './states.js';
import { settleFromHost } from './settle.js';
import { teardown } from './teardown.js';
import type { ReconcileReport, StoredSpec } from './types.js';

/** How many sandboxes one reconciler pass handles at once. */
const RECONCILE_CONCURRENCY = 4;

/**
 * The reconciler (rules 5, 8, 9): compares the store with the host and converges. Adopts
 * healthy sandboxes, resolves transitional states past their deadline, finishes interrupted
 * teardowns, and removes orphans carrying this instance's naming. Never touches another
 * instance's resources. One pass at a time; `afterPass` runs at the end of each (the pool
 * refill, the collection of ephemeral templates).
 */
export class Reconciler {
  private running: Promise<ReconcileReport> | undefined;

  constructor(
    private readonly core: SandboxCore,
    private readonly afterPass: () => void,
  ) {}

  /**
   * One pass. `orphans: false` skips the host-wide search for what no row names (the runtime's
   * list, the mount table, namespaces, links, the nft table: at 1000 sandboxes that table alone
   * is 1.6 MB of JSON), which the periodic pass does only every minute or so.
   */
  reconcile(opts: { startup?: boolean; orphans?: boolean } = {}): Promise<ReconcileReport> {
    if (this.running) return this.running;
    this.running = this.once(opts.startup ?? false, opts.orphans ?? true).finally(() => (this.running = undefined));
    return this.running;
  }

  /** Waits for a pass in progress (close). */
  async settled(): Promise<void> {
    await this.running?.catch(() => undefined);
  }

  private async once(startup: boolean, orphans: boolean): Promise<ReconcileReport> {
    const core = this.core;
    const report: ReconcileReport = { adopted: [], skipped: [], tornDown: [], orphansRemoved: [], repaired: [], errors: [] };
    const now = core.now();
    // the chains of the instance's nft table, listed once for every sandbox's check (a short listing)
    let chains: Set<string> | undefined;
    try {
      chains = await core.deps.net?.chains();
    } catch (err) {
      report.errors.push(`network: ${errorMessage(err)}`);
    }
    // volume disks first: the sandboxes' views of them need them mounted
    if (startup) report.errors.push(...(await reconcileVolumes(core.store, core.deps.paths, core.log)));
    // Each sandbox on its own, a few at a time. A sandbox whose lock is held (an operation in
    // flight, or one stuck in a runtime call until its timeout) is skipped, never waited for:
    // the next pass comes back to it, and the others are handled meanwhile.
    await eachLimited(core.store.listSandboxes(), RECONCILE_CONCURRENCY, async (row) => {
      if (core.closed) return;
      const done = await core.locks.tryRun(row.id, () => this.sandbox(row.id, startup, now, report, chains));
      if (!done.ran) report.skipped.push(row.id);
    });
    if (orphans) {
      await this.removeOrphans(report);
      try {
        report.orphansRemoved.push(...((await core.deps.net?.reconcile()) ?? []));
      } catch (err) {
        report.errors.push(`network: ${errorMessage(err)}`);
      }
    }
    for (const r of core.store.listSandboxes()) if (r.state === 'running' || r.state === 'pooled') rotateConsoleLog(core.consoleLogPath(r.id));
    this.afterPass();
    return report;
  }

  /** One sandbox's reconciliation; under its lock. */
  private async sandbox(id: string, startup: boolean, now: number, report: ReconcileReport, chains?: Set<string>): Promise<void> {
    const core = this.core;
    const r = core.store.getSandbox(id);
    if (!r) return;
    try {
      const expired = r.stateDeadline !== null && r.stateDeadline < now;
      const spec = JSON.parse(r.spec) as StoredSpec;
      if (r.state === 'deleting' || r.state === 'failed' || (r.state === 'stopped' && core.deleteStopped) || (r.state === 'creating' && (startup || expired))) {
        if (r.nextAttemptAt && r.nextAttemptAt > now && !startup) return;
        await teardown(core, r.id);
        report.tornDown.push(r.id);
      } else if (r.state === 'pausing' || r.state === 'resuming') {
        if (r.nextAttemptAt && r.nextAttemptAt > now && !startup) return;
        if (startup || expired) await settleFromHost(core, r.id, `interrupted while ${r.state}`);
      } else if ((r.state === 'running' || r.state === 'paused' || r.state === 'pooled') && !(await this.whole(r.id, spec, report, chains))) {
        return; // failed, with the reason
      } else if (r.state === 'paused' && (spec.coldPaused || spec.checkpointed)) {
        // paused without memory, or to disk: no container by design; its disk waits for a resume
        if (startup) report.adopted.push(r.id);
      } else if (r.state === 'running' || r.state === 'paused' || r.state === 'pooled') {
        // between start-ups a live sandbox's populated cgroup is enough: a file read instead of a
        // runtime process per sandbox per pass (1000 sandboxes every 5 s would keep a CPU busy)
        if (!startup && r.state !== 'paused' && core.cgroup(r.id).pids().length > 0) return;
        const st = await core.runtimeOf(r.id).state(core.containerId(r.id));
        const live: SandboxState = r.state === 'pooled' ? 'pooled' : 'running';
        const hostState: SandboxState = st?.status === 'running' ? live : st?.status === 'paused' ? 'paused' : 'stopped';
        if (hostState !== r.state) {
          core.log.warn({ sandbox: r.id, stored: r.state, host: hostState }, 'sandbox state differs from the host; taking the host state');
          core.setState(r.id, hostState, hostState === 'stopped' ? { lastError: 'the sandbox stopped (its main process exited or was killed)' } : {});
        }
        if (startup) report.adopted.push(r.id);
      }
    } catch (err) {
      const attempts = r.attempts + 1;
      core.store.updateSandbox(r.id, {
        attempts,
        lastError: errorMessage(err),
        nextAttemptAt: now + Math.min(2 ** attempts * 1000, 300_000),
      });
      report.errors.push(`${r.id}: ${errorMessage(err)}`);
    }
  }

  /**
   * Checks what a live sandbox needs on the host (its disk mounted, its network slot: namespace,
   * veth, nft chain) and makes again what went; a sandbox must never run without its policy.
   * What cannot be made again fails the sandbox with the reason. Returns whether it is whole.
   */
  private async whole(id: string, spec: StoredSpec, report: ReconcileReport, chains: Set<string> | undefined): Promise<boolean> {
    const core = this.core;
    // a sandbox whose processes are gone is found stopped below (after a reboot, say)
    if (!spec.coldPaused && core.cgroup(id).pids().length === 0) return true;
    const disk = join(core.sandboxDir(id), 'disk');
    if (core.host.mountDevice(disk) === undefined) {
      // paused without memory: its image is mounted again at resume (after a host reboot, say)
      if (spec.coldPaused && existsSync(`${disk}.img`)) return true;
      return this.fail(id, `its disk is not mounted on the host (${disk})`, report);
    }
    const net = core.deps.net;
    if (!net?.lease(id) || !net.problems(id, chains).length) return true;
    const missing = net.problems(id, chains);
    // a sandbox with processes keeps the namespace they live in; a cold-paused one gets a new one
    const pid = spec.coldPaused ? undefined : (await core.runtimeOf(id).state(core.containerId(id)))?.pid;
    if (!spec.coldPaused && !pid) return this.fail(id, `its ${missing.join(', ')} went and its processes are gone`, report);
    try {
      // (a slot made after the chains were listed is whole: then nothing is repaired)
      const repaired = await net.repair(id, egressPolicy(spec.network ?? DEFAULT_NETWORK), pid);
      if (repaired.length) core.log.warn({ sandbox: id, missing, repaired }, 'repaired the network of a sandbox');
      report.repaired?.push(...repaired.map((what) => `${id}: ${what}`));
      return true;
    } catch (err) {
      return this.fail(id, `its ${missing.join(', ')} went and could not be made again: ${errorMessage(err)}`, report);
    }
  }

  private fail(id: string, reason: string, report: ReconcileReport): false {
    this.core.log.error({ sandbox: id, reason }, 'sandbox failed: what it needs on the host is gone');
    this.core.setState(id, 'failed', { lastError: reason });
    report.errors.push(`${id}: ${reason}`);
    return false;
  }

  /**
   * Host resources of this instance that no stored sandbox owns: the ids every kind of the
   * resource ledger finds holding something on the host, and ledger rows left without a
   * sandbox row. Each goes through teardown, like any sandbox.
   */
  private async removeOrphans(report: ReconcileReport): Promise<void> {
    const core = this.core;
    const known = new Set(core.store.listSandboxes().map((r) => r.id));
    const candidates = new Set<string>(core.store.orphanLedgerIds());
    for (const kind of core.ledger) for (const id of await kind.holders(core)) candidates.add(id);
    for (const id of candidates) {
      if (known.has(id) || !SANDBOX_ID_RE.test(id)) continue;
      // a busy id is a sandbox being made right now, not an orphan
      await core.locks.tryRun(id, async () => {
        if (core.store.getSandbox(id)) return;
        try {
          await teardown(core, id);
          report.orphansRemoved.push(id);
          core.log.warn({ sandbox: id }, 'removed orphaned sandbox resources');
        } catch (err) {
          report.errors.push(`orphan ${id}: ${errorMessage(err)}`);
        }
      });
    }
  }
}

/** Runs fn for every item, at most `limit` at once. */
async function eachLimited<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}
