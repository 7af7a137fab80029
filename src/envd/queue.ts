// A single-consumer event queue feeding a server stream: keepalives after a period of silence,
// ends on close, and stops (throwing the abort reason for Connect errors, e.g. the deadline)
// when the request is aborted. It counts buffered bytes so producers can apply backpressure.
import { ConnectError } from '@connectrpc/connect';

export const HIGH_WATER = 4 * 1024 * 1024;
export const LOW_WATER = 1024 * 1024;

export class EventQueue<T> {
  private items: T[] = [];
  private sizes: number[] = [];
  private bytes = 0;
  private wake?: () => void;
  private closed = false;

  constructor(private readonly onDrain?: () => void) {}

  get buffered(): number {
    return this.bytes;
  }

  get congested(): boolean {
    return this.bytes > HIGH_WATER;
  }

  push(item: T, size = 0): void {
    if (this.closed) return;
    this.items.push(item);
    this.sizes.push(size);
    this.bytes += size;
    this.notify();
  }

  close(): void {
    this.closed = true;
    this.notify();
  }

  private notify(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  /** Yields the items, and `null` for a keepalive after `keepaliveMs` of silence. */
  async *iterate(signal: AbortSignal, keepaliveMs: number | undefined): AsyncGenerator<T | null> {
    while (true) {
      if (signal.aborted) {
        if (signal.reason instanceof ConnectError) throw signal.reason;
        return;
      }
      if (this.items.length > 0) {
        const item = this.items.shift() as T;
        const size = this.sizes.shift() ?? 0;
        const before = this.bytes;
        this.bytes -= size;
        if (before > LOW_WATER && this.bytes <= LOW_WATER) this.onDrain?.();
        yield item;
        continue;
      }
      if (this.closed) return;
      let timer: NodeJS.Timeout | undefined;
      let timedOut = false;
      await new Promise<void>((resolve) => {
        const done = () => {
          signal.removeEventListener('abort', done);
          if (timer) clearTimeout(timer);
          resolve();
        };
        this.wake = done;
        signal.addEventListener('abort', done);
        if (keepaliveMs && keepaliveMs > 0) {
          timer = setTimeout(() => {
            timedOut = true;
            done();
          }, keepaliveMs);
        }
      });
      this.wake = undefined;
      if (timedOut && this.items.length === 0 && !this.closed && !signal.aborted) yield null;
    }
  }
}

/** Keepalive-Ping-Interval (seconds) as milliseconds, or undefined. */
export function keepaliveMs(headers: Headers): number | undefined {
  const v = Number(headers.get('keepalive-ping-interval'));
  return Number.isFinite(v) && v > 0 ? v * 1000 : undefined;
}
