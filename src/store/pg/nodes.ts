// A cluster's members in PostgreSQL: each node's last heartbeat (its address, runtimes, capacity,
// cached templates and ready pooled sandboxes) and which node holds each sandbox. Nodes write
// their own rows (cluster/member.ts); API replicas read them to place creates and route
// (cluster/router.ts).
import type pg from 'pg';
import { migrate } from './migrations.js';
import { dbStatements, openPool, rows, transaction, type PoolLog } from './pool.js';

/** What a node says of itself at each heartbeat. */
export interface NodeRecord {
  /** The node's instance id: the clientID of every sandbox it holds. */
  id: string;
  /** Where API replicas reach its listener (http://host:port). */
  address: string;
  runtimes: string[];
  cpus: number;
  memoryMB: number;
  /** Sandboxes it may still start (network slots and create gate). */
  freeSlots: number;
  sandboxes: number;
  /** Names and ids of the templates it has. */
  templates: string[];
  /** Templates of which it has a ready pooled sandbox. */
  pooled: string[];
  startedAt: number;
  heartbeatAt: number;
}

const toNode = (r: Record<string, unknown>): NodeRecord => ({
  id: r.id as string,
  address: r.address as string,
  runtimes: r.runtimes as string[],
  cpus: Number(r.cpus),
  memoryMB: Number(r.memory_mb),
  freeSlots: Number(r.free_slots),
  sandboxes: Number(r.sandboxes),
  templates: r.templates as string[],
  pooled: r.pooled as string[],
  startedAt: Number(r.started_at),
  heartbeatAt: Number(r.heartbeat_at),
});

/** This process's heartbeats (a node's), for its metrics; `statements`: those the written ones sent. */
export const heartbeatCounts = { written: 0, failed: 0, statements: 0 };

export class ClusterRegistry {
  private constructor(private readonly pool: pg.Pool) {}

  /** Opens its own small pool on the database (migrated, as the shared store migrates it). */
  static async open(url: string, log?: PoolLog): Promise<ClusterRegistry> {
    const pool = openPool(url, log, 'cluster');
    try {
      await migrate(pool);
    } catch (err) {
      await pool.end().catch(() => {});
      throw err;
    }
    return new ClusterRegistry(pool);
  }

  /**
   * A node's heartbeat (node.heartbeatAt: when sandboxIds was listed): its row, and the sandbox mapping brought in line with what it holds
   * (its sandboxes recorded, rows of sandboxes it no longer holds removed), in one transaction. Resolves to the sandboxes it holds
   * that were deleted while it was lost: the node deletes them (their tombstones go once it no longer lists them).
   */
  async heartbeat(node: NodeRecord, sandboxIds: string[]): Promise<string[]> {
    const sent = dbStatements.get('cluster') ?? 0; // a node's cluster pool sends nothing but its heartbeats, one at a time
    try {
      const buried = await this.beat(node, sandboxIds);
      heartbeatCounts.written++;
      heartbeatCounts.statements += (dbStatements.get('cluster') ?? 0) - sent;
      return buried;
    } catch (err) {
      heartbeatCounts.failed++;
      throw err;
    }
  }

  private beat(node: NodeRecord, sandboxIds: string[]): Promise<string[]> {
    return transaction(this.pool, async (c) => {
      await rows(
        c,
        `INSERT INTO nodes (id, address, runtimes, cpus, memory_mb, free_slots, sandboxes, templates, pooled, started_at, heartbeat_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (id) DO UPDATE SET address = $2, runtimes = $3, cpus = $4, memory_mb = $5, free_slots = $6, sandboxes = $7,
           templates = $8, pooled = $9, started_at = $10, heartbeat_at = $11`,
        [
          node.id,
          node.address,
          node.runtimes,
          node.cpus,
          node.memoryMB,
          node.freeSlots,
          node.sandboxes,
          node.templates,
          node.pooled,
          node.startedAt,
          node.heartbeatAt,
        ],
      );
      // a row placed after the node listed its sandboxes is a create the list did not see yet: kept
      await rows(c, 'DELETE FROM sandbox_nodes WHERE node_id = $1 AND NOT (sandbox_id = ANY($2)) AND placed_at < $3', [node.id, sandboxIds, node.heartbeatAt]);
      await rows(c, 'DELETE FROM sandbox_tombstones WHERE node_id = $1 AND NOT (sandbox_id = ANY($2))', [node.id, sandboxIds]);
      const buried = (
        await rows<{ sandbox_id: string }>(c, 'SELECT sandbox_id FROM sandbox_tombstones WHERE node_id = $1 AND sandbox_id = ANY($2)', [node.id, sandboxIds])
      ).map((r) => r.sandbox_id);
      const held = sandboxIds.filter((id) => !buried.includes(id));
      // rows already right are not written again: a heartbeat writes only what changed (and its node row)
      if (held.length)
        await rows(
          c,
          'INSERT INTO sandbox_nodes (sandbox_id, node_id, placed_at) SELECT unnest($1::text[]), $2, $3 ON CONFLICT (sandbox_id) DO UPDATE SET node_id = $2 WHERE sandbox_nodes.node_id <> $2',
          [held, node.id, node.heartbeatAt],
        );
      return buried;
    });
  }

  /**
   * A sandbox deleted while its node is lost: no longer found through any replica, and deleted by
   * its node when that is heard from again (see heartbeat).
   */
  async bury(sandboxId: string, nodeId: string): Promise<void> {
    await transaction(this.pool, async (c) => {
      await rows(c, 'DELETE FROM sandbox_nodes WHERE sandbox_id = $1', [sandboxId]);
      await rows(c, 'INSERT INTO sandbox_tombstones (sandbox_id, node_id, deleted_at) VALUES ($1, $2, $3) ON CONFLICT (sandbox_id) DO NOTHING', [
        sandboxId,
        nodeId,
        Date.now(),
      ]);
    });
  }

  /** A node that stops cleanly leaves the placement at once (its sandboxes stay mapped to it). */
  async leave(nodeId: string): Promise<void> {
    await rows(this.pool, 'DELETE FROM nodes WHERE id = $1', [nodeId]);
  }

  /** Nodes whose last heartbeat is at most maxAgeMs old. */
  async live(maxAgeMs: number): Promise<NodeRecord[]> {
    return (await rows(this.pool, 'SELECT * FROM nodes WHERE heartbeat_at >= $1 ORDER BY id', [Date.now() - maxAgeMs])).map(toNode);
  }

  async node(id: string): Promise<NodeRecord | undefined> {
    const [r] = await rows(this.pool, 'SELECT * FROM nodes WHERE id = $1', [id]);
    return r && toNode(r);
  }

  /** The node holding a sandbox, as recorded. */
  async nodeOf(sandboxId: string): Promise<string | undefined> {
    const [r] = await rows<{ node_id: string }>(this.pool, 'SELECT node_id FROM sandbox_nodes WHERE sandbox_id = $1', [sandboxId]);
    return r?.node_id;
  }

  /** Records where a sandbox is (at its create, before the node's next heartbeat). */
  async place(sandboxId: string, nodeId: string): Promise<void> {
    await rows(
      this.pool,
      'INSERT INTO sandbox_nodes (sandbox_id, node_id, placed_at) VALUES ($1, $2, $3) ON CONFLICT (sandbox_id) DO UPDATE SET node_id = $2',
      [sandboxId, nodeId, Date.now()],
    );
  }

  async forget(sandboxId: string): Promise<void> {
    await rows(this.pool, 'DELETE FROM sandbox_nodes WHERE sandbox_id = $1', [sandboxId]);
  }

  close(): Promise<void> {
    return this.pool.end();
  }
}
