/**
 * Per-key serialization: every operation on one sandbox (API call, reaper, reconciler)
 * runs under that sandbox's lock, so a state read and the action it decides happen
 * without anything slipping in between.
 */
export class KeyedMutex {
  private readonly tails = new Map<string, Promise<void>>();

  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.tails.get(key) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((r) => (release = r));
    const tail = previous.then(() => mine);
    this.tails.set(key, tail);
    await previous;
    try {
      return await fn();
    } finally {
      release();
      if (this.tails.get(key) === tail) this.tails.delete(key);
    }
  }

  /**
   * Runs fn under the key's lock only if nobody holds or waits for it; otherwise returns
   * { ran: false } at once (the reconciler skips a busy sandbox and comes back later).
   */
  async tryRun<T>(key: string, fn: () => Promise<T>): Promise<{ ran: true; value: T } | { ran: false }> {
    if (this.tails.has(key)) return { ran: false };
    return { ran: true, value: await this.run(key, fn) };
  }

  /** Whether an operation holds (or waits for) the key's lock right now. */
  isLocked(key: string): boolean {
    return this.tails.has(key);
  }
}
