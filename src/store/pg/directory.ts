// The teams and which have a live key, kept in memory for the synchronous checks (quotas, both
// planes' blocked-team check): reloaded in one statement when older than its TTL. A stale copy
// is what the data plane goes on using while the database is away; the control plane awaits a
// fresh one (fresh()) and so answers 503 then.
import type { TeamDirectory, TeamRow } from '../shared.js';
import { describe, type PoolLog } from './pool.js';

export class CachedDirectory implements TeamDirectory {
  private byId = new Map<string, TeamRow>();
  private byName = new Map<string, TeamRow>();
  private live = new Set<string>();
  private loadedAt = 0;
  private loading: Promise<void> | undefined;
  private lastWarn = 0;

  constructor(
    private readonly load: () => Promise<{ teams: TeamRow[]; live: Set<string> }>,
    private readonly ttlMs: number,
    private readonly log?: PoolLog,
  ) {}

  team(ref: string): TeamRow | undefined {
    this.kick();
    return this.byId.get(ref) ?? this.byName.get(ref);
  }

  teams(): TeamRow[] {
    this.kick();
    return [...this.byId.values()];
  }

  hasLiveKey(team: string): boolean {
    this.kick();
    return this.live.has(team);
  }

  async fresh(team?: string): Promise<void> {
    if (!this.stale() && (team === undefined || this.live.has(team))) return;
    await this.reload();
  }

  invalidate(): void {
    this.loadedAt = 0;
  }

  private stale(): boolean {
    return Date.now() - this.loadedAt >= this.ttlMs;
  }

  /** One load at a time; callers arriving meanwhile share it. */
  private reload(): Promise<void> {
    this.loading ??= this.load()
      .then(({ teams, live }) => {
        this.byId = new Map(teams.map((t) => [t.id, t]));
        this.byName = new Map(teams.map((t) => [t.name, t]));
        this.live = live;
        this.loadedAt = Date.now();
      })
      .finally(() => (this.loading = undefined));
    return this.loading;
  }

  /** A synchronous read of a stale copy starts a reload in the background and answers from the copy. */
  private kick(): void {
    if (!this.stale() || this.loading) return;
    this.reload().catch((err: unknown) => {
      if (Date.now() - this.lastWarn < 10_000) return;
      this.lastWarn = Date.now();
      this.log?.warn({ err: describe(err) }, 'cannot reload the teams from the database; going on with the last copy');
    });
  }
}
