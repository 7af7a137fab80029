/**
 * Runs work in batches without waiting for a timer: the first item starts a batch at once,
 * and items that arrive while a batch runs go together into the next one. So one caller pays
 * nothing extra, and N concurrent callers share about two runs instead of N (one `ip` or `nft`
 * process for many network slots). A batch that fails is run again item by item, so that one
 * bad item fails only its own caller.
 */
export class Coalescer<T> {
  private pending: Array<{ item: T; done: (err?: unknown) => void }> = [];
  private running = false;

  constructor(
    private readonly runBatch: (items: T[]) => Promise<void>,
    private readonly maxBatch = 64,
  ) {}

  /** Resolves when the item's batch (or its own run after a failed batch) succeeded. */
  run(item: T): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.pending.push({ item, done: (err) => (err === undefined ? resolve() : reject(err as Error)) });
      if (!this.running) void this.drain();
    });
  }

  private async drain(): Promise<void> {
    this.running = true;
    try {
      while (this.pending.length) {
        const batch = this.pending.splice(0, this.maxBatch);
        try {
          await this.runBatch(batch.map((b) => b.item));
          for (const b of batch) b.done();
        } catch (err) {
          if (batch.length === 1) batch[0]!.done(err ?? new Error('batch failed'));
          else
            for (const b of batch)
              await this.runBatch([b.item]).then(
                () => b.done(),
                (e: unknown) => b.done(e ?? new Error('batch failed')),
              );
        }
      }
    } finally {
      this.running = false;
    }
  }
}
