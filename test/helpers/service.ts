import { spawn, type ChildProcess } from 'node:child_process';
import { request } from 'node:http';
import { capabilitiesOf, parseRuntimeName } from '../../src/runtime/registry.js';
import { cli, CLI, waitExit } from './instance.js';

/** The runtime the suites run sandboxes with: CUBEBOX_RUNTIME, as the service and managers read it (crun by default). */
export const testRuntime = parseRuntimeName(process.env.CUBEBOX_RUNTIME);
/** What that runtime can do (a test skips the part its runtime cannot). */
export const testCapabilities = capabilitiesOf(testRuntime);

export interface Service {
  dataDir: string;
  url: string;
  port: number;
  /** The data-plane-only port's URL, when CUBEBOX_DATA_PORT was set. */
  dataUrl?: string;
  child: ChildProcess;
  /** Stops the service gracefully (sandboxes keep running). */
  stop(): Promise<void>;
  /** Kills the service with SIGKILL, as a crash would. */
  crash(): Promise<void>;
}

/**
 * Starts `cubebox serve` on a data directory and an ephemeral loopback port, and waits
 * for its ready line (after the base template exists: the first start builds it).
 */
export async function startService(dataDir: string, opts: { port?: number; env?: NodeJS.ProcessEnv; args?: string[] } = {}): Promise<Service> {
  const child = spawn(process.execPath, [CLI, '--data-dir', dataDir, 'serve', '--host', '127.0.0.1', '--port', String(opts.port ?? 0), ...(opts.args ?? [])], {
    env: { ...process.env, CUBEBOX_LOG_LEVEL: 'info', ...opts.env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const { url, dataUrl } = await new Promise<{ url: string; dataUrl?: string }>((resolve, reject) => {
    let buf = '';
    const onData = (d: Buffer) => {
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        try {
          const rec = JSON.parse(line) as { msg?: string; url?: string; dataUrl?: string; level?: number };
          if (rec.msg === 'cubebox serve ready' && rec.url) {
            child.stdout!.off('data', onData);
            child.stdout!.resume(); // keep draining its log
            resolve({ url: rec.url, dataUrl: rec.dataUrl });
          } else if ((rec.level ?? 0) >= 50) process.stderr.write(`[serve] ${line}\n`);
        } catch {
          /* not a log record */
        }
      }
    };
    child.stdout!.on('data', onData);
    child.on('exit', (code, sig) => reject(new Error(`cubebox serve exited early (${code ?? sig})`)));
    setTimeout(() => reject(new Error('cubebox serve did not get ready in 10 minutes')), 600_000).unref();
  });
  const port = Number(new URL(url).port);
  return {
    dataDir,
    url,
    port,
    dataUrl,
    child,
    async stop() {
      child.kill('SIGTERM');
      await waitExit(child);
    },
    async crash() {
      child.kill('SIGKILL');
      await waitExit(child);
    },
  };
}

/** A new API key for the data directory (through `cubebox keys create`). */
export async function createKey(dataDir: string): Promise<string> {
  const r = await cli(dataDir, ['keys', 'create', '--name', 'tests']);
  if (r.code !== 0) throw new Error(`keys create failed: ${r.stderr}`);
  return r.stdout.trim().split('\n').pop()!.trim();
}

export type E2B = typeof import('e2b');

/**
 * A service on a fresh data directory, an API key, and the published SDK pointed at it
 * the way a user does: E2B_API_KEY, E2B_API_URL and E2B_SANDBOX_URL, never E2B_DEBUG.
 */
export async function sdkService(env: NodeJS.ProcessEnv = {}): Promise<{ svc: Service; dataDir: string; key: string; e2b: E2B }> {
  const { newDataDir } = await import('./instance.js');
  const dataDir = newDataDir();
  const svc = await startService(dataDir, { env });
  const key = await createKey(dataDir);
  process.env.E2B_API_KEY = key;
  process.env.E2B_API_URL = svc.url;
  process.env.E2B_SANDBOX_URL = svc.url;
  delete process.env.E2B_DEBUG;
  const e2b = (await import('e2b')) as unknown as E2B;
  return { svc, dataDir, key, e2b };
}

/** A GET to a service with these headers (a sandbox's port through the proxy goes by its Host); the body as text. */
export function getFrom(svc: Service, path: string, headers: Record<string, string> = {}): Promise<{ status: number; body: string }> {
  const u = new URL(svc.url);
  return new Promise((resolve, reject) => {
    const req = request({ host: u.hostname, port: u.port, path, headers }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}
