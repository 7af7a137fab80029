// A cluster's members in PostgreSQL: each node's last heartbeat (its address, runtimes, capacity,
// cached templates and ready pooled sandboxes) and which node holds each sandbox. Nodes write
// their own rows (cluster/member.ts); API replicas read them to place creates and route
// (cluster/router.ts).
import type pg from 'pg';
import { migrate } from './migrations.js';
import { openPool, rows, statementsOn, transaction, type PoolLog } from './pool.js';

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

/** A volume a node holds (volumes are node-local: a sandbox mounting it is placed on its node). */
export interface NodeVolume {
  id: string;
  team: string | null;
  name: string;
}

/** What a team's sandboxes hold on one node (the quota kinds a sandbox uses: see api/tenancy.ts). */
export interface TeamUsage {
  sandboxes: number;
  vcpus: number;
  memoryMB: number;
  diskMB: number;
  pausedSandboxes: number;
}

/** The advisory lock class of a team's quota admission across nodes (the second key is the team id's hash). */
const TEAM_USAGE_LOCK = 0x637571; // 'cuq'

/** The sum of team_usage rows, as usageOf reads it. */
const USAGE_SUM = `SELECT COALESCE(SUM(sandboxes), 0) AS sandboxes, COALESCE(SUM(vcpus), 0) AS vcpus, COALESCE(SUM(memory_mb), 0) AS memory_mb,
  COALESCE(SUM(disk_mb), 0) AS disk_mb, COALESCE(SUM(paused), 0) AS paused`;

const usageOf = (o: Record<string, unknown> | undefined): TeamUsage => ({
  sandboxes: Number(o?.sandboxes ?? 0),
  vcpus: Number(o?.vcpus ?? 0),
  memoryMB: Number(o?.memory_mb ?? 0),
  diskMB: Number(o?.disk_mb ?? 0),
  pausedSandboxes: Number(o?.paused ?? 0),
});

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
  async heartbeat(node: NodeRecord, sandboxIds: string[], volumes: NodeVolume[] = []): Promise<string[]> {
    let sent = 0;
    try {
      const buried = await this.beat(node, sandboxIds, volumes, (n) => (sent = n));
      heartbeatCounts.written++;
      heartbeatCounts.statements += sent;
      return buried;
    } catch (err) {
      heartbeatCounts.failed++;
      throw err;
    }
  }

  /** The heartbeat's transaction; `counted` gets the statements it sent (its client's, BEGIN and COMMIT included). */
  private beat(node: NodeRecord, sandboxIds: string[], volumes: NodeVolume[], counted: (n: number) => void): Promise<string[]> {
    return transaction(this.pool, async (c) => {
      const first = statementsOn(c) - 1; // BEGIN was sent
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
      // its volumes, as its sandboxes (a row placed after the list is a volume made since)
      const volumeIds = volumes.map((v) => v.id);
      await rows(c, 'DELETE FROM volume_nodes WHERE node_id = $1 AND NOT (volume_id = ANY($2)) AND placed_at < $3', [node.id, volumeIds, node.heartbeatAt]);
      if (volumes.length)
        await rows(
          c,
          `INSERT INTO volume_nodes (volume_id, node_id, team, name, placed_at) SELECT v.id, $1, v.team, v.name, $5
           FROM unnest($2::text[], $3::text[], $4::text[]) AS v (id, team, name)
           ON CONFLICT (volume_id) DO UPDATE SET node_id = $1, team = excluded.team, name = excluded.name
           WHERE (volume_nodes.node_id, volume_nodes.team, volume_nodes.name) IS DISTINCT FROM ($1, excluded.team, excluded.name)`,
          [node.id, volumeIds, volumes.map((v) => v.team), volumes.map((v) => v.name), node.heartbeatAt],
        );
      const held = sandboxIds.filter((id) => !buried.includes(id));
      // rows already right are not written again: a heartbeat writes only what changed (and its node row)
      if (held.length)
        await rows(
          c,
          'INSERT INTO sandbox_nodes (sandbox_id, node_id, placed_at) SELECT unnest($1::text[]), $2, $3 ON CONFLICT (sandbox_id) DO UPDATE SET node_id = $2 WHERE sandbox_nodes.node_id <> $2',
          [held, node.id, node.heartbeatAt],
        );
      counted(statementsOn(c) - first + 1); // and the COMMIT to come
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

  /** Records where a new volume is (at its create, before the node's next heartbeat). */
  async placeVolume(v: NodeVolume, nodeId: string): Promise<void> {
    await rows(
      this.pool,
      `INSERT INTO volume_nodes (volume_id, node_id, team, name, placed_at) VALUES ($1, $2, $3, $4, $5)
       ON CONFLICT (volume_id) DO UPDATE SET node_id = $2, team = $3, name = $4`,
      [v.id, nodeId, v.team, v.name, Date.now()],
    );
  }

  async nodeOfVolume(volumeId: string): Promise<string | undefined> {
    const [r] = await rows<{ node_id: string }>(this.pool, 'SELECT node_id FROM volume_nodes WHERE volume_id = $1', [volumeId]);
    return r?.node_id;
  }

  /** The nodes holding a team's volumes of these names (name -> node id; a name not found is left out). */
  async nodesOfVolumes(team: string, names: string[]): Promise<Map<string, string>> {
    const found = await rows<{ name: string; node_id: string }>(this.pool, 'SELECT name, node_id FROM volume_nodes WHERE team = $1 AND name = ANY($2)', [
      team,
      names,
    ]);
    return new Map(found.map((r) => [r.name, r.node_id]));
  }

  async forgetVolume(volumeId: string): Promise<void> {
    await rows(this.pool, 'DELETE FROM volume_nodes WHERE volume_id = $1', [volumeId]);
  }

  /** The team of a live API key, by the key's hash (for placement only: the node still authenticates the request). */
  async teamOfKey(hash: string): Promise<string | undefined> {
    const [r] = await rows<{ team_id: string }>(this.pool, 'SELECT team_id FROM api_keys WHERE hash = $1 AND revoked_at IS NULL', [hash]);
    return r?.team_id;
  }

  /**
   * A quota admission across nodes, under the team's lock: `decide` gets what the team's
   * sandboxes hold on the other nodes heard from within maxAgeMs and returns what they hold on
   * this node with the operation counted (or throws to refuse it); that is written in the same
   * transaction, so the next admission of the team on any node counts it.
   */
  admitTeam(nodeId: string, team: string, maxAgeMs: number, decide: (others: TeamUsage) => TeamUsage): Promise<void> {
    return transaction(this.pool, async (c) => {
      await rows(c, 'SELECT pg_advisory_xact_lock($1, hashtext($2))', [TEAM_USAGE_LOCK, team]);
      const [o] = await rows(c, `${USAGE_SUM} FROM team_usage WHERE team = $1 AND node_id <> $2 AND updated_at >= $3`, [team, nodeId, Date.now() - maxAgeMs]);
      const mine = decide(usageOf(o));
      await rows(
        c,
        `INSERT INTO team_usage (node_id, team, sandboxes, vcpus, memory_mb, disk_mb, paused, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (team, node_id) DO UPDATE SET sandboxes = $3, vcpus = $4, memory_mb = $5, disk_mb = $6, paused = $7, updated_at = $8`,
        [nodeId, team, mine.sandboxes, mine.vcpus, mine.memoryMB, mine.diskMB, mine.pausedSandboxes, Date.now()],
      );
    });
  }

  /** What a team's sandboxes hold on the nodes other than nodeId heard from within maxAgeMs. */
  async teamUsageElsewhere(nodeId: string, team: string, maxAgeMs: number): Promise<TeamUsage> {
    const [o] = await rows(this.pool, `${USAGE_SUM} FROM team_usage WHERE team = $1 AND node_id <> $2 AND updated_at >= $3`, [
      team,
      nodeId,
      Date.now() - maxAgeMs,
    ]);
    return usageOf(o);
  }

  /** What each team's sandboxes hold on this node now: its rows replaced (teams not named hold nothing here). One transaction. */
  publishUsage(nodeId: string, usage: Map<string, TeamUsage>): Promise<void> {
    const teams = [...usage.keys()];
    const col = (k: keyof TeamUsage) => teams.map((t) => usage.get(t)![k]);
    return transaction(this.pool, async (c) => {
      await rows(c, 'DELETE FROM team_usage WHERE node_id = $1 AND NOT (team = ANY($2))', [nodeId, teams]);
      if (!teams.length) return;
      await rows(
        c,
        `INSERT INTO team_usage (node_id, team, sandboxes, vcpus, memory_mb, disk_mb, paused, updated_at)
         SELECT $1, t.team, t.sandboxes, t.vcpus, t.memory_mb, t.disk_mb, t.paused, $8
         FROM unnest($2::text[], $3::int[], $4::float8[], $5::float8[], $6::float8[], $7::int[]) AS t (team, sandboxes, vcpus, memory_mb, disk_mb, paused)
         ON CONFLICT (team, node_id) DO UPDATE SET sandboxes = excluded.sandboxes, vcpus = excluded.vcpus, memory_mb = excluded.memory_mb,
           disk_mb = excluded.disk_mb, paused = excluded.paused, updated_at = excluded.updated_at`,
        [nodeId, teams, col('sandboxes'), col('vcpus'), col('memoryMB'), col('diskMB'), col('pausedSandboxes'), Date.now()],
      );
    });
  }

  close(): Promise<void> {
    return this.pool.end();
  }
}
