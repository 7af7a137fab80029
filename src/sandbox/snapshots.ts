import { join } from 'node:path';
import { copyLayerUnshifted, type EarlierCopy } from '../template/layer-copy.js';
import type { Template, TemplateConfig } from '../template/store.js';
import { CubeboxError, errorMessage, invalid } from '../util/errors.js';
import { randomId } from '../util/ids.js';
import type { SandboxCore } from './core.js';
import { keepsMemory, withMemory } from './memory-snapshot.js';
import { assertOperation } from './states.js';
import { ID_BLOCK, type CreateRequest, type SandboxInfo, type StoredSpec } from './types.js';

/**
 * Snapshots and fork: a sandbox's writable layer committed as a template, and the collection of
 * the ephemeral templates that fork makes. Under a runtime that checkpoints by itself (gVisor)
 * the snapshot keeps the sandbox's memory and processes too (memory-snapshot.ts); under the
 * others it is filesystem only (CRIU is unusable here, see `cubebox doctor`).
 */

export interface SnapshotOpts {
  name?: string;
  ephemeral?: boolean;
  /** The caller holds the new template (a fork): a layer refused by the disk quota is removed all the same. */
  heldByCaller?: boolean;
  config?: Partial<TemplateConfig>;
}

/** A default snapshot name: the template's name (less any snapshot suffix, so generations do not grow) and a new suffix. */
export function snapshotName(templateName: string): string {
  const suffix = `-snap-${randomId(8)}`;
  const stem = templateName.replace(/(-snap-[a-z0-9]{8})+$/, '').slice(0, 63 - suffix.length);
  return stem + suffix;
}

/** The latest layer taken from this sandbox's writable layer that still exists (its unchanged files are shared). */
function earlierCopy(core: SandboxCore, id: string): EarlierCopy | undefined {
  const taken = core.deps.templates.list().filter((t) => t.config.snapshotOf === id && t.config.takenAt !== undefined);
  const last = taken.sort((a, b) => b.config.takenAt! - a.config.takenAt!)[0];
  return last && { layer: last.layers[0]!, takenAt: last.config.takenAt! };
}

/** Commits a sandbox's writable layer as a new template on top of its template, taken while frozen. */
export async function snapshot(core: SandboxCore, id: string, opts: SnapshotOpts = {}): Promise<Template> {
  const made = await snapshotLocked(core, id, opts);
  // a team's files-only snapshot goes to the cluster's registry, if there is one (a failure is logged and tried again later)
  await core.deps.templates.share(made).catch(() => {});
  return made;
}

function snapshotLocked(core: SandboxCore, id: string, opts: SnapshotOpts): Promise<Template> {
  return core.locks.run(id, async () => {
    const row = core.requireRow(id);
    assertOperation('snapshot', id, row.state);
    const spec = JSON.parse(row.spec) as StoredSpec;
    const templates = core.deps.templates;
    const parent = templates.get(row.templateId);
    const name = opts.name ?? snapshotName(spec.templateName);
    const earlier = earlierCopy(core, id);
    // before the freeze: whatever changes after it has a later ctime (see copyLayerUnshifted)
    const takenAt = Date.now();
    const idMap = core.idMapFor(row.uidSlot);
    const commit = (config: Partial<TemplateConfig>) =>
      templates.addOnTop(name, parent, (dir) => copyLayerUnshifted(join(core.sandboxDir(id), 'disk', 'upper'), dir, idMap?.hostId ?? 0, ID_BLOCK, earlier), {
        snapshotOf: id,
        takenAt,
        ephemeral: opts.ephemeral,
        ...opts.config,
        ...config,
      });
    if (keepsMemory(core, id, row.state, spec)) {
      const made = await withMemory(core, id, spec, commit);
      if (made) {
        await admitLayer(core, made, opts.heldByCaller ? 1 : 0);
        return made;
      }
      // the runtime could not save its memory (its network state): its files only, as the kind says
    }
    const frozeIt = row.state === 'running';
    if (frozeIt) {
      core.setState(id, 'pausing');
      await core.runtimeOf(id).pause(core.containerId(id));
    }
    let made: Template;
    try {
      made = await commit({});
    } finally {
      if (frozeIt) {
        await core.runtimeOf(id).resume(core.containerId(id));
        core.setState(id, 'running');
      }
    }
    await admitLayer(core, made, opts.heldByCaller ? 1 : 0);
    return made;
  });
}

/** A team's new layer against its disk quota: a refused one is removed again, and the refusal goes to the caller. */
async function admitLayer(core: SandboxCore, t: Template, ownHolds: number): Promise<void> {
  if (t.config.team === undefined || !core.admitLayer) return;
  try {
    await core.admitLayer(t.config.team);
  } catch (err) {
    core.deps.templates.remove(t.id, ownHolds);
    throw err;
  }
}

/** count new sandboxes from a sandbox's filesystem (through an ephemeral snapshot), made by `create`. */
export async function fork(
  core: SandboxCore,
  id: string,
  count: number,
  req: Omit<CreateRequest, 'template'>,
  create: (req: CreateRequest) => Promise<SandboxInfo>,
): Promise<Array<{ info?: SandboxInfo; error?: CubeboxError }>> {
  if (!Number.isInteger(count) || count < 1 || count > 16) throw invalid('count must be an integer between 1 and 16');
  const name = `fork-${id}-${randomId(6)}`;
  // held from before it exists until its sandboxes are recorded: the collector never takes it from under them
  const release = core.deps.templates.hold(name);
  const out: Array<{ info?: SandboxInfo; error?: CubeboxError }> = [];
  try {
    const snap = await snapshot(core, id, { name, ephemeral: true, heldByCaller: true, config: req.team ? { team: req.team } : {} }); // the team's, like its sandboxes: it counts in its disk
    // at once: the create gate bounds how many are provisioned together, a memory snapshot's image is shared read-only
    const made = await Promise.allSettled(Array.from({ length: count }, () => create({ ...req, template: snap.id })));
    for (const r of made) {
      if (r.status === 'fulfilled') out.push({ info: r.value });
      else out.push({ error: r.reason instanceof CubeboxError ? r.reason : new CubeboxError('internal', errorMessage(r.reason)) });
    }
  } finally {
    release();
  }
  collectEphemeralTemplates(core);
  return out;
}

/** Per manager: ephemeral templates whose removal was refused, and the template generation it was refused at. */
const refusals = new WeakMap<SandboxCore, Map<string, number>>();

/**
 * Removes ephemeral templates (fork snapshots) that nothing uses any more: no sandbox, no
 * create or fork in progress. A refusal (a snapshot taken from a fork's sandbox is its
 * child, say) is remembered and tried again only once the templates have changed.
 */
export function collectEphemeralTemplates(core: SandboxCore): void {
  const templates = core.deps.templates;
  let refused = refusals.get(core);
  if (!refused) refusals.set(core, (refused = new Map()));
  for (const t of templates.list()) {
    if (!t.config.ephemeral || templates.isHeld(t) || core.store.sandboxesUsingTemplate(t.id) > 0) continue;
    if (refused.get(t.id) === templates.generation) continue;
    try {
      templates.remove(t.id);
      refused.delete(t.id);
    } catch (err) {
      refused.set(t.id, templates.generation);
      core.log.info({ template: t.name, err: errorMessage(err) }, 'an ephemeral template stays for now');
    }
  }
  for (const id of refused.keys()) if (!templates.find(id)) refused.delete(id);
}
