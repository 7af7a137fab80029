/**
 * How many teardowns run at once, and in which order the rest wait: first come, first served.
 *
 * A teardown is a handful of processes (the runtime's force delete, `ip`, `nft`, unmounts) and
 * kernel work (a network namespace and a loop device going away). Fifty of them started at
 * once each take as long as the whole burst and starve everything else on the host; a bound
 * lets the first ones finish early, and lets concurrent ones share batched steps. A delete is
 * never refused: it waits for its turn. While any teardown runs or waits, pool refills hold
 * back (the create gate asks `busy`), and they go on once the gate is idle (`onIdle`).
 */
export class DeleteGate {
  private running = 0;
  private readonly waiting: Array<() => void> = [];
  private readonly idleListeners: Array<() => void> = [];

  constructor(readonly concurrency: number) {
    if (!(concurrency >= 1)) throw new Error(`delete concurrency must be >= 1, got ${concurrency}`);
  }

  /** Teardowns running now. */
  get inFlight(): number {
    return this.running;
  }

  /** Teardowns waiting for a turn. */
  get queued(): number {
    return this.waiting.length;
  }

  /** Whether any teardown runs or waits. */
  get busy(): boolean {
    return this.running + this.waiting.length > 0;
  }

  /** Calls fn each time the last teardown ends and none waits. */
  onIdle(fn: () => void): void {
    this.idleListeners.push(fn);
  }

  /** Runs fn in a turn, after every teardown that asked before it got one. */
  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.running < this.concurrency && this.waiting.length === 0) this.running++;
    else await new Promise<void>((grant) => this.waiting.push(grant));
    try {
      return await fn();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else if (--this.running === 0) for (const l of this.idleListeners) l();
    }
  }
}
