// A team's quotas across the nodes of a cluster. Each node alone checks what its own sandboxes
// hold (api/tenancy.ts); across nodes, each publishes what every team's sandboxes hold on it
// (the `team_usage` table, at each heartbeat) and, before a create, claim, resume or pause of a
// team's sandbox, takes the team's lock in the database, adds what the other nodes hold, and
// writes its own figure with the operation counted. Admissions of one team on any two nodes are
// therefore one after the other, and the second sees the first.
//
// What a node writes for a team is what its sandboxes hold plus the operations admitted here
// whose sandbox row does not count yet (`reserved`). Its writes go one at a time (`turn`) and
// are computed when their turn comes, so a heartbeat can never put back a figure older than an
// admission's. Every increase goes through an admission; a decrease (a sandbox deleted) shows at
// the next heartbeat, until which the team counts the sandbox still (never too little).
import type { Logger } from 'pino';
import { NOTHING, quotaExceeded, USAGE_KEYS, type Tenancy, type Usage } from '../api/tenancy.js';
import type { Admission } from '../sandbox/types.js';
import { describe } from '../store/pg/pool.js';
import type { ClusterRegistry } from '../store/pg/nodes.js';

const QUOTA_WORDS: Record<(typeof USAGE_KEYS)[number], string> = {
  sandboxes: 'sandboxes running or paused with memory',
  vcpus: 'total vCPUs',
  memoryMB: 'total memory (MiB)',
  diskMB: 'total disk (MiB)',
  pausedSandboxes: 'paused sandboxes',
};

export class ClusterQuota {
  /** Per team: what operations admitted here add until their sandbox's row counts it. */
  private readonly reserved = new Map<string, Usage>();
  /** This node's writes of its usage, one at a time. */
  private turn: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly registry: ClusterRegistry,
    private readonly tenancy: Tenancy,
    private readonly nodeId: string,
    /** Usage a node has not refreshed for this long is not counted (its node is lost: its sandboxes are gone for clients). */
    private readonly maxAgeMs: number,
    private readonly log?: Logger,
  ) {}

  /**
   * The manager's admitAcross hook: refuses with a 429 what would pass a limit counting every
   * node, else reserves it here until the returned release. The database unreachable: a 503.
   */
  async admit(a: Admission): Promise<() => void> {
    if (!a.team) return () => {};
    const { team, adds, q, name } = this.tenancy.admission({ ...a, team: a.team });
    if (USAGE_KEYS.every((k) => adds[k] === 0)) return () => {};
    this.add(team, adds, 1);
    try {
      await this.inTurn(() =>
        this.registry.admitTeam(this.nodeId, team, this.maxAgeMs, (others) => {
          const here = this.heldHere(team, a.sandboxId); // with this operation's reservation
          for (const k of USAGE_KEYS) {
            if (adds[k] > 0 && others[k] + here[k] > q[k])
              throw quotaExceeded(
                `quota exceeded: ${QUOTA_WORDS[k]} of team '${name}' would be ${others[k] + here[k]} across the cluster's nodes, its limit (${k}) is ${q[k]}`,
              );
          }
          return this.heldHere(team);
        }),
      );
    } catch (err) {
      this.add(team, adds, -1);
      throw err;
    }
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.add(team, adds, -1);
    };
  }

  /** What the team's sandboxes hold on the other nodes, as their last figures say. */
  elsewhere(team: string): Promise<Usage> {
    return this.registry.teamUsageElsewhere(this.nodeId, team, this.maxAgeMs);
  }

  /** What every team holds on this node now (with reservations), written as its rows: at each heartbeat. */
  async publish(): Promise<void> {
    await this.inTurn(() => {
      const usage = this.tenancy.usageByTeam();
      for (const [team, r] of this.reserved) {
        const u = usage.get(team) ?? { ...NOTHING };
        for (const k of USAGE_KEYS) u[k] += r[k];
        usage.set(team, u);
      }
      return this.registry.publishUsage(this.nodeId, usage);
    }).catch((err: unknown) => this.log?.debug({ err: describe(err) }, 'publishing team usage failed; the next heartbeat tries again'));
  }

  /** The team's sandboxes here (leaving out `except`, the one being admitted, counted by its reservation instead) plus reservations. */
  private heldHere(team: string, except?: string): Usage {
    const u = { ...NOTHING, ...(this.tenancy.usageByTeam(except).get(team) ?? {}) };
    const r = this.reserved.get(team);
    if (r) for (const k of USAGE_KEYS) u[k] += r[k];
    return u;
  }

  private add(team: string, adds: Usage, sign: 1 | -1): void {
    const r = this.reserved.get(team) ?? { ...NOTHING };
    for (const k of USAGE_KEYS) r[k] += sign * adds[k];
    if (USAGE_KEYS.every((k) => Math.abs(r[k]) < 1e-9)) this.reserved.delete(team);
    else this.reserved.set(team, r);
  }

  private inTurn<T>(work: () => Promise<T>): Promise<T> {
    const mine = this.turn.then(work, work);
    this.turn = mine.catch(() => {});
    return mine;
  }
}
