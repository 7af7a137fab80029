// Contexts: a kernel with its own language and working directory. Executions in one context
// run one at a time in arrival order; contexts run in parallel. Sandbox-level env vars come
// from envd (GET /envs) the first time a context runs code; per-run env vars are set before
// the run and put back after it, both as silent helper executions.
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import { JupyterKernel, type JupyterServer } from './jupyter.js';
import type { Emit, Kernel, OutEvent } from './kernel.js';
import { availableLanguages, cwdCode, envCode, isAvailableLanguage, JUPYTER_KERNELS } from './languages.js';
import { BashKernel, JavaKernel, NodeKernel } from './process-kernel.js';

export const DEFAULT_CWD = '/home/user';
/**
 * Contexts a sandbox may hold at once (each is a kernel process, 50-150 MB), defaults
 * included: more would let the kernels exhaust the sandbox's memory.
 */
export const MAX_CONTEXTS = Math.max(2, Number(process.env.CUBEBOX_INTERPRETER_MAX_CONTEXTS) || 12);
const ENVD_SOCKET = '/.cubebox/run/envd.sock';
const STARTUP = `exec(open('/.cubebox/interpreter/startup.py').read())`;

export class Context {
  /** Sandbox-level env vars, once fetched. */
  globals: Record<string, string> | undefined;
  private tail: Promise<void> = Promise.resolve();

  constructor(
    readonly id: string,
    readonly language: string,
    readonly cwd: string,
    readonly kernel: Kernel,
  ) {}

  /** Runs fn once every earlier holder of this context is done. */
  async exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const before = this.tail;
    let release!: () => void;
    this.tail = new Promise((r) => (release = r));
    await before;
    try {
      return await fn();
    } finally {
      release();
    }
  }

  toJSON(): { id: string; language: string; cwd: string } {
    return { id: this.id, language: this.language, cwd: this.cwd };
  }
}

/** A context the server will not create: the status and message the caller gets. */
export class ContextRefused extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/** Shared with the request: whether its client went away, whether its code is running. */
export interface RunState {
  cancelled: boolean;
  running: boolean;
}

export class Contexts {
  private readonly all = new Map<string, Context>();
  private readonly defaults = new Map<string, Promise<Context>>();
  /** Kernels being started: they count against the bound before they are listed. */
  private starting = 0;

  constructor(
    private readonly jupyter: JupyterServer,
    private readonly env: NodeJS.ProcessEnv,
    private readonly commands: { node: string[]; java: string[] },
  ) {}

  list(): Context[] {
    return [...this.all.values()];
  }

  get(id: string): Context | undefined {
    return this.all.get(id);
  }

  /** The default context of a language, created on first use (one creation at a time). */
  defaultFor(language: string): Promise<Context> {
    let p = this.defaults.get(language);
    if (!p) {
      p = this.create(language, DEFAULT_CWD);
      this.defaults.set(language, p);
      p.catch(() => this.defaults.delete(language));
    }
    return p;
  }

  /** A new context; refused (ContextRefused) for a language this sandbox lacks or past the bound. */
  async create(language: string, cwd: string): Promise<Context> {
    if (!isAvailableLanguage(language))
      throw new ContextRefused(400, `Unsupported language '${language}': this sandbox runs ${availableLanguages().join(', ')}`);
    if (this.all.size + this.starting >= MAX_CONTEXTS)
      throw new ContextRefused(429, `Too many contexts: a sandbox holds at most ${MAX_CONTEXTS}; remove one (DELETE /contexts/{id}) first`);
    this.starting++;
    try {
      const { id, kernel } = await this.startKernel(language);
      const ctx = new Context(id, language, cwd, kernel);
      const failed = await this.setUp(language, cwd, kernel);
      this.all.set(id, ctx);
      if (failed) throw new Error(`Failed to set working directory: ${failed}`);
      return ctx;
    } finally {
      this.starting--;
    }
  }

  private async startKernel(language: string): Promise<{ id: string; kernel: Kernel }> {
    if (language === 'python' || language === 'python3' || language === 'r') {
      const k = await this.jupyter.startKernel(JUPYTER_KERNELS[language]!);
      return { id: k.id, kernel: k };
    }
    const k =
      language === 'bash'
        ? new BashKernel(this.env)
        : language === 'java'
          ? new JavaKernel(this.env, this.commands.java)
          : new NodeKernel(this.env, this.commands.node, language === 'typescript');
    await k.start();
    return { id: randomUUID(), kernel: k };
  }

  /** A new kernel's helpers (Python) and working directory; returns the cwd error, if any. */
  private async setUp(language: string, cwd: string, kernel: Kernel): Promise<string> {
    // a failing helper leaves the context usable, without its extra formats: said in the console log
    const report = (e: OutEvent) => e.type === 'error' && process.stderr.write(`code-interpreter: python helpers failed: ${e.name}: ${e.value}\n`);
    if (language === 'python') await kernel.execute(STARTUP, report, { silent: true });
    let failed = '';
    await kernel.execute(cwdCode(language, cwd), (e) => e.type === 'error' && (failed = e.value), { silent: true });
    return failed;
  }

  async remove(ctx: Context): Promise<void> {
    this.all.delete(ctx.id);
    for (const [lang, p] of this.defaults) if ((await p.catch(() => undefined)) === ctx) this.defaults.delete(lang);
    await ctx.kernel.shutdown();
  }

  async restart(ctx: Context): Promise<void> {
    await ctx.exclusive(async () => {
      await ctx.kernel.restart();
      ctx.globals = undefined;
      await this.setUp(ctx.language, ctx.cwd, ctx.kernel);
    });
  }

  /**
   * Runs code in a context once it is free: its env vars first, the code, then the per-run
   * vars put back. A run whose client went away while it waited does not start.
   */
  async run(ctx: Context, code: string, envVars: Record<string, string>, accessToken: string | undefined, emit: Emit, state: RunState): Promise<void> {
    await ctx.exclusive(async () => {
      if (state.cancelled) return;
      const silent = () => undefined;
      if (ctx.kernel instanceof JupyterKernel && ctx.kernel.restarted) {
        await ctx.kernel.recover();
        await this.setUp(ctx.language, ctx.cwd, ctx.kernel);
        ctx.globals = undefined;
      }
      if (!ctx.globals) {
        ctx.globals = await fetchEnvs(accessToken);
        await ctx.kernel.execute(envCode(ctx.language, ctx.globals), silent, { silent: true });
      }
      if (Object.keys(envVars).length) await ctx.kernel.execute(envCode(ctx.language, envVars), silent, { silent: true });
      state.running = true;
      await ctx.kernel.execute(code, emit);
      state.running = false;
      if (Object.keys(envVars).length) {
        const back = Object.fromEntries(Object.keys(envVars).map((k) => [k, ctx.globals?.[k] ?? null]));
        await ctx.kernel.execute(envCode(ctx.language, back), silent, { silent: true });
      }
    });
  }
}

/** The sandbox's env vars from envd, with the caller's access token; {} if envd cannot say. */
async function fetchEnvs(token: string | undefined): Promise<Record<string, string>> {
  return (await envdEnvs(token)).envs;
}

/**
 * Whether token is the sandbox's envd access token, as envd judges it (a sandbox created
 * with `secure: false` has none, and every caller passes). The SDK sends it on /execute.
 */
export async function accessAllowed(token: string | undefined): Promise<boolean> {
  if (token && accepted.has(token)) return true;
  const { status } = await envdEnvs(token);
  const ok = status !== 401 && status !== 403;
  // a sandbox keeps its token (pause and resume included): one check per token; no token
  // is checked every time (a pooled sandbox gets its token only when it is handed out)
  if (ok && token && accepted.size < 16) accepted.add(token);
  return ok;
}
const accepted = new Set<string>();

function envdEnvs(token: string | undefined): Promise<{ status: number; envs: Record<string, string> }> {
  return new Promise((resolve) => {
    const headers = token ? { 'x-access-token': token } : {};
    const req = http.get({ socketPath: ENVD_SOCKET, path: '/envs', headers, timeout: 5000 }, (res) => {
      const status = res.statusCode ?? 0;
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => {
        body += d;
        if (body.length > 1 << 20) req.destroy();
      });
      res.on('end', () => {
        try {
          const v = JSON.parse(body) as unknown;
          if (status === 200 && v && typeof v === 'object' && !Array.isArray(v)) {
            const envs = Object.fromEntries(Object.entries(v).filter(([, x]) => typeof x === 'string')) as Record<string, string>;
            return resolve({ status, envs });
          }
        } catch {
          /* below */
        }
        resolve({ status, envs: {} });
      });
    });
    req.on('error', () => resolve({ status: 0, envs: {} }));
    req.on('timeout', () => req.destroy());
  });
}
