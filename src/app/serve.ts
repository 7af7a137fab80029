// `cubebox serve`'s start-up: configuration read in one place (flags over environment over
// defaults), the host probe, the manager, the control socket, the base template on first start,
// the HTTP listeners and the warm pool, in that order; and the shutdown that leaves sandboxes running.
import pino, { type Logger } from 'pino';
import { ControlServer } from '../api/control-socket.js';
import { LocalApi } from '../api/manager-api.js';
import { startServer, type RunningServer } from '../api/server.js';
import { resolveCacheDir, resolveDataDir, type RuntimeName } from '../config.js';
import { probeHost } from '../runtime/probe.js';
import { SandboxManager } from '../sandbox/manager.js';
import { openSecretKey } from '../secrets/key.js';
import { CubeboxError } from '../util/errors.js';

/** What `cubebox serve` is given on its command line; anything left out comes from the environment. */
export interface ServeFlags {
  dataDir?: string;
  host?: string;
  port?: string;
  dataPort?: string;
  domain?: string;
  runtime?: RuntimeName;
  /** false with --no-base. */
  base?: boolean;
  pool?: string;
}

export interface ServeConfig {
  dataDir: string;
  cacheDir: string;
  host: string;
  port: number;
  dataPort: number | undefined;
  domain: string | undefined;
  runtime: RuntimeName;
  buildBase: boolean;
  pool: Record<string, number>;
  logLevel: string;
}

/** The one place serve's configuration is read: flags, then CUBEBOX_* variables, then defaults. */
export function serveConfig(flags: ServeFlags, env: NodeJS.ProcessEnv = process.env): ServeConfig {
  const portText = flags.port ?? env.CUBEBOX_PORT ?? '3000';
  const dataPortText = flags.dataPort ?? env.CUBEBOX_DATA_PORT;
  const runtime = flags.runtime ?? (env.CUBEBOX_RUNTIME as RuntimeName | undefined) ?? 'crun';
  if (!['crun', 'runc', 'runsc'].includes(runtime)) throw new CubeboxError('invalid_argument', `unknown runtime '${runtime}' (crun, runc or runsc)`);
  return {
    dataDir: resolveDataDir(flags.dataDir),
    cacheDir: resolveCacheDir(),
    host: flags.host ?? env.CUBEBOX_HOST ?? '127.0.0.1',
    port: parsePort(portText, 'port'),
    dataPort: dataPortText === undefined ? undefined : parsePort(dataPortText, 'data port'),
    domain: flags.domain ?? env.CUBEBOX_DOMAIN,
    runtime,
    buildBase: flags.base !== false,
    pool: parsePool(flags.pool ?? env.CUBEBOX_POOL ?? 'base=2'),
    logLevel: env.CUBEBOX_LOG_LEVEL ?? 'info',
  };
}

function parsePort(text: string, what: string): number {
  const port = Number(text);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new CubeboxError('invalid_argument', `bad ${what} '${text}'`);
  return port;
}

/** `base=2,py=1` -> sizes by template; "" is no pool. */
export function parsePool(text: string): Record<string, number> {
  const pool: Record<string, number> = {};
  for (const part of text.split(',').filter(Boolean)) {
    const [name, size] = part.split('=');
    const n = Number(size);
    if (!name || !Number.isInteger(n) || n < 0 || n > 64) throw new CubeboxError('invalid_argument', `bad --pool entry '${part}': use <template>=<size 0..64>`);
    pool[name] = n;
  }
  return pool;
}

export interface RunningService {
  manager: SandboxManager;
  server: RunningServer;
  log: Logger;
  /** Stops the listeners and the manager; sandboxes keep running (the next start adopts them). */
  close(): Promise<void>;
}

/** Starts the service and resolves once it answers. */
export async function startService(config: ServeConfig): Promise<RunningService> {
  const logger = pino({ level: config.logLevel });
  const report = await probeHost({ runtimes: [config.runtime] });
  const failed = report.checks.filter((c) => c.essential && !c.ok);
  if (failed.length) throw new CubeboxError('unavailable', `this host cannot run cubebox:\n${failed.map((c) => `  ${c.name}: ${c.detail}`).join('\n')}`);
  let manager: SandboxManager | undefined;
  for (let attempt = 0; !manager; attempt++) {
    try {
      manager = await SandboxManager.open({
        dataDir: config.dataDir,
        runtime: config.runtime,
        logger,
        reconcileIntervalMs: 5000,
        reaperIntervalMs: 250,
        deleteStopped: true,
      });
    } catch (err) {
      // a short-lived CLI manager may hold the data directory for a moment
      if (!(err instanceof CubeboxError && /another cubebox manager/.test(err.message)) || attempt >= 300) throw err;
      if (attempt === 0) logger.warn('another manager holds the data directory; waiting for it');
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  openSecretKey(manager.paths.dataDir); // made on the first start; a key file that is not sound refuses the start
  const control = new ControlServer(new LocalApi(manager), manager.paths.socket);
  await control.listen();
  if (config.buildBase && !manager.templates.find('base')) {
    logger.info('building the base template (first start; later starts reuse it)');
    await manager.templates.addDebianBase('base', { cacheDir: config.cacheDir, onProgress: (line) => logger.info({ template: 'base' }, line) });
  }
  const server = await startServer({ manager, host: config.host, port: config.port, dataPort: config.dataPort, domain: config.domain, log: logger });
  manager.setPool(config.pool);
  logger.info(
    { url: server.url, dataUrl: server.dataUrl, dataDir: config.dataDir, instance: manager.paths.instanceId, runtime: manager.runtime.name },
    'cubebox serve ready',
  );
  const m = manager;
  return {
    manager: m,
    server,
    log: logger,
    async close() {
      await server.close();
      await control.close(true);
      await m.close();
    },
  };
}

/** `cubebox serve`: starts the service and exits 0 after a graceful stop on SIGTERM or SIGINT. */
export async function serve(flags: ServeFlags): Promise<void> {
  const service = await startService(serveConfig(flags));
  const stop = async (signal: string) => {
    service.log.info({ signal }, 'shutting down; sandboxes keep running');
    await service.close();
    process.exit(0);
  };
  const onSignal = (signal: string) => {
    stop(signal).catch((err: unknown) => {
      service.log.error({ err }, 'shutdown failed');
      process.exit(1);
    });
  };
  process.once('SIGTERM', () => onSignal('SIGTERM'));
  process.once('SIGINT', () => onSignal('SIGINT'));
}
