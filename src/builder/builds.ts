// Template builds as E2B's build API runs them: requested (a template id and build id), started
// with the steps, queued per team (bounded), run one at a time per team in build sandboxes with
// the requested CPUs and memory and a time limit, their log lines and outcome kept in the store.
// A build ends with the template made (or built again in place, same id) or with nothing left.
import { randomUUID } from 'node:crypto';
import { basename } from 'node:path';
import type { SandboxManager } from '../sandbox/manager.js';
import type { BuildLogRow, BuildRow, TemplateBuildRepo } from '../store/store.js';
import type { BaseImageRequest } from '../template/image-source.js';
import { PUBLIC_TEMPLATE_NAMES, type Template, type TemplateConfig } from '../template/store.js';
import { CubeboxError, conflict, errorMessage, invalid, notFound } from '../util/errors.js';
import { NAME_RE, randomId } from '../util/ids.js';
import { buildLayers, removeLayers, StepFailure, type LogLevel } from './build.js';
import { baseOf, compileSteps, type E2BBuildRequest } from './e2b-steps.js';
import type { BuildStep } from './steps.js';
import type { BuildFiles } from './uploads.js';

export interface BuildLimits {
  /** Builds of one team waiting or running at once; past it a start is refused (429). */
  maxQueuedPerTeam: number;
  /** Builds running at once on the node. */
  maxRunning: number;
  /** A whole build's time limit. */
  buildTimeoutMs: number;
  /** How long a start command may take to get ready. */
  readyTimeoutMs: number;
  /** Log lines kept per build. */
  maxLogLines: number;
}

export const DEFAULT_BUILD_LIMITS: BuildLimits = {
  maxQueuedPerTeam: 4,
  maxRunning: 2,
  buildTimeoutMs: 30 * 60_000,
  readyTimeoutMs: 120_000,
  maxLogLines: 10_000,
};

export interface BuildRequest {
  name: string;
  tags?: string[];
  cpuCount?: number;
  memoryMB?: number;
}

interface Queued {
  row: BuildRow;
  steps: BuildStep[];
  req: E2BBuildRequest;
}

/** The build metadata key of build sandboxes (a restart removes those of interrupted builds). */
export const BUILD_META = 'cubebox.build';

export class TemplateBuilds {
  private readonly queue: Queued[] = [];
  private readonly running = new Map<string, AbortController>(); // build id
  private readonly logCount = new Map<string, number>();
  private closed = false;

  constructor(
    private readonly manager: SandboxManager,
    readonly files: BuildFiles,
    private readonly baseImage: (req: BaseImageRequest) => Promise<Template>,
    private readonly limits: BuildLimits = DEFAULT_BUILD_LIMITS,
  ) {}

  private get repo(): TemplateBuildRepo {
    return this.manager.store.builds;
  }

  /** After a restart: builds that were under way failed, and their sandboxes go. */
  async recover(): Promise<void> {
    const cut = this.repo.inStatus(['waiting', 'building']);
    for (const b of cut) {
      this.log(b.id, 'error', 'the build was interrupted by a restart of the service');
      this.repo.setStatus(b.id, 'error', { reason: 'interrupted by a restart of the service', finishedAt: Date.now() });
    }
    const ids = new Set(cut.map((b) => b.id));
    for (const s of this.manager.list()) {
      const b = s.metadata?.[BUILD_META];
      if (b && (ids.has(b) || !this.running.has(b))) await this.manager.delete(s.id).catch(() => undefined);
    }
  }

  /** POST /v3/templates: a build of the name in the team (a new template, or the team's template of that name again). */
  request(team: string, req: BuildRequest): { templateID: string; buildID: string; names: string[]; tags: string[]; public: boolean } {
    let name = req.name;
    const tags = [...(req.tags ?? [])];
    const colon = name.indexOf(':');
    if (colon > 0) {
      tags.push(name.slice(colon + 1));
      name = name.slice(0, colon);
    }
    if (!NAME_RE.test(name)) throw invalid(`bad template name '${name}': use lowercase letters, digits, '.', '_' and '-' (max 63)`);
    for (const t of tags) if (!NAME_RE.test(t)) throw invalid(`bad tag '${t}'`);
    const existing = this.manager.templates.find(name, team);
    if (existing && existing.config.team !== team) throw conflict(`'${name}' names a public template: choose another name`);
    if (!existing && PUBLIC_TEMPLATE_NAMES.includes(name)) throw conflict(`'${name}' names a public template: choose another name`);
    if (existing && (existing.config.snapshotOf || existing.config.buildStep)) throw conflict(`'${name}' names a snapshot of the team: choose another name`);
    const mine = this.repo.inStatus(['waiting', 'building']).filter((b) => b.team === team && b.name === name);
    if (mine.some((b) => this.isActive(b.id))) throw conflict(`template '${name}' is being built: wait for that build to finish`);
    for (const b of mine) this.repo.setStatus(b.id, 'error', { reason: 'superseded by a newer build request', finishedAt: Date.now() });
    const row: BuildRow = {
      id: randomUUID(),
      templateId: existing?.id ?? mine[0]?.templateId ?? randomId(20),
      name,
      team,
      status: 'waiting',
      config: JSON.stringify({ cpuCount: req.cpuCount, memoryMB: req.memoryMB, tags }),
      reason: null,
      failedStep: null,
      createdAt: Date.now(),
      updatedAt: Date.now(),
      finishedAt: null,
    };
    this.repo.insert(row);
    return { templateID: row.templateId, buildID: row.id, names: [name], tags, public: false };
  }

  private isActive(id: string): boolean {
    return this.running.has(id) || this.queue.some((q) => q.row.id === id);
  }

  /** A build the caller's team may see (admins: any); 404 otherwise. templateRef: its template's id or name. */
  get(buildId: string, templateRef: string, team: string, admin: boolean): BuildRow {
    const b = this.repo.get(buildId);
    if (!b || (!admin && b.team !== team) || (templateRef !== b.templateId && templateRef !== b.name)) {
      throw notFound(`build '${buildId}' of template '${templateRef}' not found`);
    }
    return b;
  }

  /** POST /v2/templates/{id}/builds/{buildID}: checks the request, then queues it (429 past the team's bound). */
  start(b: BuildRow, req: E2BBuildRequest): void {
    if (this.closed) throw new CubeboxError('unavailable', 'the service is shutting down');
    if (b.status !== 'waiting' || this.isActive(b.id)) throw conflict(`build '${b.id}' was started already`);
    const base = baseOf(req);
    if ('template' in base) this.baseTemplate(base.template, b.team); // a missing one is a 400 now, not a failed build
    const steps = compileSteps(req, (hash) => this.files.source(b.team, hash));
    const queued = this.queue.filter((q) => q.row.team === b.team).length + [...this.running.keys()].filter((id) => this.repo.get(id)?.team === b.team).length;
    if (queued >= this.limits.maxQueuedPerTeam) {
      throw new CubeboxError(
        'busy',
        `the team has ${queued} builds waiting or running (at most ${this.limits.maxQueuedPerTeam}): try again when one has finished`,
        {
          retryAfterSec: 10,
        },
      );
    }
    this.queue.push({ row: b, steps, req });
    this.log(b.id, 'info', `build queued (${steps.length} steps)`);
    this.pump();
  }

  /** The template a build starts from: a public one or the team's own, by name or id. */
  private baseTemplate(ref: string, team: string): Template {
    const t = this.manager.templates.find(ref, team);
    const usable = t && !t.config.buildStep && !t.config.ephemeral && (t.config.team === undefined ? !t.config.snapshotOf : t.config.team === team);
    if (!t || !usable) throw invalid(`fromTemplate: template '${ref}' not found`);
    return t;
  }

  private pump(): void {
    while (this.running.size < this.limits.maxRunning) {
      const busyTeams = new Set([...this.running.keys()].map((id) => this.repo.get(id)?.team));
      const i = this.queue.findIndex((q) => !busyTeams.has(q.row.team));
      if (i < 0) return;
      const [next] = this.queue.splice(i, 1);
      const ctl = new AbortController();
      this.running.set(next!.row.id, ctl);
      void this.run(next!, ctl).finally(() => {
        this.running.delete(next!.row.id);
        this.logCount.delete(next!.row.id);
        this.pump();
      });
    }
  }

  private async run(q: Queued, ctl: AbortController): Promise<void> {
    const { row } = q;
    const started = Date.now();
    const timer = setTimeout(
      () => ctl.abort(new Error(`the build took longer than ${Math.round(this.limits.buildTimeoutMs / 1000)} s`)),
      this.limits.buildTimeoutMs,
    );
    this.repo.setStatus(row.id, 'building');
    const log = (level: LogLevel, message: string, step?: string) => this.log(row.id, level, message, step);
    const cfg = JSON.parse(row.config) as { cpuCount?: number; memoryMB?: number; tags?: string[] };
    let made: Template[] = [];
    try {
      const base = baseOf(q.req);
      let from: Template;
      if ('template' in base) {
        from = this.baseTemplate(base.template, row.team);
        if (from.name === 'code-interpreter-v1') await this.manager.templates.ensure(from.name);
      } else {
        log('info', `[base] ${base.image}`, 'base');
        from = await this.baseImage({
          image: base.image,
          registry: base.registry,
          team: row.team,
          onLog: (l) => log('info', l, 'base'),
          signal: ctl.signal,
        }).catch((err: unknown) => {
          throw new StepFailure('base', `the base image '${base.image}' could not be used: ${errorMessage(err)}`);
        });
      }
      log('info', `[base] from template '${from.name}'`, 'base');
      const limits = { cpuCount: cfg.cpuCount, memoryMB: cfg.memoryMB };
      const r = await buildLayers(this.manager, {
        from,
        steps: q.steps,
        team: row.team,
        limits,
        force: q.req.force === true,
        signal: ctl.signal,
        metadata: { [BUILD_META]: row.id, 'cubebox.build-name': row.name },
        readyTimeoutMs: this.limits.readyTimeoutMs,
        log,
      });
      made = r.made;
      const config = {
        ...r.settings,
        team: row.team,
        ...(cfg.cpuCount ? { cpuCount: cfg.cpuCount } : {}),
        ...(cfg.memoryMB ? { memoryMB: cfg.memoryMB } : {}),
      };
      const t = this.manager.templates.find(row.templateId)
        ? this.rebuild(row.templateId, r.top, config)
        : this.manager.templates.addDerived(row.name, r.top, config, row.templateId);
      for (const tag of cfg.tags ?? []) this.manager.templates.addTag(t.id, tag);
      log('info', `[finalize] template '${row.name}' built in ${((Date.now() - started) / 1000).toFixed(1)} s`, 'finalize');
      if (this.manager.templates.publisher) {
        // in a cluster: ready once every node can use it (a failure leaves it on this node, published again later)
        const t0 = Date.now();
        await this.manager.templates.share(this.manager.templates.get(t.id)).then(
          () => log('info', `[finalize] published to the cluster's template registry in ${((Date.now() - t0) / 1000).toFixed(1)} s`, 'finalize'),
          (err: unknown) => log('warn', `[finalize] not published to the cluster's template registry yet: ${errorMessage(err)}`, 'finalize'),
        );
      }
      this.repo.setStatus(row.id, 'ready', { finishedAt: Date.now() });
    } catch (err) {
      removeLayers(this.manager, made, log);
      const aborted = ctl.signal.aborted ? errorMessage(ctl.signal.reason) : undefined;
      const message = aborted ?? errorMessage(err);
      const step = err instanceof StepFailure ? err.step : undefined;
      log('error', `build failed: ${message}`, step);
      this.repo.setStatus(row.id, 'error', { reason: message, failedStep: step ?? null, finishedAt: Date.now() });
    } finally {
      clearTimeout(timer);
    }
  }

  /** The template built again in place (same id, names, tags and public flag): the new layers and settings. */
  private rebuild(id: string, top: Template, config: Partial<TemplateConfig>): Template {
    const old = this.manager.templates.get(id).config;
    const {
      cacheKey: _k,
      buildStep: _b,
      snapshotOf: _s,
      takenAt: _t,
      ephemeral: _e,
      aliases: _a,
      tags: _g,
      tagsAt: _ta,
      public: _p,
      ...inherited
    } = top.config;
    const settings = { ...inherited, ...config, parent: top.id, aliases: old.aliases, tags: old.tags, tagsAt: old.tagsAt, team: old.team, public: old.public };
    this.manager.store.replaceTemplate(
      id,
      top.layers.map((l) => basename(l)),
      JSON.stringify(settings),
    );
    return this.manager.templates.get(id);
  }

  /** Appends a log line (bounded per build). */
  log(id: string, level: LogLevel, message: string, step?: string): void {
    const n = (this.logCount.get(id) ?? 0) + 1;
    this.logCount.set(id, n);
    if (n > this.limits.maxLogLines) {
      if (n === this.limits.maxLogLines + 1)
        this.repo.log(id, { at: Date.now(), level: 'warn', step: step ?? null, message: 'further log lines of this build are dropped' });
      if (level !== 'error') return;
    }
    this.repo.log(id, { at: Date.now(), level, step: step ?? null, message: message.slice(0, 8192) });
  }

  /** The build's row as it is now. */
  current(b: BuildRow): BuildRow {
    return this.repo.get(b.id) ?? b;
  }

  /** Whether the template id is the team's: its own template, or one a build of the team announced. */
  ownsTemplate(templateId: string, team: string): boolean {
    const t = this.manager.templates.find(templateId);
    if (t && t.id === templateId) return t.config.team === team;
    return this.repo.ofTemplate(templateId).some((b) => b.team === team);
  }

  /** The template's builds the caller's team may see (admins: every one), newest first. */
  ofTemplate(templateId: string, team: string, admin: boolean): BuildRow[] {
    return this.repo.ofTemplate(templateId).filter((b) => admin || b.team === team);
  }

  /** The build's log lines from offset on (at most limit). */
  logs(b: BuildRow, offset: number, limit: number): BuildLogRow[] {
    return this.repo.logs(b.id, offset, limit);
  }

  /** E2B's public flag of a team's template: other teams may then start sandboxes of it by id. */
  setPublic(t: Template, value: boolean): Template {
    return this.manager.templates.updateConfig(t, { public: value });
  }

  /** Stops taking builds and ends those under way (they fail; their sandboxes go). */
  async close(): Promise<void> {
    this.closed = true;
    for (const q of this.queue.splice(0)) this.repo.setStatus(q.row.id, 'error', { reason: 'the service stopped', finishedAt: Date.now() });
    for (const ctl of this.running.values()) ctl.abort(new Error('the service stopped'));
  }
}
