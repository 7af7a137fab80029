// `cubebox serve`'s start-up: configuration read in one place (flags over environment over
// defaults), the host probe, the manager, the control socket, the base template on first start,
// the HTTP listeners and the warm pool, in that order; and the shutdown that leaves sandboxes running.
import { readFileSync } from 'node:fs';
import pino, { type Logger } from 'pino';
import { ControlServer } from '../api/control-socket.js';
import { LocalApi } from '../api/manager-api.js';
import { DEFAULT_CONNECTION_LIMITS, startServer, type RunningServer } from '../api/server.js';
import type { ConnectionLimits } from '../api/connection-guard.js';
import { parsePausedLifetime, resolveCacheDir, resolveDataDir } from '../config.js';
import { probeHost } from '../runtime/probe.js';
import { parseRuntimeName, type RuntimeName } from '../runtime/registry.js';
import { SandboxManager } from '../sandbox/manager.js';
import type { PoolBounds } from '../sandbox/pool-sizer.js';
import type { CreateLimits } from '../sandbox/types.js';
import { openSecretKey } from '../secrets/key.js';
import { CODE_INTERPRETER_TEMPLATE } from '../template/code-interpreter.js';
import { CubeboxError } from '../util/errors.js';
import { DnsForwarder, parseUpstreams, systemUpstreams, type Upstream } from '../network/dns.js';
import { egressPolicy } from '../network/policy.js';
import { raiseFdLimit } from '../util/fd-limit.js';

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
  /** Sandboxes provisioned at once, and creates that may wait (past it: 429 with Retry-After). */
  maxCreating?: string;
  createQueue?: string;
  /** How long a paused sandbox is kept (seconds, or with s, m, h, d). */
  pausedLifetime?: string;
  /** Templates built at start: base, code-interpreter (default base). */
  templates?: string;
  subnet?: string;
  dnsUpstream?: string;
  allowPrivate?: string;
  /** false with --no-network. */
  network?: boolean;
  tlsCert?: string;
  tlsKey?: string;
  /** Connection bounds of each listener, and the file descriptors kept for the service's own work. */
  maxConnections?: string;
  maxConnectionsPerAddress?: string;
  headerTimeout?: string;
  fdReserve?: string;
  /** Seconds a graceful stop may take before the rest is abandoned. */
  shutdownTimeout?: string;
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
  /** Built ahead at start besides base (code-interpreter); otherwise built on first request. */
  buildCodeInterpreter: boolean;
  pool: Record<string, number | PoolBounds>;
  creates: CreateLimits;
  /** ms; undefined: the manager's default (30 days). */
  pausedLifetimeMs: number | undefined;
  logLevel: string;
  /** false: loopback only. */
  network: false | { subnet?: string; allowPrivate: string[]; dnsUpstreams: Upstream[] };
  tls?: { cert: string; key: string };
  connections: ConnectionLimits & { fdReserve: number };
  shutdownTimeoutMs: number;
}

export const DEFAULT_FD_RESERVE = 4096;
export const DEFAULT_SHUTDOWN_TIMEOUT_SEC = 20;

/** The one place serve's configuration is read: flags, then CUBEBOX_* variables, then defaults. */
export function serveConfig(flags: ServeFlags, env: NodeJS.ProcessEnv = process.env): ServeConfig {
  const portText = flags.port ?? env.CUBEBOX_PORT ?? '3000';
  const dataPortText = flags.dataPort ?? env.CUBEBOX_DATA_PORT;
  const runtime = parseRuntimeName(flags.runtime ?? env.CUBEBOX_RUNTIME);
  return {
    dataDir: resolveDataDir(flags.dataDir),
    cacheDir: resolveCacheDir(),
    host: flags.host ?? env.CUBEBOX_HOST ?? '127.0.0.1',
    port: parsePort(portText, 'port'),
    dataPort: dataPortText === undefined ? undefined : parsePort(dataPortText, 'data port'),
    domain: flags.domain ?? env.CUBEBOX_DOMAIN,
    runtime,
    buildBase: flags.base !== false,
    buildCodeInterpreter: parseTemplates(flags.templates ?? env.CUBEBOX_TEMPLATES ?? 'base').includes('code-interpreter'),
    pool: parsePool(flags.pool ?? env.CUBEBOX_POOL ?? DEFAULT_POOL),
    creates: {
      concurrency: optionalCount(flags.maxCreating ?? env.CUBEBOX_MAX_CREATING, 'max creating', 1, 256),
      queue: optionalCount(flags.createQueue ?? env.CUBEBOX_CREATE_QUEUE, 'create queue', 0, 100_000),
    },
    pausedLifetimeMs: parsePausedLifetime(flags.pausedLifetime ?? env.CUBEBOX_PAUSED_LIFETIME),
    logLevel: env.CUBEBOX_LOG_LEVEL ?? 'info',
    network:
      flags.network === false || env.CUBEBOX_NETWORK === 'off'
        ? false
        : {
            subnet: flags.subnet ?? env.CUBEBOX_SUBNET,
            allowPrivate: (flags.allowPrivate ?? env.CUBEBOX_ALLOW_PRIVATE ?? '').split(',').filter(Boolean),
            dnsUpstreams: dnsUpstreamsOf(flags.dnsUpstream ?? env.CUBEBOX_DNS_UPSTREAM),
          },
    tls: tlsOf(flags.tlsCert ?? env.CUBEBOX_TLS_CERT, flags.tlsKey ?? env.CUBEBOX_TLS_KEY),
    connections: {
      maxConnections:
        optionalCount(flags.maxConnections ?? env.CUBEBOX_MAX_CONNECTIONS, 'max connections', 1, 1_000_000) ?? DEFAULT_CONNECTION_LIMITS.maxConnections,
      maxPerAddress:
        optionalCount(flags.maxConnectionsPerAddress ?? env.CUBEBOX_MAX_CONNECTIONS_PER_ADDRESS, 'max connections per address', 1, 1_000_000) ??
        DEFAULT_CONNECTION_LIMITS.maxPerAddress,
      headerTimeoutMs:
        1000 *
        (optionalCount(flags.headerTimeout ?? env.CUBEBOX_HEADER_TIMEOUT, 'header timeout', 1, 3600) ?? DEFAULT_CONNECTION_LIMITS.headerTimeoutMs / 1000),
      fdReserve: optionalCount(flags.fdReserve ?? env.CUBEBOX_FD_RESERVE, 'fd reserve', 64, 1_000_000) ?? DEFAULT_FD_RESERVE,
    },
    shutdownTimeoutMs:
      1000 * (optionalCount(flags.shutdownTimeout ?? env.CUBEBOX_SHUTDOWN_TIMEOUT, 'shutdown timeout', 1, 3600) ?? DEFAULT_SHUTDOWN_TIMEOUT_SEC),
  };
}

function dnsUpstreamsOf(text: string | undefined): Upstream[] {
  try {
    return text ? parseUpstreams(text) : systemUpstreams();
  } catch (err) {
    throw new CubeboxError('invalid_argument', (err as Error).message);
  }
}

/** The certificate and key files, both or neither. */
function tlsOf(cert: string | undefined, key: string | undefined): { cert: string; key: string } | undefined {
  if (!cert && !key) return undefined;
  if (!cert || !key) throw new CubeboxError('invalid_argument', '--tls-cert and --tls-key go together');
  return { cert, key };
}

function parsePort(text: string, what: string): number {
  const port = Number(text);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new CubeboxError('invalid_argument', `bad ${what} '${text}'`);
  return port;
}

/** `base,code-interpreter` -> the templates serve builds at start. */
function parseTemplates(text: string): string[] {
  const names = text.split(',').map((n) => n.trim());
  for (const n of names.filter(Boolean)) {
    if (n !== 'base' && n !== 'code-interpreter') throw new CubeboxError('invalid_argument', `unknown template '${n}' in --templates (base, code-interpreter)`);
  }
  return names;
}

/** The default pool: two base sandboxes, growing to 32 after bursts of creates. */
export const DEFAULT_POOL = 'base=2:32';

/**
 * `base=2:32,py=1` -> pools by template: `<min>:<max>` is adaptive (sized for recent bursts
 * between the bounds), `<size>` is fixed; "" is no pool.
 */
export function parsePool(text: string): Record<string, number | PoolBounds> {
  const pool: Record<string, number | PoolBounds> = {};
  const bad = (part: string) =>
    new CubeboxError('invalid_argument', `bad --pool entry '${part}': use <template>=<size 0..64> or <template>=<min>:<max> (0 <= min <= max <= 256)`);
  for (const part of text.split(',').filter(Boolean)) {
    const [name, size] = part.split('=');
    if (!name || size === undefined) throw bad(part);
    if (size.includes(':')) {
      const bounds = size.split(':').map(Number);
      const [min, max] = bounds;
      if (bounds.length !== 2 || !Number.isInteger(min) || !Number.isInteger(max) || min! < 0 || max! < min! || max! > 256) throw bad(part);
      pool[name] = { min: min!, max: max! };
    } else {
      const n = Number(size);
      if (!Number.isInteger(n) || n < 0 || n > 64) throw bad(part);
      pool[name] = n;
    }
  }
  return pool;
}

function optionalCount(text: string | undefined, what: string, min: number, max: number): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!Number.isInteger(n) || n < min || n > max) throw new CubeboxError('invalid_argument', `bad ${what} '${text}': an integer from ${min} to ${max}`);
  return n;
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
  const connections = await connectionBudget(config, logger);
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
        pausedLifetimeMs: config.pausedLifetimeMs,
        creates: config.creates,
        network: config.network && { subnet: config.network.subnet, allowPrivate: config.network.allowPrivate },
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
  // E2B's default code-interpreter template: ahead with --templates, else on first request
  const templates = manager.templates;
  const buildInterpreter = () => {
    logger.info({ template: CODE_INTERPRETER_TEMPLATE }, 'building the code-interpreter template');
    return templates.addCodeInterpreter(CODE_INTERPRETER_TEMPLATE, {
      cacheDir: config.cacheDir,
      onProgress: (line) => logger.info({ template: CODE_INTERPRETER_TEMPLATE }, line),
    });
  };
  templates.buildOnDemand(CODE_INTERPRETER_TEMPLATE, buildInterpreter);
  if (config.buildCodeInterpreter) await templates.ensure(CODE_INTERPRETER_TEMPLATE);
  const dns = config.network ? await startDnsForwarder(manager, config.network.dnsUpstreams, logger) : undefined;
  const server = await startServer({
    manager,
    host: config.host,
    port: config.port,
    dataPort: config.dataPort,
    domain: config.domain,
    log: logger,
    tls: config.tls && { cert: readFileSync(config.tls.cert), key: readFileSync(config.tls.key) },
    connections,
  });
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
      // every step bounded: one that hangs (a client holding a stream, a forwarder's connection)
      // must not keep the others, and the release of the data directory, from happening
      const until = Date.now() + config.shutdownTimeoutMs;
      const step = async (what: string, work: () => Promise<void> | undefined) => {
        const ms = Math.max(1000, until - Date.now());
        let timer: NodeJS.Timeout | undefined;
        const late = new Promise<'late'>((r) => (timer = setTimeout(() => r('late'), ms)));
        const done = Promise.resolve()
          .then(work)
          .then(
            () => 'done' as const,
            (err: unknown) => logger.warn({ err: (err as Error).message }, `closing ${what} failed`),
          );
        if ((await Promise.race([done, late])) === 'late') logger.warn(`closing ${what} did not finish in ${ms} ms; going on without it`);
        clearTimeout(timer);
      };
      await step('the API listeners', () => server.close());
      await step('the DNS forwarder', () => dns?.close());
      await step('the control socket', () => control.close(true));
      await step('the manager', () => m.close());
    },
  };
}

/**
 * The connection caps that fit the open-file limit (raised first): each connection may hold
 * two descriptors (the client's and its way to a sandbox), and a reserve stays for the
 * service's own work (runtime calls, disks, databases, sandboxes' sockets).
 */
async function connectionBudget(config: ServeConfig, log: Logger): Promise<ConnectionLimits> {
  const { fdReserve, ...limits } = config.connections;
  const fds = await raiseFdLimit();
  if (fds.error) log.warn({ soft: fds.soft, err: fds.error }, 'could not raise the open-file limit');
  const listeners = config.dataPort === undefined ? 1 : 2;
  const fit = Math.max(1, Math.floor((fds.soft - fdReserve) / (2 * listeners)));
  if (fit < limits.maxConnections) {
    log.warn({ openFiles: fds.soft, fdReserve, wanted: limits.maxConnections, maxConnections: fit }, 'the open-file limit caps connections per listener lower');
    limits.maxConnections = fit;
  }
  return { ...limits, maxPerAddress: Math.min(limits.maxPerAddress, limits.maxConnections) };
}

/** The DNS forwarder of the sandboxes' links; nftables sends their DNS to its port. */
async function startDnsForwarder(manager: SandboxManager, upstreams: Upstream[], log: Logger): Promise<DnsForwarder | undefined> {
  const net = manager.network();
  if (!net) return undefined;
  if (!upstreams.length) log.warn('no DNS upstream (none in /etc/resolv.conf and no --dns-upstream): names will not resolve in sandboxes');
  const dns = new DnsForwarder({
    upstreams,
    log,
    lookup(address) {
      const sandboxId = net.sandboxAt(address);
      if (!sandboxId) return undefined;
      try {
        return { sandboxId, policy: egressPolicy(manager.get(sandboxId).network) };
      } catch {
        return undefined;
      }
    },
    allowResolved: (sandboxId, addresses, ttl) => net.allowResolved(sandboxId, addresses, ttl),
  });
  await net.setDnsPort(await dns.start());
  return dns;
}

/** `cubebox serve`: starts the service and exits 0 after a graceful stop on SIGTERM or SIGINT. */
export async function serve(flags: ServeFlags): Promise<void> {
  const config = serveConfig(flags);
  const service = await startService(config);
  const stop = async (signal: string) => {
    service.log.info({ signal }, 'shutting down; sandboxes keep running');
    // a last resort past every step's bound: the process ends whatever still runs
    setTimeout(() => {
      service.log.error('shutdown did not finish in time; exiting');
      process.exit(1);
    }, config.shutdownTimeoutMs + 10_000).unref();
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
