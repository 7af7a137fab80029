import { busy } from '../util/errors.js';

/** Who asks to provision a sandbox: a user's create (first in line) or a pool refill. */
export type GatePriority = 'request' | 'refill';

export interface CreateGateOptions {
  /** Sandboxes provisioned at once. */
  concurrency: number;
  /** Requests that may wait behind other requests; one more is refused (429) at once. */
  maxQueue: number;
  /** A request whose estimated wait is longer is refused (429) at once rather than left to time out. */
  maxWaitMs: number;
  /** While this holds (teardowns run or wait), refills get no turn: they go on at wake(). */
  refillsYield?: () => boolean;
  now?: () => number;
}

interface Waiter {
  grant: () => void;
}

/**
 * How many sandboxes are provisioned at once, and in which order the rest wait.
 *
 * Provisioning is CPU-bound (envd's start dominates it), so starting every create of a burst
 * at once makes each as slow as the whole burst; a bound lets the first ones finish early
 * and keeps the host responsive. Requests go before pool refills, and so do deletes: while
 * `refillsYield` says teardowns are under way, a refill waits. Past the queue's bound,
 * or when the wait would be longer than maxWaitMs, a request is refused at once with a
 * Retry-After estimated from recent provisioning times: a client backs off instead of
 * piling up timeouts.
 */
export class CreateGate {
  private running = 0;
  /** Turns held by requests (the rest by refills, which a request never waits long for). */
  private runningRequests = 0;
  private readonly requests: Waiter[] = [];
  private readonly refills: Waiter[] = [];
  /** Moving average of one provisioning's duration (ms); a first guess until one is measured. */
  private avgMs = 400;
  private readonly now: () => number;

  constructor(readonly opts: CreateGateOptions) {
    if (!(opts.concurrency >= 1)) throw new Error(`create concurrency must be >= 1, got ${opts.concurrency}`);
    this.now = opts.now ?? (() => Date.now());
  }

  /** Provisionings running now. */
  get inFlight(): number {
    return this.running;
  }

  /** Requests waiting for a turn. */
  get queued(): number {
    return this.requests.length;
  }

  /** Refills waiting for a turn. */
  get refillsQueued(): number {
    return this.refills.length;
  }

  /** Seconds until a request joining the queue now would likely get its turn. */
  retryAfterSec(): number {
    const ahead = this.requests.length + this.running;
    return Math.max(1, Math.ceil((ahead * this.avgMs) / this.opts.concurrency / 1000));
  }

  /** Estimated wait (ms) of a request that joins the queue now. */
  private expectedWaitMs(): number {
    return ((this.requests.length + 1) * this.avgMs) / this.opts.concurrency;
  }

  /**
   * Runs fn in a turn. A request is refused with a 'busy' error (429, Retry-After) when the
   * queue is full or its wait would pass maxWaitMs; a refill always waits.
   */
  async run<T>(priority: GatePriority, fn: () => Promise<T>): Promise<T> {
    // only other requests make a request wait long: refills give way to it at their next turn
    if (priority === 'request' && this.runningRequests + this.requests.length >= this.opts.concurrency) {
      if (this.requests.length >= this.opts.maxQueue || this.expectedWaitMs() > this.opts.maxWaitMs)
        throw busy(
          `too many sandboxes are being created: ${this.runningRequests} in progress and ${this.requests.length} waiting; try again later`,
          this.retryAfterSec(),
        );
    }
    await this.acquire(priority);
    if (priority === 'request') this.runningRequests++;
    const started = this.now();
    try {
      return await fn();
    } finally {
      this.avgMs = 0.8 * this.avgMs + 0.2 * Math.max(1, this.now() - started);
      if (priority === 'request') this.runningRequests--;
      this.release();
    }
  }

  /** Whether a waiting refill may take a free turn now. */
  private refillMayGo(): boolean {
    return this.requests.length === 0 && !this.opts.refillsYield?.();
  }

  /** Gives free turns to waiting refills (called when what they yield to is over). */
  wake(): void {
    while (this.running < this.opts.concurrency && this.refills.length && this.refillMayGo()) {
      this.running++;
      this.refills.shift()!.grant();
    }
  }

  private acquire(priority: GatePriority): Promise<void> {
    // a refill takes a free turn only when no request waits for it and no teardown is under way
    if (this.running < this.opts.concurrency && (priority === 'request' || this.refillMayGo())) {
      this.running++;
      return Promise.resolve();
    }
    return new Promise((resolve) => (priority === 'request' ? this.requests : this.refills).push({ grant: resolve }));
  }

  private release(): void {
    const next = this.requests.shift() ?? (this.refillMayGo() ? this.refills.shift() : undefined);
    if (next) next.grant();
    else this.running--;
  }
}
