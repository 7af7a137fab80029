import { randomBytes } from 'node:crypto';
import type { Template } from '../template/store.js';
import { errorMessage } from '../util/errors.js';
import { randomId } from '../util/ids.js';
import type { SandboxCore } from './core.js';
import { egressPolicy, isOpenPolicy } from '../network/policy.js';
import { applyPolicy } from './networking.js';
import { personalize, provision, recordNew, rollbackOnFailure } from './provision.js';
import { allows } from './states.js';
import { deleteSandbox, teardown } from './teardown.js';
import { normalizeLifecycle, type Admission, type CreateRequest, type SandboxInfo, type StoredSpec } from './types.js';
import type { CreateGate } from './create-gate.js';
import { PoolSizer, type PoolBounds } from './pool-sizer.js';

/**
 * The warm pool: sandboxes provisioned ahead of requests up to envd answering (state pooled),
 * per template. A create claims one and gives it its identity (/init), which is all that is
 * left of a create.
 *
 * A template's pool is fixed or adaptive: between its bounds it is sized for the busiest burst
 * of creates of the last minutes (PoolSizer), so the next burst is served from it, and it
 * shrinks back once bursts stop. Refills run in parallel up to a bound, through the create
 * gate behind waiting requests.
 */
export class WarmPool {
  private bounds: Record<string, PoolBounds> = {};
  private configured = false;
  /** Templates being deleted: the pool does not refill them. */
  private readonly retiring = new Set<string>();
  /** Pooled sandboxes a create is claiming: no other create or shrink picks them. */
  private readonly claiming = new Set<string>();
  /** Refills and shrinks in progress, by template id (for settled() and the deficit). */
  private readonly preparing = new Map<string, number>();
  private readonly work = new Set<Promise<void>>();
  /** A template whose refill failed is not retried before this time (ms). */
  private readonly failedUntil = new Map<string, number>();
  readonly sizer = new PoolSizer();
  private fillScheduled = false;

  constructor(
    private readonly core: SandboxCore,
    private readonly gate: CreateGate,
    /** Refills running at once, all templates together. */
    private readonly refillConcurrency: number,
  ) {}

  /** The pool's size now for a template (0: not pooled). */
  target(templateName: string): number {
    const b = this.bounds[templateName];
    return b ? this.sizer.target(templateName, b, this.core.now()) : 0;
  }

  /** Whether creates of this template are served from a pool at all. */
  pooled(templateName: string): boolean {
    return (this.bounds[templateName]?.max ?? 0) > 0;
  }

  /** The configured bounds by template name. */
  configuredBounds(): Record<string, PoolBounds> {
    return { ...this.bounds };
  }

  /** Counts a create of the template toward its pool's size. */
  recordDemand(templateName: string): void {
    if (this.bounds[templateName]) this.sizer.record(templateName, this.core.now());
  }

  /** Waits for refills and shrinks in progress (close, template removal). */
  async settled(): Promise<void> {
    while (this.work.size) await Promise.allSettled([...this.work]);
  }

  /** Sets the pool sizes (template name -> fixed size, or adaptive bounds) and starts filling. */
  set(sizes: Record<string, number | PoolBounds>): void {
    this.bounds = Object.fromEntries(Object.entries(sizes).map(([name, s]) => [name, typeof s === 'number' ? { min: s, max: s } : { ...s }]));
    this.configured = true;
    this.failedUntil.clear();
    // templates no longer pooled give their pooled sandboxes back
    const pooledIds = new Set(Object.keys(this.bounds).map((n) => this.core.deps.templates.find(n)?.id));
    for (const r of this.core.store.listSandboxes())
      if (r.state === 'pooled' && !pooledIds.has(r.templateId))
        this.track(
          undefined,
          deleteSandbox(this.core, r.id).catch(() => undefined),
        );
    this.fill();
  }

  /**
   * Takes a prepared sandbox of the template (everything up to envd answering is done)
   * and gives it this request's identity: metadata, env vars, token, lifecycle, TTL.
   */
  async claim(templateId: string, req: CreateRequest): Promise<SandboxInfo | undefined> {
    for (;;) {
      // the oldest pooled sandbox nobody else is claiming, reserved before any await: concurrent
      // creates each take a different one instead of queueing on the same sandbox's lock
      const c = this.pooledRows(templateId)[0];
      if (!c) return undefined;
      this.claiming.add(c.id);
      try {
        const info = await this.claimOne(c.id, req);
        if (info) return info;
      } finally {
        this.claiming.delete(c.id);
        if (!this.claiming.size) this.fill();
      }
    }
  }

  private claimOne(id: string, req: CreateRequest): Promise<SandboxInfo | undefined> {
    const core = this.core;
    return core.locks.run(id, async () => {
      const row = core.store.getSandbox(id);
      if (!row || !allows('claim', row.state)) return undefined;
      const spec: StoredSpec = {
        ...(JSON.parse(row.spec) as StoredSpec),
        metadata: req.metadata ?? {},
        envVars: req.envVars ?? {},
        accessToken: req.secure === false ? null : randomBytes(24).toString('base64url'),
        lifecycle: normalizeLifecycle(req.lifecycle),
        extra: req.extra ?? {},
        network: req.network,
        trafficAccessToken: req.network?.allowPublicTraffic === false ? randomBytes(24).toString('base64url') : null,
      };
      const admission: Admission = { op: 'create', team: req.team ?? null, sandboxId: id, limits: spec.limits, diskMB: spec.diskMB, metadata: spec.metadata };
      let claimed = false;
      await core.admitted(admission, () => {
        const still = core.store.getSandbox(id); // a delete may have taken it while the cluster was asked
        if (!still || !allows('claim', still.state)) return;
        core.setState(id, 'creating', { team: req.team ?? null, spec: JSON.stringify(spec) });
        claimed = true;
      });
      if (!claimed) return undefined;
      try {
        // a pooled sandbox was made with the default policy: a request's own one replaces it
        if (req.network && !isOpenPolicy(egressPolicy(req.network))) await applyPolicy(core, id, req.network);
        await personalize(core, id, spec);
      } catch (err) {
        core.log.warn({ sandbox: id, err: errorMessage(err) }, 'a pooled sandbox could not be claimed; removing it');
        await teardown(core, id).catch((e) => core.setState(id, 'failed', { lastError: errorMessage(e) }));
        return undefined;
      }
      const startedAt = core.now();
      const endAt = req.timeoutSec !== undefined ? startedAt + req.timeoutSec * 1000 : null;
      core.setState(id, 'running', { startedAt, createdAt: startedAt, endAt });
      return core.get(id);
    });
  }

  /** Pooled sandboxes of a template that no create is claiming, oldest first. */
  private pooledRows(templateId: string) {
    return this.core.store.sandboxesInState('pooled', templateId).filter((r) => !this.claiming.has(r.id));
  }

  /**
   * Deletes a template. Its pooled sandboxes are given back first (they are the manager's,
   * not a user's); sandboxes in use or child templates still refuse the delete.
   */
  async removeTemplate(ref: string): Promise<void> {
    const core = this.core;
    const t = core.deps.templates.get(ref);
    this.retiring.add(t.id);
    try {
      await this.settled();
      for (const r of core.store.listSandboxes()) if (r.state === 'pooled' && r.templateId === t.id) await deleteSandbox(core, r.id);
      core.deps.templates.remove(t.id);
    } finally {
      this.retiring.delete(t.id);
    }
  }

  /**
   * Brings every pool toward its size now, in the background: refills in parallel (up to
   * refillConcurrency, behind waiting requests), or gives back what a shrunk pool holds
   * beyond its size. Called after each create and by the periodic reconciler.
   */
  fill(): void {
    // on the next turn of the event loop, once: a create returns its sandbox before refills start
    if (this.fillScheduled) return;
    this.fillScheduled = true;
    setImmediate(() => {
      this.fillScheduled = false;
      this.fillNow();
    });
  }

  private fillNow(): void {
    const core = this.core;
    // only a manager that was given a pool manages pools (a short-lived CLI manager does not)
    if (core.closed || !this.configured) return;
    // claims in progress are a burst served from the pool: refills (CPU-heavy) start after it
    if (this.claiming.size) return;
    for (const name of Object.keys(this.bounds)) {
      const template = core.deps.templates.find(name);
      if (!template || this.retiring.has(template.id)) continue;
      if ((this.failedUntil.get(template.id) ?? 0) > core.now()) continue;
      const size = this.target(name);
      const pooled = this.pooledRows(template.id);
      const busy = this.preparing.get(template.id) ?? 0;
      if (pooled.length > size && busy === 0) {
        for (const extra of pooled.slice(size))
          this.track(
            template.id,
            deleteSandbox(core, extra.id).catch((e) => core.log.warn({ sandbox: extra.id, err: errorMessage(e) }, 'could not shrink the pool')),
          );
        continue;
      }
      for (let deficit = size - pooled.length - busy; deficit > 0 && this.refilling() < this.refillConcurrency; deficit--)
        this.track(template.id, this.refill(template));
    }
  }

  private refilling(): number {
    let n = 0;
    for (const v of this.preparing.values()) n += v;
    return n;
  }

  private async refill(template: Template): Promise<void> {
    const core = this.core;
    try {
      await this.gate.run('refill', async () => {
        // the pool may have been closed, shrunk or retired while this waited for its turn
        if (core.closed || this.retiring.has(template.id)) return;
        await prepare(core, template);
      });
    } catch (err) {
      this.failedUntil.set(template.id, core.now() + 5000);
      core.log.warn({ template: template.name, err: errorMessage(err) }, 'could not prepare a pooled sandbox');
    }
  }

  /** Counts a refill or shrink against its template until it ends, then looks at the pools again. */
  private track(templateId: string | undefined, p: Promise<unknown>): void {
    if (templateId) this.preparing.set(templateId, (this.preparing.get(templateId) ?? 0) + 1);
    const done: Promise<void> = p.then(
      () => undefined,
      () => undefined,
    );
    this.work.add(done);
    void done.finally(() => {
      this.work.delete(done);
      if (templateId) {
        const left = (this.preparing.get(templateId) ?? 1) - 1;
        if (left > 0) this.preparing.set(templateId, left);
        else this.preparing.delete(templateId);
        this.fill();
      }
    });
  }
}

/** One pooled sandbox: provisioned up to envd ready, then left pooled without an identity. */
async function prepare(core: SandboxCore, template: Template): Promise<void> {
  const id = randomId(20);
  await core.locks.run(id, async () => {
    const spec = await recordNew(core, id, template, { template: template.id });
    await rollbackOnFailure(core, id, template.name, async () => {
      const pid = await provision(core, id, spec);
      core.setState(id, 'pooled', { pid });
    });
  });
}
