// A node's membership of a cluster: it says who it is, where replicas reach it and what it can
// take (runtimes, CPUs, memory, free slots, sandboxes, templates, ready pooled sandboxes) at
// start and every HEARTBEAT_MS after, and which sandboxes and volumes it holds. A heartbeat that fails
// (the database away) is logged and the next one tries again: the node's sandboxes keep running.
import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import type { Logger } from 'pino';
import { memAvailableMB, slotsOf } from '../api/host-status.js';
import { runtimeNames } from '../runtime/registry.js';
import type { SandboxManager } from '../sandbox/manager.js';
import { describe } from '../store/pg/pool.js';
import type { ClusterRegistry, NodeRecord, NodeVolume } from '../store/pg/nodes.js';

export const HEARTBEAT_MS = 2000;

/** What the node says of itself now. */
export function nodeRecord(
  manager: SandboxManager,
  address: string,
  startedAt: number,
  binaries: Record<string, string>,
): { node: NodeRecord; sandboxIds: string[]; volumes: NodeVolume[] } {
  const at = Date.now();
  const sandboxes = manager.list();
  const slots = slotsOf(manager);
  const gate = manager.gate;
  // what the create gate still lets in now, bounded by the addresses left
  const gateRoom = Math.max(0, gate.opts.concurrency + gate.opts.maxQueue - gate.inFlight - gate.queued);
  const templates = new Set<string>();
  for (const t of manager.templates.list()) {
    templates.add(t.id);
    templates.add(t.name);
    for (const a of t.config.aliases ?? []) templates.add(a);
  }
  const runtimes = runtimeNames().filter((n) => n === manager.runtime.name || existsSync(binaries[n] ?? `/usr/bin/${n}`));
  return {
    node: {
      id: manager.paths.instanceId,
      address,
      runtimes,
      cpus: availableParallelism(),
      memoryMB: memAvailableMB(),
      freeSlots: slots ? Math.min(slots.free, gateRoom) : gateRoom,
      sandboxes: sandboxes.length,
      templates: [...templates],
      pooled: manager.poolStatus().flatMap((p) => (p.ready > 0 ? [p.template] : [])),
      startedAt,
      heartbeatAt: at,
    },
    sandboxIds: sandboxes.map((s) => s.id),
    volumes: manager.store.volumes
      .list()
      .filter((v) => v.state !== 'deleting')
      .map((v) => ({ id: v.id, team: v.team, name: v.name })),
  };
}

export interface Membership {
  /** Stops the heartbeats and takes the node out of placement. */
  leave(): Promise<void>;
}

/** Registers the node (the first heartbeat must succeed: a node the cluster cannot see does not start) and heartbeats. */
export async function join(
  manager: SandboxManager,
  registry: ClusterRegistry,
  opts: { address: string; binaries: Record<string, string>; log: Logger; publish?: () => Promise<void> | undefined },
): Promise<Membership> {
  const startedAt = Date.now();
  const beat = async () => {
    const { node, sandboxIds, volumes } = nodeRecord(manager, opts.address, startedAt, opts.binaries);
    const buried = await registry.heartbeat(node, sandboxIds, volumes);
    await opts.publish?.(); // what each team's sandboxes hold here (cluster/team-usage.ts)
    // deleted through a replica while this node was lost: deleted here now, as any delete
    for (const id of buried) {
      opts.log.info({ sandbox: id }, 'deleting a sandbox deleted while this node was not heard from');
      await manager
        .delete(id)
        .catch((err: unknown) => opts.log.warn({ sandbox: id, err: describe(err) }, 'deleting it failed; tried again at the next heartbeat'));
    }
  };
  await beat();
  let lastWarn = 0;
  let running: Promise<void> | undefined;
  const timer = setInterval(() => {
    if (running) return; // one at a time: a slow database is not piled onto
    running = beat()
      .catch((err: unknown) => {
        if (Date.now() - lastWarn < 10_000) return;
        lastWarn = Date.now();
        opts.log.warn({ err: describe(err) }, 'heartbeat failed; the node keeps running and tries again');
      })
      .finally(() => (running = undefined));
  }, HEARTBEAT_MS);
  timer.unref();
  opts.log.info({ node: manager.paths.instanceId, address: opts.address }, 'joined the cluster');
  return {
    async leave() {
      clearInterval(timer);
      await running;
      await registry.leave(manager.paths.instanceId).catch(() => {});
    },
  };
}
