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
import { normalizeLifecycle, type CreateRequest, type SandboxInfo, type StoredSpec } from './types.js';

/**
 * The warm pool: sandboxes provisioned ahead of requests up to envd answering (state pooled),
 * per template. A create claims one and gives it its identity (/init), which is all that is
 * left of a create.
 */
export class WarmPool {
  private sizes: Record<string, number> = {};
  private configured = false;
  /** Templates being deleted: the pool does not refill them. */
  private readonly retiring = new Set<string>();
  private filling: Promise<void> | undefined;

  constructor(private readonly core: SandboxCore) {}

  target(templateName: string): number {
    return this.sizes[templateName] ?? 0;
  }

  /** Waits for a fill in progress (close, template removal). */
  async settled(): Promise<void> {
    await this.filling?.catch(() => undefined);
  }

  /** Sets the pool sizes (template name -> count) and starts filling. */
  set(sizes: Record<string, number>): void {
    this.sizes = { ...sizes };
    this.configured = true;
    this.fill();
  }

  /**
   * Takes a prepared sandbox of the template (everything up to envd answering is done)
   * and gives it this request's identity: metadata, env vars, token, lifecycle, TTL.
   */
  async claim(templateId: string, req: CreateRequest): Promise<SandboxInfo | undefined> {
    const core = this.core;
    const candidates = core.store
      .listSandboxes()
      .filter((r) => r.state === 'pooled' && r.templateId === templateId)
      .sort((a, b) => a.createdAt - b.createdAt);
    for (const c of candidates) {
      const info = await core.locks.run(c.id, async () => {
        const row = core.store.getSandbox(c.id);
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
        core.admit?.({ op: 'create', team: req.team ?? null, sandboxId: c.id, limits: spec.limits, diskMB: spec.diskMB, metadata: spec.metadata });
        core.setState(c.id, 'creating', { team: req.team ?? null, spec: JSON.stringify(spec) });
        try {
          // a pooled sandbox was made with the default policy: a request's own one replaces it
          if (req.network && !isOpenPolicy(egressPolicy(req.network))) await applyPolicy(core, c.id, req.network);
          await personalize(core, c.id, spec);
        } catch (err) {
          core.log.warn({ sandbox: c.id, err: errorMessage(err) }, 'a pooled sandbox could not be claimed; removing it');
          await teardown(core, c.id).catch((e) => core.setState(c.id, 'failed', { lastError: errorMessage(e) }));
          return undefined;
        }
        const startedAt = core.now();
        const endAt = req.timeoutSec !== undefined ? startedAt + req.timeoutSec * 1000 : null;
        core.setState(c.id, 'running', { startedAt, createdAt: startedAt, endAt });
        return core.get(c.id);
      });
      if (info) return info;
    }
    return undefined;
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

  /** Brings every pool up to its size in the background, one sandbox at a time. */
  fill(): void {
    const core = this.core;
    // only a manager that was given a pool manages pools (a short-lived CLI manager does not)
    if (this.filling || core.closed || !this.configured) return;
    this.filling = (async () => {
      const templates = core.deps.templates;
      // templates no longer pooled give their pooled sandboxes back
      const pooledNames = new Set(Object.keys(this.sizes).map((n) => templates.find(n)?.id));
      for (const r of core.store.listSandboxes()) {
        if (r.state === 'pooled' && !pooledNames.has(r.templateId)) await deleteSandbox(core, r.id).catch(() => undefined);
      }
      for (const [name, size] of Object.entries(this.sizes)) {
        const template = templates.find(name);
        if (!template || this.retiring.has(template.id)) continue;
        while (!core.closed) {
          const pooled = core.store.listSandboxes().filter((r) => r.state === 'pooled' && r.templateId === template.id);
          // a pool made smaller gives back what it holds beyond its size
          for (const extra of pooled.slice(size))
            await deleteSandbox(core, extra.id).catch((e) => core.log.warn({ sandbox: extra.id, err: errorMessage(e) }, 'could not shrink the pool'));
          if (pooled.length >= size) break;
          try {
            await prepare(core, template);
          } catch (err) {
            core.log.warn({ template: name, err: errorMessage(err) }, 'could not prepare a pooled sandbox');
            break;
          }
        }
      }
    })().finally(() => (this.filling = undefined));
  }
}

/** One pooled sandbox: provisioned up to envd ready, then left pooled without an identity. */
async function prepare(core: SandboxCore, template: Template): Promise<void> {
  const id = randomId(20);
  await core.locks.run(id, async () => {
    const spec = recordNew(core, id, template, { template: template.id });
    await rollbackOnFailure(core, id, template.name, async () => {
      const pid = await provision(core, id, spec);
      core.setState(id, 'pooled', { pid });
    });
  });
}
