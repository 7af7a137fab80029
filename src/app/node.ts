// The composition root: builds the node from one parsed configuration (config.ts) and starts it:
// the host probe, the manager (store, templates, network, runtimes), the control socket, the
// base templates, the DNS forwarder, the node API (tenancy, keys, metrics, volumes, secrets),
// the data plane, the listeners and the warm pool, in that order; and the shutdown that leaves
// sandboxes running. Everything else is handed what it needs from here.
import { readFileSync } from 'node:fs';
import { join as joinCluster, type Membership } from '../cluster/member.js';
import { ClusterQuota } from '../cluster/team-usage.js';
import { ClusterRegistry } from '../store/pg/nodes.js';
import { admitted } from '../cluster/secret.js';
import { join } from 'node:path';
import pino, { type Logger } from 'pino';
import { ControlServer } from '../api/control-socket.js';
import { dataPlaneProxy, dataPlaneResolver } from '../api/data-plane.js';
import { ApiKeys } from '../api/keys.js';
import { localNode } from '../api/local-node.js';
import { LocalApi } from '../api/manager-api.js';
import { ServiceMetrics } from '../api/prometheus.js';
import { startServer, type RunningServer, type ServerOptions } from '../api/server.js';
import { Tenancy } from '../api/tenancy.js';
import type { ConnectionLimits } from '../api/connection-guard.js';
import { DnsForwarder, type Upstream } from '../network/dns.js';
import { egressPolicy } from '../network/policy.js';
import { startEgressProxy } from '../network/egress-start.js';
import type { InterruptReason } from '../proxy/proxy.js';
import { probeHost } from '../runtime/probe.js';
import { SandboxManager } from '../sandbox/manager.js';
import { openSharedStore } from '../store/open-shared.js';
import { redactUrl, type SharedStore } from '../store/shared.js';
import { sqliteSharedStore } from '../store/shared-sqlite.js';
import { MetricsSampler } from '../sandbox/metrics.js';
import { openSecretKey } from '../secrets/key.js';
import { TemplateBuilds, DEFAULT_BUILD_LIMITS } from '../builder/builds.js';
import { BuildFiles } from '../builder/uploads.js';
import { CODE_INTERPRETER_TEMPLATE } from '../template/code-interpreter.js';
import { templateFromImage, type BaseImageRequest, type RegistrySettings } from '../template/image-source.js';
import { CubeboxError } from '../util/errors.js';
import { raiseFdLimit } from '../util/fd-limit.js';
import { Volumes } from '../volume/volumes.js';
import type { ServeConfig } from './config.js';

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
        network: config.network && { subnet: config.network.subnet, allowPrivate: config.network.allowPrivate, maxFlows: config.network.maxFlows },
        pidsBudget: config.pidsBudget,
        runtimeBinaries: config.runtimeBinaries,
        runtimeTimeoutMs: config.runtimeTimeoutMs,
      });
    } catch (err) {
      // a short-lived CLI manager may hold the data directory for a moment
      if (!(err instanceof CubeboxError && /another cubebox manager/.test(err.message)) || attempt >= 300) throw err;
      if (attempt === 0) logger.warn('another manager holds the data directory; waiting for it');
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  // teams, keys and secrets: the data directory's SQLite file, or the database of --database
  const shared = await openSharedStore(config.database, manager.store, logger).catch(async (err: unknown) => {
    await manager.close(); // refused start: the data directory is released
    throw err;
  });
  if (config.database) logger.info({ database: redactUrl(config.database) }, 'teams, keys and secrets are in the shared database');
  const sealingKey = openSecretKey(manager.paths.dataDir); // made on the first start; a key file that is not sound refuses the start
  const control = new ControlServer(new LocalApi(manager, { cacheDir: config.cacheDir, registry: config.registry }), manager.paths.socket);
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
  const net = manager.network();
  const egress =
    dns && net && config.network
      ? await startEgressProxy({
          ...{ net, dns, sandbox: (id: string) => manager.get(id), secrets: { rows: shared.secrets, sealingKey: () => sealingKey } },
          ...{ dataDir: manager.paths.dataDir, instanceId: manager.paths.instanceId, upstreamCa: config.network.egressCa, log: logger },
        })
      : undefined;
  // a node's quota admissions count the team's sandboxes on every node (cluster/team-usage.ts)
  const clusterDb =
    config.role === 'node' && config.cluster && config.database
      ? await ClusterRegistry.open(config.database, logger).catch(async (err: unknown) => {
          await Promise.allSettled([dns?.close(), egress?.close(), control.close(true), shared.close()]);
          await manager.close();
          throw err;
        })
      : undefined;
  const server = await serveNode(manager, {
    cluster: clusterDb && config.cluster && { registry: clusterDb, leaseMs: config.cluster.leaseMs },
    shared,
    host: config.host,
    port: config.port,
    dataPort: config.dataPort,
    domain: config.domain,
    log: logger,
    tls: config.tls && { cert: readFileSync(config.tls.cert), key: readFileSync(config.tls.key) },
    connections,
    volumeSizeMB: config.volumeSizeMB,
    sealingKey: () => sealingKey,
    registry: config.registry,
    buildReadyTimeoutMs: config.buildReadyTimeoutMs,
    // a cluster node answers its API replicas only (cluster/secret.ts)
    gate: config.cluster && ((req) => admitted(req, config.cluster!.secret)),
  });
  manager.setPool(config.pool);
  let membership: Membership | undefined;
  const registry = clusterDb;
  const m = manager;
  const service: RunningService = {
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
      await step('the cluster membership', () => membership?.leave());
      await step('the API listeners', () => server.close());
      await step('the DNS forwarder', () => dns?.close());
      await step('the egress proxy', () => egress?.close());
      await step('the control socket', () => control.close(true));
      await step('the shared store', () => shared.close());
      await step('the cluster registry', () => registry?.close());
      await step('the manager', () => m.close());
    },
  };
  if (config.role === 'node' && config.cluster && config.database) {
    // registered last: a node takes creates only once it serves them
    try {
      membership = await joinCluster(manager, registry!, {
        address: config.cluster.nodeUrl ?? server.url,
        binaries: config.runtimeBinaries,
        log: logger,
        publish: () => server.quota?.publish(),
      });
    } catch (err) {
      await service.close();
      throw err;
    }
  }
  logger.info(
    { url: server.url, dataUrl: server.dataUrl, dataDir: config.dataDir, instance: manager.paths.instanceId, runtime: manager.runtime.name, role: config.role },
    'cubebox serve ready',
  );
  return service;
}

export interface NodeServeOptions extends Omit<ServerOptions, 'controlPlane' | 'proxy'> {
  /** Each new volume's disk size, MiB. */
  volumeSizeMB: number;
  /** The key that seals secrets (opened once at start). */
  sealingKey: () => Buffer;
  /** How registries are trusted when template builds pull base images (templateFromImage's settings). */
  registry?: RegistrySettings;
  /** How long a build waits for its start command to be ready, ms (default: the builder's). */
  buildReadyTimeoutMs?: number;
  /** Teams, keys and secrets (default: the manager's own SQLite store). */
  shared?: SharedStore;
  /** A cluster node: quotas are admitted counting every node's sandboxes. */
  cluster?: { registry: ClusterRegistry; leaseMs: number };
}

/**
 * Serves a manager: builds the node API (tenancy and its quota admission, keys, metrics,
 * volumes, secrets over the manager's store), the data plane over it, and the listeners.
 * Closing stops them; the manager stays open.
 */
export async function serveNode(manager: SandboxManager, opts: NodeServeOptions): Promise<RunningServer & { quota?: ClusterQuota }> {
  const { log } = opts;
  const shared = opts.shared ?? sqliteSharedStore(manager.store);
  const tenancy = new Tenancy(manager.store, manager.templates, log, shared.directory);
  tenancy.attach(manager); // quota admission of creates, resumes, pauses and new layers
  const quota = opts.cluster && new ClusterQuota(opts.cluster.registry, tenancy, manager.paths.instanceId, opts.cluster.leaseMs, log);
  if (quota) {
    manager.admitAcross = (a) => quota.admit(a);
    tenancy.elsewhere = (team) => quota.elsewhere(team);
  }
  const metrics = new MetricsSampler(manager);
  metrics.start();
  // template builds; a base image that is not a cubebox template comes from a registry (image-source.ts)
  const baseImage = (req: BaseImageRequest) => templateFromImage(manager.templates, req, opts.registry);
  const builds = new TemplateBuilds(manager, new BuildFiles(join(manager.paths.dataDir, 'build-files')), baseImage, {
    ...DEFAULT_BUILD_LIMITS,
    ...(opts.buildReadyTimeoutMs ? { readyTimeoutMs: opts.buildReadyTimeoutMs } : {}),
  });
  await builds.recover();
  const node = localNode(manager, {
    keys: new ApiKeys(shared),
    tenancy,
    metrics,
    volumes: new Volumes(manager.store, manager.paths, manager.log, opts.volumeSizeMB),
    secrets: { rows: shared.secrets, sealingKey: opts.sealingKey },
    builds,
    shared,
  });
  const proxy = dataPlaneProxy(dataPlaneResolver(node, log), opts.domain, log);
  const prom = new ServiceMetrics(manager, proxy);
  const server = await startServer({
    ...opts,
    controlPlane: {
      node,
      clientId: manager.paths.instanceId,
      observe: (op, fn) => prom.time(op, fn),
      prometheus: async () => ({ contentType: prom.contentType, body: await prom.text() }),
    },
    proxy,
  });
  // a sandbox that stops serving has its streams cut; one that is gone is forgotten
  const onInterrupt = (id: string, reason?: InterruptReason) => proxy.cut(id, reason);
  const onDeleted = (id: string) => {
    proxy.forget(id);
    metrics.forget(id);
  };
  manager.events.on('interrupt', onInterrupt);
  manager.events.on('deleted', onDeleted);
  return {
    ...server,
    quota,
    async close() {
      manager.admitAcross = undefined;
      manager.events.off('interrupt', onInterrupt);
      manager.events.off('deleted', onDeleted);
      await builds.close();
      metrics.stop();
      await server.close();
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
    proxyResolved: (sandboxId, addresses, ttl) => net.allowResolved(sandboxId, addresses, ttl, true),
  });
  await net.setDnsPort(await dns.start());
  return dns;
}
