import { existsSync, statSync, unlinkSync } from 'node:fs';
import http from 'node:http';
import type { Readable, Writable } from 'node:stream';
import { resolveCacheDir } from '../config.js';
import { CubeboxError, errorMessage, type ErrorKind } from '../util/errors.js';
import type { Template, TemplateConfig } from '../template/store.js';
import { buildRecipe, type BuildResult, type Recipe } from '../build/recipe.js';
import type { CreateRequest, ReconcileReport, SandboxInfo, SandboxManager } from './manager.js';

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
  dir?: string; // a root filesystem directory or tarball
  busybox?: boolean;
  base?: boolean; // the Debian `base` template
}

export class LocalApi implements ManagerApi {
  constructor(readonly manager: SandboxManager) {}
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
    if (source.image) {
      return this.manager.templates.importImage(name, source.image, { ref: source.ref, onProgress: (line) => this.manager.log.info({ template: name }, line) });
    }
    if (source.base) {
      return this.manager.templates.addDebianBase(name, {
        cacheDir: resolveCacheDir(),
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
}

const STATUS: Record<ErrorKind, number> = { not_found: 404, invalid_argument: 400, conflict: 409, unavailable: 503, internal: 500 };

/** Serves a LocalApi on the data directory's unix socket (root-only: the socket is 0600). */
export class ControlServer {
  private server: http.Server | undefined;

  constructor(
    private readonly api: LocalApi,
    private readonly socketPath: string,
  ) {}

  async listen(): Promise<void> {
    // We hold the manager lock, so a socket file left here belongs to a dead manager.
    if (existsSync(this.socketPath)) unlinkSync(this.socketPath);
    this.server = http.createServer((req, res) => void this.handle(req, res));
    // Node never narrows a socket's mode (readableAll: false only skips widening it), so
    // bind(2) would make it 0777 & ~umask. The umask covers the bind itself, which listen()
    // does synchronously here, so there is no moment when the socket is wider than 0600.
    const umask = process.umask(0o177);
    try {
      await new Promise<void>((resolve, reject) => {
        this.server!.once('error', reject);
        this.server!.listen({ path: this.socketPath }, () => resolve());
        process.umask(umask);
      });
    } finally {
      process.umask(umask);
    }
    const mode = statSync(this.socketPath).mode & 0o777;
    if (mode !== 0o600) throw new Error(`control socket ${this.socketPath} has mode ${mode.toString(8)}, not 600`);
  }

  /** Stops listening; in-flight requests finish first unless `abort` (then open streams are cut). */
  async close(abort = false): Promise<void> {
    if (!this.server) return;
    const closed = new Promise<void>((r) => this.server!.close(() => r()));
    if (abort) this.server.closeAllConnections();
    else this.server.closeIdleConnections();
    await closed;
    try {
      unlinkSync(this.socketPath);
    } catch {
      /* already gone */
    }
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    try {
      const url = new URL(req.url ?? '/', 'http://cubebox');
      const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
      const m = req.method ?? 'GET';
      // exec: the command comes in a header, the request body is its stdin
      if (parts[0] === 'sandboxes' && parts[1] && parts[2] === 'exec' && m === 'POST') return await this.exec(parts[1], req, res);
      const body = await readJson(req);
      const send = (status: number, value: unknown) => {
        res.writeHead(status, { 'content-type': 'application/json' });
        res.end(value === undefined ? '' : JSON.stringify(value));
      };
      const [a, id, op] = parts;
      if (a === 'sandboxes') {
        if (!id && m === 'GET') return send(200, await this.api.list());
        if (!id && m === 'POST') return send(201, await this.api.create(body as unknown as CreateRequest));
        if (id && !op && m === 'GET') return send(200, await this.api.get(id));
        if (id && !op && m === 'DELETE') return send(204, await this.api.delete(id));
        if (id && op === 'pause' && m === 'POST') return send(200, await this.api.pause(id, { memory: (body as { memory?: unknown }).memory !== false }));
        if (id && op === 'resume' && m === 'POST') return send(200, await this.api.resume(id));
      }
      if (a === 'templates') {
        if (!id && m === 'GET') return send(200, await this.api.listTemplates());
        if (!id && m === 'POST') {
          const b = body as unknown as { name: string; config?: Partial<TemplateConfig> } & TemplateSource;
          return send(201, await this.api.addTemplate(b.name, { dir: b.dir, busybox: b.busybox, base: b.base, image: b.image, ref: b.ref }, b.config));
        }
        if (id === 'build' && m === 'POST') {
          const b = body as { name: string; recipe: Recipe; contextDir?: string };
          return send(201, await this.api.buildRecipe(b.name, b.recipe, b.contextDir));
        }
        if (id && op === 'names' && m === 'POST') return send(200, await this.api.tagTemplate(id, body as { alias?: string; tag?: string }));
        if (id && m === 'DELETE') return send(204, await this.api.removeTemplate(id));
      }
      if (a === 'reconcile' && m === 'POST') return send(200, await this.api.reconcile());
      send(404, { kind: 'not_found', message: `no route ${m} ${url.pathname}` });
    } catch (err) {
      if (res.headersSent) {
        res.destroy();
        return;
      }
      const kind: ErrorKind = err instanceof CubeboxError ? err.kind : 'internal';
      res.writeHead(STATUS[kind], { 'content-type': 'application/json' });
      res.end(JSON.stringify({ kind, message: errorMessage(err) }));
    }
  }

  /** Streams a command's output as NDJSON frames: {o: base64} / {e: base64}, then {exit}. */
  private async exec(id: string, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    let spec: { args?: string[]; env?: Record<string, string>; cwd?: string };
    try {
      spec = JSON.parse(Buffer.from(String(req.headers['x-cubebox-exec'] ?? ''), 'base64').toString('utf8')) as typeof spec;
    } catch {
      throw new CubeboxError('invalid_argument', 'exec needs its command in the x-cubebox-exec header');
    }
    const child = await this.api.manager.exec(id, spec.args ?? [], { stdio: ['pipe', 'pipe', 'pipe'], env: spec.env, cwd: spec.cwd });
    child.stdin!.on('error', () => undefined); // the command may exit without reading it all
    req.pipe(child.stdin!);
    res.writeHead(200, { 'content-type': 'application/x-ndjson' });
    child.stdout!.on('data', (d: Buffer) => res.write(JSON.stringify({ o: d.toString('base64') }) + '\n'));
    child.stderr!.on('data', (d: Buffer) => res.write(JSON.stringify({ e: d.toString('base64') }) + '\n'));
    res.on('close', () => {
      if (child.exitCode === null) child.kill('SIGKILL'); // the runtime exec process, which we spawned
    });
    const code = await new Promise<number>((resolve) => child.on('close', (c, s) => resolve(c ?? (s ? 137 : 1))));
    res.end(JSON.stringify({ exit: code }) + '\n');
  }
}

async function readJson(req: http.IncomingMessage): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  if (!chunks.length) return {};
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8')) as Record<string, unknown>;
  } catch {
    throw new CubeboxError('invalid_argument', 'request body is not valid JSON');
  }
}

/** A ManagerApi that talks to a running manager over its control socket. */
export class RemoteApi implements ManagerApi {
  constructor(private readonly socketPath: string) {}

  /** Whether a manager answers on the socket. */
  static async reachable(socketPath: string): Promise<boolean> {
    if (!existsSync(socketPath)) return false;
    return new Promise((resolve) => {
      const req = http.request({ socketPath, path: '/sandboxes', method: 'HEAD', timeout: 2000 }, (res) => {
        res.resume();
        resolve(true);
      });
      req.on('error', () => resolve(false));
      req.on('timeout', () => {
        req.destroy();
        resolve(false);
      });
      req.end();
    });
  }

  private request(method: string, path: string, body?: unknown, headers: Record<string, string> = {}, stream?: Readable): Promise<http.IncomingMessage> {
    return new Promise((resolve, reject) => {
      const req = http.request({ socketPath: this.socketPath, path, method, headers: { 'content-type': 'application/json', ...headers } }, resolve);
      req.on('error', (e) => {
        const code = (e as NodeJS.ErrnoException).code ?? '';
        // refused, missing or reset before an answer: the manager went away and never saw the request
        const err = new CubeboxError('unavailable', `cannot reach the cubebox manager: ${e.message}`);
        if (['ECONNREFUSED', 'ENOENT', 'ECONNRESET'].includes(code) || e.message === 'socket hang up') (err as { retryable?: boolean }).retryable = true;
        reject(err);
      });
      if (stream) stream.pipe(req);
      else req.end(body === undefined ? undefined : JSON.stringify(body));
    });
  }

  private async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const res = await this.request(method, path, body);
    const chunks: Buffer[] = [];
    for await (const c of res) chunks.push(c as Buffer);
    const text = Buffer.concat(chunks).toString('utf8');
    if ((res.statusCode ?? 500) >= 400) {
      const e = (text ? JSON.parse(text) : {}) as { kind?: ErrorKind; message?: string };
      throw new CubeboxError(e.kind ?? 'internal', e.message ?? `manager answered ${res.statusCode}`);
    }
    return (text ? JSON.parse(text) : undefined) as T;
  }

  create(req: CreateRequest) {
    return this.call<SandboxInfo>('POST', '/sandboxes', req);
  }
  list() {
    return this.call<SandboxInfo[]>('GET', '/sandboxes');
  }
  get(id: string) {
    return this.call<SandboxInfo>('GET', `/sandboxes/${encodeURIComponent(id)}`);
  }
  pause(id: string, opts: { memory?: boolean } = {}) {
    return this.call<SandboxInfo>('POST', `/sandboxes/${encodeURIComponent(id)}/pause`, opts);
  }
  resume(id: string) {
    return this.call<SandboxInfo>('POST', `/sandboxes/${encodeURIComponent(id)}/resume`);
  }
  delete(id: string) {
    return this.call<void>('DELETE', `/sandboxes/${encodeURIComponent(id)}`);
  }
  async exec(id: string, args: string[], out: Writable, err: Writable, opts: ExecOpts = {}) {
    const header = Buffer.from(JSON.stringify({ args, env: opts.env, cwd: opts.cwd })).toString('base64');
    const res = await this.request('POST', `/sandboxes/${encodeURIComponent(id)}/exec`, undefined, { 'x-cubebox-exec': header }, opts.stdin);
    if ((res.statusCode ?? 500) >= 400) {
      const chunks: Buffer[] = [];
      for await (const c of res) chunks.push(c as Buffer);
      const e = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}') as { kind?: ErrorKind; message?: string };
      throw new CubeboxError(e.kind ?? 'internal', e.message ?? `manager answered ${res.statusCode}`);
    }
    let buf = '';
    let exit: number | undefined;
    for await (const c of res) {
      buf += (c as Buffer).toString('utf8');
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const frame = JSON.parse(buf.slice(0, nl)) as { o?: string; e?: string; exit?: number };
        buf = buf.slice(nl + 1);
        if (frame.o) out.write(Buffer.from(frame.o, 'base64'));
        if (frame.e) err.write(Buffer.from(frame.e, 'base64'));
        if (frame.exit !== undefined) exit = frame.exit;
      }
    }
    if (exit === undefined) throw new CubeboxError('unavailable', 'the manager closed the exec stream before the command ended');
    return exit;
  }
  addTemplate(name: string, source: TemplateSource, config?: Partial<TemplateConfig>) {
    return this.call<Template>('POST', '/templates', { name, ...source, config });
  }
  listTemplates() {
    return this.call<Template[]>('GET', '/templates');
  }
  removeTemplate(name: string) {
    return this.call<void>('DELETE', `/templates/${encodeURIComponent(name)}`);
  }
  tagTemplate(ref: string, what: { alias?: string; tag?: string }) {
    return this.call<Template>('POST', `/templates/${encodeURIComponent(ref)}/names`, what);
  }
  buildRecipe(name: string, recipe: Recipe, contextDir?: string) {
    return this.call<BuildResult>('POST', '/templates/build', { name, recipe, contextDir });
  }
  reconcile() {
    return this.call<ReconcileReport>('POST', '/reconcile');
  }
}
