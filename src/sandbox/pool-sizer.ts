/** A template's pool bounds: fixed when min === max, adaptive between them otherwise. */
export interface PoolBounds {
  min: number;
  max: number;
}

export interface PoolSizerOptions {
  /** Demand is counted in windows this long: the pool is sized for the busiest one. */
  burstWindowMs: number;
  /** How long a burst is remembered: after this long without one, the pool is back at min. */
  holdMs: number;
}

export const DEFAULT_SIZER: PoolSizerOptions = { burstWindowMs: 10_000, holdMs: 5 * 60_000 };

/** Most demand timestamps kept per template (a steady stream is counted, not stored without end). */
const MAX_SAMPLES = 4096;

/**
 * The size a template's pool should have now: the most creates that arrived within any
 * burstWindowMs during the last holdMs, between the template's bounds. It grows after a
 * burst (the next one is served from the pool) and shrinks back to min once bursts stop.
 */
export class PoolSizer {
  private readonly demand = new Map<string, number[]>();

  constructor(private readonly opts: PoolSizerOptions = DEFAULT_SIZER) {}

  /** One create of the template (claimed from the pool or not). */
  record(template: string, now: number): void {
    let xs = this.demand.get(template);
    if (!xs) this.demand.set(template, (xs = []));
    xs.push(now);
    if (xs.length > MAX_SAMPLES) xs.splice(0, xs.length - MAX_SAMPLES);
  }

  /** The busiest burstWindowMs of the last holdMs (a sliding window over the timestamps). */
  peak(template: string, now: number): number {
    const xs = this.demand.get(template);
    if (!xs) return 0;
    const from = now - this.opts.holdMs;
    while (xs.length && xs[0]! < from) xs.shift();
    if (!xs.length) {
      this.demand.delete(template);
      return 0;
    }
    let best = 0;
    for (let lo = 0, hi = 0; hi < xs.length; hi++) {
      while (xs[hi]! - xs[lo]! >= this.opts.burstWindowMs) lo++;
      best = Math.max(best, hi - lo + 1);
    }
    return best;
  }

  target(template: string, bounds: PoolBounds, now: number): number {
    if (bounds.max <= bounds.min) return bounds.min;
    return Math.min(bounds.max, Math.max(bounds.min, this.peak(template, now)));
  }
}
