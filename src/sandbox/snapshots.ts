import { join } from 'node:path';
import { copyLayerUnshifted } from '../template/layer-copy.js';
import type { Template, TemplateConfig } from '../template/store.js';
import { CubeboxError, errorMessage, invalid } from '../util/errors.js';
import { randomId } from '../util/ids.js';
import type { SandboxCore } from './core.js';
import { assertOperation } from './states.js';
import { ID_BLOCK, type CreateRequest, type SandboxInfo, type StoredSpec } from './types.js';

/**
 * Snapshots and fork: a sandbox's writable layer committed as a template (filesystem only:
 * CRIU is unusable here, see `cubebox doctor`), and the collection of the ephemeral
 * templates that fork makes.
 */

export interface SnapshotOpts {
  name?: string;
  ephemeral?: boolean;
  config?: Partial<TemplateConfig>;
}

/** Commits a sandbox's writable layer as a new template on top of its template, taken while frozen. */
export async function snapshot(core: SandboxCore, id: string, opts: SnapshotOpts = {}): Promise<Template> {
  return core.locks.run(id, async () => {
    const row = core.requireRow(id);
    assertOperation('snapshot', id, row.state);
    const spec = JSON.parse(row.spec) as StoredSpec;
    const templates = core.deps.templates;
    const parent = templates.get(row.templateId);
    const name = opts.name ?? `${spec.templateName}-snap-${randomId(8)}`;
    const frozeIt = row.state === 'running';
    if (frozeIt) {
      core.setState(id, 'pausing');
      await core.runtimeOf(id).pause(core.containerId(id));
    }
    let made: Template;
    try {
      const idMap = core.idMapFor(row.uidSlot);
      made = await templates.addOnTop(
        name,
        parent,
        (dir) => copyLayerUnshifted(join(core.sandboxDir(id), 'disk', 'upper'), dir, idMap?.hostId ?? 0, ID_BLOCK),
        {
          snapshotOf: id,
          ephemeral: opts.ephemeral,
          ...opts.config,
        },
      );
    } finally {
      if (frozeIt) {
        await core.runtimeOf(id).resume(core.containerId(id));
        core.setState(id, 'running');
      }
    }
    await admitLayer(core, made);
    return made;
  });
}

/** A team's new layer against its disk quota: a refused one is removed again, and the refusal goes to the caller. */
async function admitLayer(core: SandboxCore, t: Template): Promise<void> {
  if (t.config.team === undefined || !core.admitLayer) return;
  try {
    await core.admitLayer(t.config.team);
  } catch (err) {
    core.deps.templates.remove(t.id);
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
  // the fork's template is the team's, like its sandboxes: it counts in the team's disk
  const snap = await snapshot(core, id, { name: `fork-${id}-${randomId(6)}`, ephemeral: true, config: req.team ? { team: req.team } : {} });
  const out: Array<{ info?: SandboxInfo; error?: CubeboxError }> = [];
  for (let i = 0; i < count; i++) {
    try {
      out.push({ info: await create({ ...req, template: snap.id }) });
    } catch (err) {
      out.push({ error: err instanceof CubeboxError ? err : new CubeboxError('internal', errorMessage(err)) });
    }
  }
  collectEphemeralTemplates(core);
  return out;
}

/** Removes ephemeral templates (fork snapshots) that no sandbox uses any more. */
export function collectEphemeralTemplates(core: SandboxCore): void {
  const templates = core.deps.templates;
  for (const t of templates.list()) {
    if (!t.config.ephemeral || core.store.sandboxesUsingTemplate(t.id) > 0) continue;
    try {
      templates.remove(t.id);
    } catch (err) {
      core.log.warn({ template: t.name, err: errorMessage(err) }, 'could not remove an ephemeral template');
    }
  }
}
