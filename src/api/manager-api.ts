import type { Readable, Writable } from 'node:stream';
import { buildRecipe, type BuildResult, type Recipe } from '../builder/recipe.js';
import type { NetCounters } from '../network/network.js';
import { egressPolicy, shownSettings, type EgressPolicy, type NetworkSettings } from '../network/policy.js';
import type { CreateRequest, ReconcileReport, SandboxInfo, SandboxManager } from '../sandbox/manager.js';
import { importFromRegistry, type Credentials, type RegistrySettings } from '../template/image-source.js';
import type { Template, TemplateConfig } from '../template/store.js';
import { CubeboxError } from '../util/errors.js';

/**
 * The operations the CLI needs, whether the manager runs in this process or in a
 * running `cubebox serve` reached over the data directory's control socket.
 */
export interface ManagerApi {
  create(req: CreateRequest): Promise<SandboxInfo>;
  list(): Promise<SandboxInfo[]>;
  get(id: string): Promise<SandboxInfo>;
  /** memory: false pauses without memory (resume boots the sandbox again from its disk). */
  pause(id: string, opts?: { memory?: boolean }): Promise<SandboxInfo>;
  resume(id: string): Promise<SandboxInfo>;
  delete(id: string): Promise<void>;
  /** Runs a command, copying its output to the given streams; resolves to its exit code. */
  exec(id: string, args: string[], out: Writable, err: Writable, opts?: ExecOpts): Promise<number>;
  addTemplate(name: string, source: TemplateSource, config?: Partial<TemplateConfig>): Promise<Template>;
  listTemplates(): Promise<Template[]>;
  removeTemplate(name: string): Promise<void>;
  buildRecipe(name: string, recipe: Recipe, contextDir?: string): Promise<BuildResult>;
  tagTemplate(ref: string, what: { alias?: string; tag?: string }): Promise<Template>;
  reconcile(): Promise<ReconcileReport>;
  /** A sandbox's addresses, effective egress policy and counters. */
  network(id: string): Promise<NetworkReport>;
}

export interface NetworkReport {
  sandboxId: string;
  /** false: this service runs sandboxes with loopback only. */
  enabled: boolean;
  address?: string;
  gateway?: string;
  netns?: string;
  hostLink?: string;
  settings: NetworkSettings;
  policy: EgressPolicy;
  counters?: NetCounters;
}

export interface ExecOpts {
  env?: Record<string, string>;
  cwd?: string;
  /** Fed to the command's stdin (closed at its end); without it stdin is empty. */
  stdin?: Readable;
}

export interface TemplateSource {
  image?: string; // an OCI layout, docker save tarball or docker:// reference
  ref?: string; // which image in it
  registry?: Credentials; // for a docker:// image (else the host's own logins)
  dir?: string; // a root filesystem directory or tarball
  busybox?: boolean;
  base?: boolean; // the Debian `base` template
  codeInterpreter?: boolean; // E2B's code-interpreter-v1, on `base`
}

/** The ManagerApi of a manager in this process (the CLI's own, or the one `serve` exposes on its socket). */
export class LocalApi implements ManagerApi {
  constructor(
    readonly manager: SandboxManager,
    /** Where template builds keep what makes rebuilds fast (configuration's cache directory). */
    private readonly opts: { cacheDir: string; registry?: RegistrySettings },
  ) {}
  async create(req: CreateRequest) {
    return this.manager.create(req);
  }
  async list() {
    return this.manager.list();
  }
  async get(id: string) {
    return this.manager.get(id);
  }
  async pause(id: string, opts: { memory?: boolean } = {}) {
    return this.manager.pause(id, opts);
  }
  async resume(id: string) {
    return this.manager.resume(id);
  }
  async delete(id: string) {
    return this.manager.delete(id);
  }
  async exec(id: string, args: string[], out: Writable, err: Writable, opts: ExecOpts = {}) {
    const child = await this.manager.exec(id, args, { stdio: [opts.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'], env: opts.env, cwd: opts.cwd });
    if (opts.stdin) {
      child.stdin!.on('error', () => undefined); // the command may exit without reading it all
      opts.stdin.pipe(child.stdin!);
    }
    child.stdout!.pipe(out, { end: false });
    child.stderr!.pipe(err, { end: false });
    return new Promise<number>((resolve, reject) => {
      child.on('error', reject);
      child.on('close', (code, signal) => resolve(code ?? (signal ? 128 + 9 : 1)));
    });
  }
  async addTemplate(name: string, source: TemplateSource, config?: Partial<TemplateConfig>) {
    if (source.busybox) return this.manager.templates.addBusybox(name);
    if (source.image?.startsWith('docker://')) {
      const onProgress = (line: string) => this.manager.log.info({ template: name }, line);
      return importFromRegistry(this.manager.templates, name, source.image, { credentials: source.registry, settings: this.opts.registry, onProgress });
    }
    if (source.image) {
      return this.manager.templates.importImage(name, source.image, { ref: source.ref, onProgress: (line) => this.manager.log.info({ template: name }, line) });
    }
    if (source.base) {
      return this.manager.templates.addDebianBase(name, {
        cacheDir: this.opts.cacheDir,
        onProgress: (line) => this.manager.log.info({ template: name }, line),
      });
    }
    if (source.codeInterpreter) {
      return this.manager.templates.addCodeInterpreter(name, {
        cacheDir: this.opts.cacheDir,
        onProgress: (line) => this.manager.log.info({ template: name }, line),
      });
    }
    if (!source.dir) throw new CubeboxError('invalid_argument', 'a template needs a rootfs directory or tarball');
    return this.manager.templates.add(name, source.dir, config);
  }
  async listTemplates() {
    return this.manager.templates.list();
  }
  async removeTemplate(name: string) {
    await this.manager.removeTemplate(name);
  }
  async tagTemplate(ref: string, what: { alias?: string; tag?: string }) {
    if (what.alias) return this.manager.templates.addAlias(ref, what.alias);
    if (what.tag) return this.manager.templates.addTag(ref, what.tag);
    throw new CubeboxError('invalid_argument', 'give an alias or a tag');
  }
  async buildRecipe(name: string, recipe: Recipe, contextDir?: string) {
    return buildRecipe(this.manager, name, recipe, { contextDir, onProgress: (line) => this.manager.log.info({ template: name }, line) });
  }
  async reconcile() {
    return this.manager.reconcile();
  }
  async network(id: string): Promise<NetworkReport> {
    const info = this.manager.get(id);
    const net = this.manager.network();
    const lease = net?.lease(id);
    return {
      sandboxId: id,
      enabled: !!net,
      address: lease?.address,
      gateway: lease?.gateway,
      netns: lease?.netns,
      hostLink: lease?.hostLink,
      settings: shownSettings(info.network),
      policy: egressPolicy(info.network),
      counters: await net?.counters(id),
    };
  }
}
