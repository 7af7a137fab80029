import { chmodSync, existsSync, mkdirSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import type { Paths } from '../config.js';
import type { Store, TemplateRow } from '../store/store.js';
import { conflict, invalid, notFound } from '../util/errors.js';
import { run, runOk } from '../util/exec.js';
import { fillBusybox } from './busybox.js';
import type { ImportOptions } from './oci-import.js';
import { NAME_RE, randomId } from '../util/ids.js';

/** Settings a template gives its sandboxes. */
export interface TemplateConfig {
  user: string; // default user for commands
  workdir?: string;
  env: Record<string, string>;
  cpuCount: number;
  memoryMB: number;
  diskSizeMB: number;
  /** The template this one was built on (snapshots, recipes). */
  parent?: string;
  /** Set on snapshots: the sandbox it was taken from, and when its files were frozen for it (ms epoch). */
  snapshotOf?: string;
  takenAt?: number;
  /** Made for a fork: removed once no sandbox uses it. */
  ephemeral?: boolean;
  /** Started in every new sandbox (in the background), and the check that it is ready. */
  startCommand?: string;
  readyCommand?: string;
  /** Build steps: the cache key of the step that made this layer. */
  cacheKey?: string;
  buildStep?: boolean;
  /** Imported images: the manifest (or image) digest. */
  imageDigest?: string;
  aliases?: string[];
  tags?: string[];
  /** When each tag was given (ms epoch); tags from before this field have none. */
  tagsAt?: Record<string, number>;
  /**
   * Sandboxes may nest containers: seccomp then allows unprivileged user namespaces and
   * mounts in them, which Docker's default refuses (see src/runtime/seccomp.ts). Off by
   * default; `cubebox doctor` lists the templates that turn it on.
   */
  nestedContainers?: boolean;
  /**
   * A memory snapshot: a checkpoint image of the sandbox's processes and memory is kept with it
   * (checkpointImageDir) and its sandboxes restore from it; unset: files only.
   */
  checkpoint?: boolean;
  /** The runtime its sandboxes need (e.g. gVisor for untrusted code); unset: the node's default or the create's choice. */
  runtime?: string;
  /** The owning team (snapshots made through the API); unset: public (built-in and host-made templates). */
  team?: string;
  public?: boolean; // a team's template other teams may start sandboxes of, by its id (E2B's public flag)
  /**
   * In a cluster with a template registry: the manifest this template was published as (or
   * pulled from, `pulled`). Node-local; a template with it that the cluster no longer lists was
   * deleted elsewhere, and goes here too.
   */
  shared?: { manifest: string; pulled?: boolean };
}

function shellQuote(arg: string): string {
  return /^[A-Za-z0-9_./=:@%+,-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`;
}

const TAG_RE = /^[a-z0-9][a-z0-9._-]{0,62}$/;
/** Tags every template answers to without carrying them (see find). */
export const RESERVED_TAGS = ['latest', 'default'];

/**
 * Names of the public templates serve offers (built on first use or installed by the host):
 * no team may take them, whether or not they exist yet on this host.
 */
export const PUBLIC_TEMPLATE_NAMES = ['base', 'code-interpreter-v1', 'busybox', 'desktop'];

/** Beside the layers: the digest each published layer had as a blob (template/share.ts). */
export const LAYER_DIGESTS = 'layer-digests';

/** Where a memory snapshot's checkpoint image is kept: removed with the template. */
export const checkpointImageDir = (paths: Pick<Paths, 'dataDir'>, templateId: string) => join(paths.dataDir, 'checkpoints', templateId);

/**
 * A name, alias or `name:tag` among templates, in one namespace (team undefined: the public
 * one): a name first, then an alias, then a tag of a name or alias (the tags `latest` and
 * `default` name the template itself). The cluster's shared table resolves with it too.
 */
export function findInNamespace<T extends { name: string; config: Pick<TemplateConfig, 'team' | 'aliases' | 'tags'> }>(
  candidates: T[],
  ref: string,
  team: string | undefined,
): T | undefined {
  const all = candidates.filter((t) => t.config.team === team);
  const byName = all.find((t) => t.name === ref);
  if (byName) return byName;
  const byAlias = all.find((t) => t.config.aliases?.includes(ref));
  if (byAlias) return byAlias;
  const colon = ref.lastIndexOf(':');
  if (colon > 0) {
    const [name, tag] = [ref.slice(0, colon), ref.slice(colon + 1)];
    const base = all.find((t) => t.name === name) ?? all.find((t) => t.config.aliases?.includes(name));
    if (!base) return undefined;
    return RESERVED_TAGS.includes(tag) || base.config.tags?.includes(tag) ? base : undefined;
  }
  return undefined;
}

/** Settings a derived template does not take from its parent: what made the parent, and the names it answers to. */
const NOT_INHERITED = [
  'parent',
  'cacheKey',
  'buildStep',
  'snapshotOf',
  'takenAt',
  'ephemeral',
  'aliases',
  'tags',
  'tagsAt',
  'public',
  'checkpoint',
  'shared',
] as const;

function inheritedConfig(parent: TemplateConfig): Partial<TemplateConfig> {
  const out: Partial<TemplateConfig> = { ...parent };
  for (const k of NOT_INHERITED) delete out[k];
  return out;
}

/**
 * The templates a cluster shares through its registry: a team's builds and files-only
 * snapshots. Not build steps or fork snapshots (internal), not memory snapshots (their
 * checkpoint image is the node's), not the host's own templates (each node has its own).
 */
export function sharable(t: { config: Partial<TemplateConfig> }): boolean {
  const c = t.config;
  return c.team !== undefined && !c.ephemeral && !c.buildStep && !c.checkpoint;
}

export const DEFAULT_TEMPLATE_CONFIG: TemplateConfig = { user: 'root', env: {}, cpuCount: 2, memoryMB: 512, diskSizeMB: 1024 };

export interface Template {
  id: string;
  name: string;
  layers: string[]; // absolute layer directories, topmost first
  config: TemplateConfig;
  createdAt: number;
}

/**
 * Templates in their minimal form: an ordered stack of read-only layer directories plus
 * settings. A layer is written under a temporary name and renamed into place only when
 * complete, so a failed import leaves nothing behind.
 */
export class TemplateStore {
  constructor(
    private readonly paths: Paths,
    private readonly store: Store,
  ) {
    mkdirSync(paths.layersDir, { recursive: true, mode: 0o700 });
  }

  /**
   * Removes what interrupted imports and builds left in the layer store (temporary
   * directories). Call only as the data directory's one manager, before any import starts.
   */
  sweepTemporaries(): string[] {
    const swept: string[] = [];
    for (const e of readdirSync(this.paths.layersDir)) {
      if (!e.startsWith('.tmp-')) continue;
      rmSync(join(this.paths.layersDir, e), { recursive: true, force: true });
      swept.push(e);
    }
    // and checkpoint images no memory snapshot owns (an interrupted snapshot's)
    const images = checkpointImageDir(this.paths, '');
    for (const e of existsSync(images) ? readdirSync(images) : []) {
      if (!e.startsWith('.tmp-') && this.find(e)?.config.checkpoint) continue;
      rmSync(join(images, e), { recursive: true, force: true });
      swept.push(`checkpoints/${e}`);
    }
    return swept;
  }

  private toTemplate(row: TemplateRow): Template {
    return {
      id: row.id,
      name: row.name,
      layers: row.layers.map((l) => join(this.paths.layersDir, l)),
      config: { ...DEFAULT_TEMPLATE_CONFIG, ...(JSON.parse(row.config) as Partial<TemplateConfig>) },
      createdAt: row.createdAt,
    };
  }

  get(ref: string, team?: string): Template {
    const t = this.find(ref, team);
    if (!t) throw notFound(`template '${ref}' not found`);
    return t;
  }

  /**
   * By id, or by name, alias or `name:tag` (the tags `latest` and `default` name the template
   * itself) looked up in the team's own namespace first, then in the public one. Without a
   * team (the host's view): the public namespace only; a team's template by its id.
   */
  find(ref: string, team?: string): Template | undefined {
    const row = this.store.getTemplate(ref);
    if (row) return this.toTemplate(row);
    return (team !== undefined ? this.findIn(ref, team) : undefined) ?? this.findIn(ref, undefined);
  }

  /** A name, alias or `name:tag` in one namespace (undefined: the public one). */
  private findIn(ref: string, team: string | undefined): Template | undefined {
    const named = this.store.templatesNamed(ref).map((r) => this.toTemplate(r));
    return findInNamespace(named, ref, team) ?? findInNamespace(this.list(), ref, team);
  }

  /**
   * Whether a team may not take the name: it names (or aliases) a public template teams can
   * start from, or one serve offers. Public templates are everyone's to see, so saying so
   * tells nothing about another team.
   */
  private reservedForPublic(name: string): boolean {
    if (PUBLIC_TEMPLATE_NAMES.includes(name) || this.onDemand.has(name)) return true;
    const pub = this.findIn(name, undefined);
    return !!pub && !pub.config.snapshotOf && !pub.config.ephemeral && !pub.config.buildStep;
  }

  /** Adds another name the template answers to (in the template's namespace). */
  addAlias(ref: string, alias: string): Template {
    if (!NAME_RE.test(alias)) throw invalid(`bad alias '${alias}': use lowercase letters, digits, '.', '_' and '-' (max 63)`);
    const t = this.get(ref);
    this.checkNewName(alias, t.config.team);
    return this.updateConfig(t, { aliases: [...(t.config.aliases ?? []), alias] });
  }

  /** Tags the template: `<name>:<tag>` then resolves to it. */
  addTag(ref: string, tag: string): Template {
    if (!TAG_RE.test(tag)) throw invalid(`bad tag '${tag}': use lowercase letters, digits, '.', '_' and '-' (max 63)`);
    const t = this.get(ref);
    if (RESERVED_TAGS.includes(tag) || t.config.tags?.includes(tag)) return t; // (reserved ones it answers to already)
    return this.updateConfig(t, { tags: [...(t.config.tags ?? []), tag], tagsAt: { ...t.config.tagsAt, [tag]: Date.now() } });
  }

  /** Removes a tag (not found: the template does not carry it). */
  removeTag(ref: string, tag: string): Template {
    const t = this.get(ref);
    if (RESERVED_TAGS.includes(tag)) throw invalid(`the tag '${tag}' always names the template itself and cannot be removed`);
    if (!t.config.tags?.includes(tag)) throw notFound(`template '${t.name}' has no tag '${tag}'`);
    const { [tag]: _gone, ...tagsAt } = t.config.tagsAt ?? {};
    return this.updateConfig(t, { tags: t.config.tags.filter((x) => x !== tag), tagsAt });
  }

  updateConfig(t: Template, change: Partial<TemplateConfig>): Template {
    const row = this.store.getTemplate(t.id)!;
    const config = { ...(JSON.parse(row.config) as Partial<TemplateConfig>), ...change };
    this.store.updateTemplateConfig(t.id, JSON.stringify(config));
    const now = this.get(t.id);
    if (now.config.shared && !('shared' in change)) this.configChanged?.(now);
    return now;
  }

  // ---- a cluster's template registry (set by the composition root; cluster/templates.ts)

  /** Publishes a team's template to the cluster; its failures are its own to log. */
  publisher?: (t: Template) => Promise<void>;
  /** Told when a published or pulled template's names or settings change here. */
  configChanged?: (t: Template) => void;

  /** Publishes t to the cluster when it is a template the cluster shares (see sharable). */
  async share(t: Template): Promise<void> {
    if (this.publisher && sharable(t)) await this.publisher(t);
  }

  /** A template pulled from the cluster's registry: its row as published, over the pulled layers. */
  insertPulled(row: { id: string; name: string; config: Partial<TemplateConfig>; createdAt: number }, layerIds: string[], manifest: string): Template {
    const config = { ...row.config, shared: { manifest, pulled: true } };
    const r: TemplateRow = { id: row.id, name: row.name, layers: layerIds, config: JSON.stringify(config), createdAt: row.createdAt };
    this.insert(r);
    return this.toTemplate(r);
  }

  list(): Template[] {
    return this.store.listTemplates().map((r) => this.toTemplate(r));
  }

  /** Registers a root filesystem directory or tarball (.tar, .tar.gz, .tar.xz, .tar.zst) as a template. */
  async add(name: string, source: string, config: Partial<TemplateConfig> = {}): Promise<Template> {
    this.checkNewName(name);
    if (!existsSync(source)) throw invalid(`template source ${source} does not exist`);
    const isDir = statSync(source).isDirectory();
    return this.addLayer(name, config, async (dir) => {
      if (isDir) {
        await runOk('cp', ['-a', '--reflink=auto', source + '/.', dir]);
      } else {
        const r = await run('tar', ['-x', '--numeric-owner', '-f', source, '-C', dir]);
        if (r.code !== 0) throw invalid(`cannot extract ${source} as a tarball: ${r.stderr.trim().split('\n').slice(-2).join(' ')}`);
      }
      if (readdirSync(dir).length === 0) throw invalid(`template source ${source} is empty`);
    });
  }

  /** A tiny template of busybox-static: sh and the usual applets, root and `user` accounts. */
  async addBusybox(name: string, config: Partial<TemplateConfig> = {}, busybox = '/bin/busybox'): Promise<Template> {
    this.checkNewName(name);
    if (!existsSync(busybox)) throw invalid(`${busybox} not found (install the busybox-static package)`);
    return this.addLayer(name, { user: 'root', ...config }, (dir) => fillBusybox(dir, busybox));
  }

  /**
   * A template from an OCI image (layout directory, `docker save` tarball, or `docker://`
   * reference): its layers become shared layer directories, its config the template's
   * settings (env, user, workdir, and entrypoint + cmd as the start command).
   */
  async importImage(name: string, source: string, opts: ImportOptions & { config?: Partial<TemplateConfig> } = {}): Promise<Template> {
    this.checkNewName(name, opts.config?.team);
    const { importImage } = await import('./oci-import.js');
    const image = await importImage(source, this.paths.layersDir, opts);
    const command = [...(image.config.entrypoint ?? []), ...(image.config.cmd ?? [])];
    const config: Partial<TemplateConfig> = {
      env: image.config.env,
      user: image.config.user?.split(':')[0] || 'root',
      workdir: image.config.workdir || undefined,
      startCommand: command.length ? command.map(shellQuote).join(' ') : undefined,
      imageDigest: image.digest,
      ...opts.config,
    };
    const row: TemplateRow = { id: randomId(20), name, layers: image.layerIds, config: JSON.stringify(config), createdAt: Date.now() };
    this.insert(row);
    return this.toTemplate(row);
  }

  /** The E2B-style Debian `base` template (user `user`, sudo, bash, python3, git, curl). */
  async addDebianBase(name: string, opts: { cacheDir: string; onProgress?: (line: string) => void; refresh?: boolean }): Promise<Template> {
    this.checkNewName(name);
    const { buildDebianBase } = await import('./debian-base.js');
    return this.addLayer(name, { user: 'user', workdir: '/home/user' }, async (dir) => {
      await buildDebianBase(dir, { cacheDir: opts.cacheDir, onProgress: opts.onProgress, refresh: opts.refresh });
    });
  }

  /** Templates built the first time a create asks for them (serve: code-interpreter-v1), and builds under way. */
  private readonly onDemand = new Map<string, () => Promise<Template>>();
  private readonly building = new Map<string, Promise<Template>>();

  buildOnDemand(name: string, build: () => Promise<Template>): void {
    this.onDemand.set(name, build);
  }

  /**
   * Builds ref if it is missing and has an on-demand build; concurrent callers share one build.
   * Only the public namespace counts: a team's template of that name is not it.
   */
  async ensure(ref: string): Promise<void> {
    const build = this.onDemand.get(ref);
    if (!build || this.find(ref)) return;
    let p = this.building.get(ref);
    if (!p) {
      p = build().finally(() => this.building.delete(ref));
      this.building.set(ref, p);
    }
    await p;
  }

  /** E2B's `code-interpreter-v1`: Jupyter, R and the Python data stack in a layer on `base` (code-interpreter.ts). */
  async addCodeInterpreter(name: string, opts: { cacheDir: string; onProgress?: (line: string) => void }): Promise<Template> {
    const { buildCodeInterpreterLayer, CODE_INTERPRETER_CONFIG } = await import('./code-interpreter.js');
    const base = this.get('base');
    return this.addOnTop(name, base, (dir) => buildCodeInterpreterLayer(dir, base.layers, opts).then(() => undefined), { ...CODE_INTERPRETER_CONFIG });
  }

  /**
   * Deletes a template; refused while sandboxes or child templates (snapshots, builds on
   * it) use it. Its layers go from disk unless another template shares them. ownHolds: holds
   * the caller itself has on it (a fork discarding the layer it just made).
   */
  remove(idOrName: string, ownHolds = 0): void {
    const t = this.get(idOrName);
    if (this.holdCount(t) > ownHolds) throw conflict(`template '${t.name}' is being used by a create or fork in progress; try again`);
    const users = this.store.sandboxesUsingTemplate(t.id);
    if (users > 0) throw conflict(`template '${t.name}' is used by ${users} sandbox(es); delete them first`);
    const children = this.list().filter((o) => o.config.parent === t.id);
    if (children.length) throw conflict(`template '${t.name}' is the parent of ${children.map((c) => `'${c.name}'`).join(', ')}; delete those first`);
    this.store.deleteTemplate(t.id);
    this.generation++;
    const stillUsed = new Set(this.list().flatMap((o) => o.layers));
    for (const l of t.layers) {
      if (stillUsed.has(l)) continue;
      rmSync(l, { recursive: true, force: true });
      rmSync(join(this.paths.dataDir, LAYER_DIGESTS, basename(l)), { force: true }); // its digest, if it was published
    }
    if (t.config.checkpoint) rmSync(checkpointImageDir(this.paths, t.id), { recursive: true, force: true });
  }

  /** A template with exactly a parent's layers and its own settings (a recipe's result). */
  addDerived(name: string, parent: Template, config: Partial<TemplateConfig>, id = randomId(20)): Template {
    const settings = { ...inheritedConfig(parent.config), ...config, parent: parent.id };
    this.checkNewName(name, settings.team);
    const row: TemplateRow = { id, name, layers: parent.layers.map((l) => basename(l)), config: JSON.stringify(settings), createdAt: Date.now() };
    this.insert(row);
    return this.toTemplate(row);
  }

  /**
   * A template made of a new layer on top of a parent's layers (snapshots, build steps).
   * fill() writes the new layer's files into the directory it is given.
   */
  async addOnTop(name: string, parent: Template, fill: (dir: string) => Promise<void>, config: Partial<TemplateConfig> = {}): Promise<Template> {
    return this.addLayer(
      name,
      { ...inheritedConfig(parent.config), ...config, parent: parent.id },
      fill,
      parent.layers.map((l) => basename(l)),
    );
  }

  /**
   * A new name must be free in its namespace: the team's own (a public template's name is
   * reserved, whatever other teams hold) or, without a team, the public one.
   */
  private checkNewName(name: string, team?: string): void {
    if (!NAME_RE.test(name)) throw invalid(`bad template name '${name}': use lowercase letters, digits, '.', '_' and '-' (max 63)`);
    if (team !== undefined && this.reservedForPublic(name)) throw conflict(`'${name}' names a public template: choose another name`);
    if (this.findIn(name, team)) throw conflict(`template '${name}' already exists`);
  }

  /** Inserts a template row; a name taken meanwhile (a concurrent add) is a conflict, not a failure. */
  private insert(row: TemplateRow): void {
    try {
      this.store.insertTemplate(row);
    } catch (err) {
      if ((err as { code?: string }).code === 'SQLITE_CONSTRAINT_UNIQUE') throw conflict(`template '${row.name}' already exists`);
      throw err;
    }
    this.generation++;
  }

  // ---- in use: what a create or fork holds is never removed

  /** Bumped whenever a template is added or removed (a remembered refusal to remove holds until it moves). */
  generation = 0;
  private readonly holds = new Map<string, number>();

  /** Holds a template (by id or name) against removal until the returned release is called. */
  hold(ref: string): () => void {
    this.holds.set(ref, (this.holds.get(ref) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const n = (this.holds.get(ref) ?? 1) - 1;
      if (n > 0) this.holds.set(ref, n);
      else this.holds.delete(ref);
    };
  }

  isHeld(t: Template): boolean {
    return this.holdCount(t) > 0;
  }

  private holdCount(t: Template): number {
    return (this.holds.get(t.id) ?? 0) + (t.name !== t.id ? (this.holds.get(t.name) ?? 0) : 0);
  }

  private async addLayer(name: string, config: Partial<TemplateConfig>, fill: (dir: string) => Promise<void>, below: string[] = []): Promise<Template> {
    this.checkNewName(name, config.team);
    const layerId = randomId(16);
    const tmp = join(this.paths.layersDir, `.tmp-${layerId}`);
    mkdirSync(tmp, { mode: 0o755 });
    try {
      await fill(tmp);
      chmodSync(tmp, 0o755);
      renameSync(tmp, join(this.paths.layersDir, layerId));
    } catch (err) {
      rmSync(tmp, { recursive: true, force: true });
      throw err;
    }
    const row: TemplateRow = { id: randomId(20), name, layers: [layerId, ...below], config: JSON.stringify(config), createdAt: Date.now() };
    try {
      this.insert(row);
    } catch (err) {
      rmSync(join(this.paths.layersDir, layerId), { recursive: true, force: true });
      throw err;
    }
    return this.toTemplate(row);
  }
}
