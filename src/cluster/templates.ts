// Templates across the nodes of a cluster (`--registry`): a team's template made on one node
// (a build, a files-only snapshot) is published to the registry and recorded in the shared
// table; a node asked for a template it lacks resolves the reference there, with the same
// namespace rules as its own templates, pulls the layers it does not have, and keeps the copy.
// Deleting a template removes its row; every node drops its copy at the next sync once no
// sandbox of it is left. sync() also publishes what could not be published before.
import type { Logger } from 'pino';
import type { SandboxManager } from '../sandbox/manager.js';
import { describe } from '../store/pg/pool.js';
import { notFound } from '../util/errors.js';
import type { PgSharedTemplates, SharedTemplateRecord } from '../store/pg/templates.js';
import type { RegistryRepo } from '../template/oci/distribution.js';
import { publishTemplate, pullTemplate, sharedConfig } from '../template/share.js';
import { DEFAULT_TEMPLATE_CONFIG, findInNamespace, sharable, type Template, type TemplateConfig } from '../template/store.js';

/** How often a node publishes what is left to publish and drops copies deleted elsewhere. */
export const TEMPLATE_SYNC_MS = 5000;

interface Resolvable {
  rec: SharedTemplateRecord;
  name: string;
  config: Partial<TemplateConfig>;
}

/** A row as the routes see a template (its layers are on other nodes). */
const asTemplate = (rec: SharedTemplateRecord): Template => ({
  id: rec.id,
  name: rec.name,
  layers: [],
  config: { ...DEFAULT_TEMPLATE_CONFIG, ...(JSON.parse(rec.config) as Partial<TemplateConfig>), team: rec.team },
  createdAt: rec.createdAt,
});

export class TemplateSharing {
  private readonly pulls = new Map<string, Promise<void>>();
  private readonly publishing = new Map<string, Promise<void>>();
  private timer?: NodeJS.Timeout;
  private syncing?: Promise<void>;

  constructor(
    private readonly manager: SandboxManager,
    private readonly registry: RegistryRepo,
    private readonly table: PgSharedTemplates,
    private readonly log: Logger,
  ) {}

  /** Hooks the node's template store and starts the periodic sync. */
  start(): void {
    const templates = this.manager.templates;
    templates.publisher = (t) => this.publish(t);
    templates.configChanged = (t) => void this.pushConfig(t);
    this.timer = setInterval(() => {
      this.syncing ??= this.sync()
        .catch((err: unknown) => this.log.warn({ err: describe(err) }, 'template sync failed; tried again shortly'))
        .finally(() => (this.syncing = undefined));
    }, TEMPLATE_SYNC_MS);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    const templates = this.manager.templates;
    templates.publisher = undefined;
    templates.configChanged = undefined;
    await this.syncing;
    await Promise.allSettled([...this.publishing.values(), ...this.pulls.values()]);
    await this.table.close();
  }

  /** Publishes a template (one publication of an id at a time); failures are logged and thrown. */
  publish(t: Template): Promise<void> {
    let p = this.publishing.get(t.id);
    if (!p) {
      p = this.publishNow(t).finally(() => this.publishing.delete(t.id));
      this.publishing.set(t.id, p);
    }
    return p;
  }

  private async publishNow(t: Template): Promise<void> {
    const t0 = Date.now();
    try {
      const paths = this.manager.paths;
      const r = await publishTemplate(this.registry, t, { layersDir: paths.layersDir, dataDir: paths.dataDir });
      const config = sharedConfig(t.config);
      await this.table.upsert({
        id: t.id,
        team: config.team!,
        name: t.name,
        aliases: config.aliases ?? [],
        public: config.public === true,
        config: JSON.stringify(config),
        manifest: r.manifest,
        size: r.size,
        nodeId: paths.instanceId,
        createdAt: t.createdAt,
        publishedAt: Date.now(),
      });
      const still = this.manager.templates.find(t.id);
      if (still) this.manager.templates.updateConfig(still, { shared: { manifest: r.manifest } });
      this.log.info(
        { template: t.id, name: t.name, manifest: r.manifest, bytes: r.size, uploaded: r.uploaded, ms: Date.now() - t0 },
        "published a template to the cluster's registry",
      );
    } catch (err) {
      this.log.warn({ template: t.id, name: t.name, err: describe(err) }, "cannot publish a template to the cluster's registry; tried again later");
      throw err;
    }
  }

  /** A change of names or settings here (tags, aliases, the public flag) goes to the table. */
  private async pushConfig(t: Template): Promise<void> {
    const config = sharedConfig(t.config);
    await this.table
      .setConfig(t.id, JSON.stringify(config), config.aliases ?? [], config.public === true)
      .catch((err: unknown) => this.log.warn({ template: t.id, err: describe(err) }, 'cannot record a template change in the cluster'));
  }

  /**
   * The cluster's template a team's reference names, as this node's lookup would resolve it:
   * by id, else by name, alias or name:tag in the team's namespace. Only one the team may use
   * (its own, or one made public).
   */
  async resolve(ref: string, team: string | undefined): Promise<SharedTemplateRecord | undefined> {
    const recs = await this.table.candidates(ref, team);
    const all: Resolvable[] = recs.map((rec) => {
      const config = JSON.parse(rec.config) as Partial<TemplateConfig>;
      return { rec, name: rec.name, config };
    });
    const hit = all.find((r) => r.rec.id === ref)?.rec ?? (team !== undefined ? findInNamespace(all, ref, team)?.rec : undefined);
    if (!hit || !(hit.team === team || hit.public)) return undefined;
    return hit;
  }

  /** Makes the template a create names available here when only the cluster has it (pulled once, however many ask). */
  async fetch(ref: string, team: string | undefined): Promise<void> {
    const local = this.manager.templates.find(ref, team);
    if (local && (await this.current(local, ref))) return;
    const rec = await this.resolve(ref, team);
    if (!rec || this.manager.templates.find(rec.id)) return;
    let p = this.pulls.get(rec.id);
    if (!p) {
      p = this.pull(rec).finally(() => this.pulls.delete(rec.id));
      this.pulls.set(rec.id, p);
    }
    await p;
  }

  /**
   * Whether this node's template may be used as it is: its own, or one the cluster still has in
   * this publication. One deleted from the cluster is not found (its copy goes at the next
   * sync); a copy a newer publication replaced is dropped here when nothing uses it, and pulled
   * again. The database unreachable: the copy serves.
   */
  private async current(t: Template, ref: string): Promise<boolean> {
    const mark = t.config.shared;
    if (!mark) return true;
    let rec: SharedTemplateRecord | undefined;
    try {
      [rec] = await this.table.byIds([t.id]);
    } catch (err) {
      this.log.warn({ template: t.id, err: describe(err) }, "cannot check a template with the cluster's table; using this node's copy");
      return true;
    }
    if (!rec) throw notFound(`template '${ref}' not found`);
    if (!mark.pulled || rec.manifest === mark.manifest) return true;
    const templates = this.manager.templates;
    if (templates.isHeld(t) || this.manager.store.sandboxesUsingTemplate(t.id) > 0 || templates.list().some((o) => o.config.parent === t.id)) return true;
    await this.manager.removeTemplate(t.id).catch(() => {});
    return !!templates.find(t.id); // removed: pulled again
  }

  private async pull(rec: SharedTemplateRecord): Promise<void> {
    const t0 = Date.now();
    const { layersDir } = this.manager.paths;
    const { layerIds, row, fetched } = await pullTemplate(this.registry, rec.manifest, layersDir);
    if (row.id !== rec.id) throw new Error(`the registry's template ${rec.manifest} is not template ${rec.id}`);
    // the table's names and settings are the template's now (tags or the public flag may have changed since)
    const config = { ...(JSON.parse(rec.config) as Partial<TemplateConfig>), team: rec.team };
    this.manager.templates.insertPulled({ id: rec.id, name: rec.name, config, createdAt: rec.createdAt }, layerIds, rec.manifest);
    this.log.info(
      { template: rec.id, name: rec.name, layers: layerIds.length, fetched, bytes: rec.size, ms: Date.now() - t0 },
      'pulled a template from the cluster',
    );
  }

  /** Deletes a template for the cluster (after this node removed its own copy, if it had one). */
  async unpublish(id: string): Promise<void> {
    await this.table.delete(id);
  }

  /** A team's template only the cluster has (not this node), as the routes see templates (no layers here). */
  async find(ref: string, team: string | undefined): Promise<Template | undefined> {
    const rec = await this.resolve(ref, team);
    return rec && asTemplate(rec);
  }

  /** The cluster's templates a team sees: its own and other teams' made public. */
  async list(team: string): Promise<Template[]> {
    return (await this.table.visibleTo(team)).map(asTemplate);
  }

  /**
   * Publishes this node's sharable templates that are not published yet; drops copies of
   * templates the cluster no longer has (deleted through any node), and pulled copies a newer
   * publication replaced, once nothing here uses them (the next create pulls the new one).
   */
  async sync(): Promise<void> {
    const templates = this.manager.templates;
    const local = templates.list().filter((t) => sharable(t) || t.config.shared);
    const known = new Map((await this.table.byIds(local.map((t) => t.id))).map((r) => [r.id, r]));
    for (const t of local) {
      const rec = known.get(t.id);
      if (!t.config.shared) {
        await this.publish(t).catch(() => {}); // (logged)
        continue;
      }
      const gone = !rec || (t.config.shared.pulled && rec.manifest !== t.config.shared.manifest);
      if (!gone || templates.isHeld(t) || this.manager.store.sandboxesUsingTemplate(t.id) > 0) continue;
      if (templates.list().some((o) => o.config.parent === t.id)) continue; // a snapshot of it here keeps its layers
      try {
        await this.manager.removeTemplate(t.id);
        this.log.info({ template: t.id, name: t.name }, rec ? 'dropped a copy of a template published again' : 'dropped a template deleted from the cluster');
      } catch (err) {
        this.log.debug({ template: t.id, err: describe(err) }, 'cannot drop the template yet');
      }
    }
  }
}
