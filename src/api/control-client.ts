import http from 'node:http';
import { existsSync } from 'node:fs';
import type { Readable, Writable } from 'node:stream';
import type { BuildResult, Recipe } from '../builder/recipe.js';
import type { CreateRequest, ReconcileReport, SandboxInfo } from '../sandbox/manager.js';
import type { Template, TemplateConfig } from '../template/store.js';
import { CubeboxError, type ErrorKind } from '../util/errors.js';
import type { ExecOpts, ManagerApi, NetworkReport, TemplateSource } from './manager-api.js';

/** The header that carries an exec's command as base64 JSON (its body is the command's stdin). */
export const EXEC_HEADER = 'x-cubebox-exec';

// The client side of the control socket (control-socket.ts): how the CLI reaches a running
// `cubebox serve`. Plain node:http; exec streams stdin up and NDJSON frames down.

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
    const res = await this.request('POST', `/sandboxes/${encodeURIComponent(id)}/exec`, undefined, { [EXEC_HEADER]: header }, opts.stdin);
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
  network(id: string) {
    return this.call<NetworkReport>('GET', `/sandboxes/${encodeURIComponent(id)}/network`);
  }
}
