/**
 * The code-interpreter server inside a `code-interpreter-v1` sandbox, on port 49999: the HTTP
 * API @e2b/code-interpreter speaks (POST /execute streaming NDJSON, /contexts, /health; see
 * ../shared/docs/code-interpreter-contract.md). It starts Jupyter Server (Python and R
 * kernels, through Jupyter's REST and WebSocket APIs) and runs JavaScript/TypeScript in its
 * own Node kernel, Java in the JDK's JShell and bash in a persistent shell. Every route but
 * /health takes the sandbox's envd access token (X-Access-Token), as envd's own do. It runs
 * as the sandbox's root, with the node of the support tree (/.cubebox), like envd; everything
 * it is sent is the sandbox user's own.
 */
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import { accessAllowed, ContextRefused, Contexts, DEFAULT_CWD, type Context } from './contexts.js';
import { JupyterServer } from './jupyter.js';
import { errorEvent, type OutEvent } from './kernel.js';
import { normalizeLanguage } from './languages.js';
import { encodeEvent } from './results.js';

const PORT = Number(process.env.CUBEBOX_INTERPRETER_PORT ?? 49999);
const MAX_BODY = 32 << 20;
const KEEPALIVE_MS = 5000;
const SUPPORT = '/.cubebox';

const log = (msg: string) => process.stderr.write(`code-interpreter: ${msg}\n`);

// What kernels inherit: the sandbox's usual environment, never the server's own settings.
const kernelEnv: NodeJS.ProcessEnv = {
  PATH: process.env.PATH ?? '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
  HOME: process.env.HOME ?? '/root',
  LANG: 'C.UTF-8',
  LC_ALL: 'C.UTF-8',
  JPY_PARENT_PID: undefined,
  PYDEVD_DISABLE_FILE_VALIDATION: '1',
};
for (const k of Object.keys(kernelEnv)) if (kernelEnv[k] === undefined) delete kernelEnv[k];
const nodeCommand = [`${SUPPORT}/lib/ld.so`, '--library-path', `${SUPPORT}/lib`, `${SUPPORT}/bin/node`, `${SUPPORT}/interpreter/js-kernel.mjs`];

// C1 only and the serial collector: a JShell kernel starts in seconds and holds less memory.
// The opened packages let the kernel write its control channel (fd 3) and set System.getenv.
const javaCommand = [
  '/usr/bin/java',
  '-XX:TieredStopAtLevel=1',
  '-XX:+UseSerialGC',
  ...['java.io', 'java.lang', 'java.util'].map((p) => `--add-opens=java.base/${p}=ALL-UNNAMED`),
  `${SUPPORT}/interpreter/JavaKernel.java`,
];

const jupyter = new JupyterServer(kernelEnv, log);
const contexts = new Contexts(jupyter, kernelEnv, { node: nodeCommand, java: javaCommand });
let ready = false;

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly json?: unknown,
  ) {
    super(message);
  }
}

/** FastAPI's validation answer, which the SDK turns into an error. */
const invalid = (loc: string[], msg: string, input: unknown) => new HttpError(422, msg, { detail: [{ type: 'value_error', loc, msg, input }] });

async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req) {
    size += (c as Buffer).length;
    if (size > MAX_BODY) throw new HttpError(413, 'request body too large');
    chunks.push(c as Buffer);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  if (!text.trim()) return {};
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw invalid(['body'], 'JSON decode error', text.slice(0, 200));
  }
  if (!body || typeof body !== 'object' || Array.isArray(body)) throw invalid(['body'], 'Input should be an object', body);
  return body as Record<string, unknown>;
}

function optionalString(body: Record<string, unknown>, key: string): string | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') throw invalid(['body', key], 'Input should be a valid string', v);
  return v;
}

function send(res: ServerResponse, status: number, body: unknown): void {
  const text = typeof body === 'string' && status >= 400 ? body : JSON.stringify(body);
  res.writeHead(status, { 'content-type': status >= 400 && typeof body === 'string' ? 'text/plain; charset=utf-8' : 'application/json' });
  res.end(text);
}

/** A context that could not be made: refused (400, 429) or failed (500). */
function contextError(err: unknown): HttpError {
  if (err instanceof ContextRefused) return new HttpError(err.status, err.message);
  return new HttpError(500, err instanceof Error ? err.message : String(err));
}

/** The request's X-Access-Token, if it sent one. */
function accessToken(req: IncomingMessage): string | undefined {
  const token = req.headers['x-access-token'];
  return typeof token === 'string' ? token : undefined;
}

async function execute(req: IncomingMessage, res: ServerResponse): Promise<void> {
  const token = accessToken(req);
  const body = await readJson(req);
  if (typeof body.code !== 'string') throw invalid(['body', 'code'], 'Input should be a valid string', body.code ?? null);
  const code = body.code;
  const contextId = optionalString(body, 'context_id');
  const language = optionalString(body, 'language');
  const envVars = body.env_vars ?? {};
  if (typeof envVars !== 'object' || envVars === null || Array.isArray(envVars) || Object.values(envVars).some((v) => typeof v !== 'string'))
    throw invalid(['body', 'env_vars'], 'Input should be a valid dictionary of strings', envVars);
  if (contextId && language) throw new HttpError(400, 'Only one of context_id or language can be provided');
  let ctx: Context;
  if (contextId) {
    const c = contexts.get(contextId);
    if (!c) throw new HttpError(404, `Context ${contextId} not found`);
    ctx = c;
  } else {
    try {
      ctx = await contexts.defaultFor(normalizeLanguage(language));
    } catch (err) {
      throw contextError(err);
    }
  }
  res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' });
  res.flushHeaders();
  let gone = false;
  let last = Date.now();
  const write = (e: OutEvent | { type: string }) => {
    if (gone) return;
    last = Date.now();
    res.write(encodeEvent(e));
  };
  const keepalive = setInterval(() => {
    if (Date.now() - last >= KEEPALIVE_MS) write({ type: 'keepalive' });
  }, 1000);
  const state = { cancelled: false, running: false };
  // A client that goes away (or times out) interrupts the kernel; the context stays usable.
  res.on('close', () => {
    if (res.writableFinished) return;
    gone = true;
    state.cancelled = true;
    if (state.running) ctx.kernel.interrupt().catch((err: unknown) => log(`interrupting ${ctx.id} failed: ${String(err)}`));
  });
  try {
    try {
      await contexts.run(ctx, code, envVars as Record<string, string>, token, write, state);
    } catch (err) {
      // the kernel could not be reached or set up again: said as the run's error, the stream ends properly
      write(errorEvent('ContextUnavailable', `the context's kernel is not available: ${err instanceof Error ? err.message : String(err)}`));
    }
    write({ type: 'end_of_execution' });
  } finally {
    clearInterval(keepalive);
    res.end();
  }
}

async function route(req: IncomingMessage, res: ServerResponse): Promise<void> {
  const path = new URL(req.url ?? '/', 'http://x').pathname;
  const method = req.method ?? 'GET';
  const parts = path.split('/').filter(Boolean);
  if (path === '/health') {
    if (method !== 'GET') throw new HttpError(405, 'Method Not Allowed', { detail: 'Method Not Allowed' });
    if (!ready || !(await jupyter.healthy())) return send(res, 503, 'starting');
    return send(res, 200, 'OK');
  }
  // Everything else runs or manages the sandbox's kernels, checked before the body is read. Running
  // code takes the sandbox's access token (secure sandboxes), as envd's commands do. The context
  // routes take it when one is sent (a wrong one is refused), but the published SDK sends none on
  // them: without one they are exactly as reachable as the sandbox's other ports (the proxy asks
  // for the traffic token when public traffic is off), and the bound on contexts keeps a stranger
  // from exhausting the sandbox's memory with kernels.
  const token = accessToken(req);
  const tokenless = token === undefined && parts[0] === 'contexts';
  if (!tokenless && !(await accessAllowed(token))) throw new HttpError(401, 'invalid or missing access token (X-Access-Token)');
  if (path === '/execute') {
    if (method !== 'POST') throw new HttpError(405, 'Method Not Allowed', { detail: 'Method Not Allowed' });
    return execute(req, res);
  }
  if (parts[0] === 'contexts' && parts.length === 1) {
    if (method === 'GET') return send(res, 200, contexts.list());
    if (method !== 'POST') throw new HttpError(405, 'Method Not Allowed', { detail: 'Method Not Allowed' });
    const body = await readJson(req);
    const language = normalizeLanguage(optionalString(body, 'language'));
    const cwd = optionalString(body, 'cwd') || DEFAULT_CWD;
    try {
      return send(res, 200, await contexts.create(language, cwd));
    } catch (err) {
      throw contextError(err);
    }
  }
  if (parts[0] === 'contexts' && (parts.length === 2 || (parts.length === 3 && parts[2] === 'restart'))) {
    const id = decodeURIComponent(parts[1]!);
    const ctx = contexts.get(id);
    const restart = parts.length === 3;
    if ((restart && method !== 'POST') || (!restart && method !== 'DELETE')) throw new HttpError(405, 'Method Not Allowed', { detail: 'Method Not Allowed' });
    if (!ctx) throw new HttpError(404, `Context ${id} not found`);
    try {
      await (restart ? contexts.restart(ctx) : contexts.remove(ctx));
    } catch (err) {
      throw new HttpError(500, `Failed to ${restart ? 'restart' : 'remove'} context ${id}: ${err instanceof Error ? err.message : String(err)}`);
    }
    return send(res, 200, null);
  }
  throw new HttpError(404, 'Not Found', { detail: 'Not Found' });
}

const server = http.createServer((req, res) => {
  // Browsers call the server across origins (the SDK's custom headers need a preflight).
  res.setHeader('access-control-allow-origin', '*');
  if (req.method === 'OPTIONS') {
    res.writeHead(204, {
      'access-control-allow-methods': '*',
      'access-control-allow-headers': req.headers['access-control-request-headers'] ?? '*',
      'access-control-max-age': '7200',
    });
    res.end();
    return;
  }
  route(req, res).catch((err: unknown) => {
    if (res.headersSent) {
      res.destroy();
      return;
    }
    if (err instanceof HttpError) return send(res, err.status, err.json ?? err.message);
    log(`internal error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    send(res, 500, 'Internal Server Error');
  });
});
server.keepAliveTimeout = 640_000;
server.headersTimeout = 650_000;
server.requestTimeout = 0;

async function main(): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(PORT, '0.0.0.0', resolve);
  });
  log(`listening on ${PORT}; starting Jupyter`);
  await jupyter.start();
  // the default contexts, so that a first run does not wait for a kernel
  await contexts.defaultFor('python'); // listed first, as upstream lists it
  await contexts.defaultFor('javascript');
  ready = true;
  log('ready');
}

for (const sig of ['SIGTERM', 'SIGINT'] as const) {
  process.on(sig, () => {
    jupyter.stop();
    process.exit(0);
  });
}

main().catch((err: unknown) => {
  log(`start-up failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
  jupyter.stop();
  process.exit(1);
});
