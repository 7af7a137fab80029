// The node's configuration, read in one place: flags, then CUBEBOX_* variables, then defaults.
// Nothing else in src/ reads the environment; every part is handed what it needs from here
// (the composition root, app/node.ts, for `serve`; the CLI for its short-lived managers).
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { DEFAULT_CONNECTION_LIMITS } from '../api/server.js';
import type { ConnectionLimits } from '../api/connection-guard.js';
import { DEFAULT_CACHE_DIR, DEFAULT_DATA_DIR, parsePausedLifetime } from '../config.js';
import { parseRuntimeName, runtimeNames, type RuntimeName } from '../runtime/registry.js';
import type { PoolBounds } from '../sandbox/pool-sizer.js';
import type { RegistrySettings } from '../template/oci/registry.js';
import { RegistryRepo } from '../template/oci/distribution.js';
import type { CreateLimits, ManagerOptions } from '../sandbox/types.js';
import { isPostgresUrl } from '../store/shared.js';
import { CubeboxError, invalid } from '../util/errors.js';
import { parseUpstreams, systemUpstreams, type Upstream } from '../network/dns.js';

type Env = NodeJS.ProcessEnv;

/** What every manager of a data directory is configured with, the CLI's short-lived ones included. */
export interface HostConfig {
  dataDir: string;
  /** Where template builds keep what makes rebuilds fast (shared by every instance on the host). */
  cacheDir: string;
  runtime: RuntimeName;
  /** undefined: the caller's default (serve: info, the CLI: warn). */
  logLevel: string | undefined;
  /** false: loopback only (CUBEBOX_NETWORK=off). */
  network: false | { subnet?: string; maxFlows?: number };
  /** The pids budget of all sandboxes together (CUBEBOX_SANDBOX_PIDS_BUDGET; default half of pid_max). */
  pidsBudget: number | undefined;
  /** Runtime binaries other than /usr/bin/<name> (CUBEBOX_<NAME>_BIN). */
  runtimeBinaries: Record<RuntimeName, string>;
  /** Per-call bound of runtime commands, ms (CUBEBOX_RUNTIME_TIMEOUT_MS). */
  runtimeTimeoutMs: number | undefined;
  /** How registries are trusted for image pulls (--registry-ca, --insecure-registry). */
  registry: RegistrySettings;
}

/** The flags every command may give for registries (serve's own, and the CLI's image import). */
export interface RegistryFlags {
  registryCa?: string;
  insecureRegistry?: string[];
}

/** The configuration every command shares: the data directory (a flag or CUBEBOX_DATA_DIR) and the manager's settings. */
export function hostConfig(flags: { dataDir?: string; runtime?: string } & RegistryFlags = {}, env: Env = process.env): HostConfig {
  const budget = Number(env.CUBEBOX_SANDBOX_PIDS_BUDGET);
  const binaries: Record<RuntimeName, string> = {};
  for (const name of runtimeNames()) {
    const bin = env[`CUBEBOX_${name.toUpperCase()}_BIN`];
    if (bin !== undefined) binaries[name] = bin;
  }
  return {
    dataDir: resolve(flags.dataDir ?? env.CUBEBOX_DATA_DIR ?? DEFAULT_DATA_DIR),
    cacheDir: resolve(env.CUBEBOX_CACHE_DIR ?? DEFAULT_CACHE_DIR),
    runtime: parseRuntimeName(flags.runtime ?? env.CUBEBOX_RUNTIME),
    logLevel: env.CUBEBOX_LOG_LEVEL,
    network:
      env.CUBEBOX_NETWORK === 'off' ? false : { subnet: env.CUBEBOX_SUBNET, maxFlows: env.CUBEBOX_MAX_FLOWS ? Number(env.CUBEBOX_MAX_FLOWS) : undefined },
    pidsBudget: Number.isInteger(budget) && budget > 0 ? budget : undefined,
    runtimeBinaries: binaries,
    runtimeTimeoutMs: Number(env.CUBEBOX_RUNTIME_TIMEOUT_MS) || undefined,
    registry: registrySettings(flags, env),
  };
}

/**
 * Registry trust: a PEM bundle trusted besides the system's CAs (--registry-ca,
 * CUBEBOX_REGISTRY_CA) and the host:port of registries reached over plain HTTP or unverified
 * TLS (--insecure-registry, repeatable; CUBEBOX_INSECURE_REGISTRY, comma-separated). Default:
 * the system's CAs, TLS verified everywhere.
 */
function registrySettings(flags: RegistryFlags, env: Env): RegistrySettings {
  const caFile = flags.registryCa ?? (env.CUBEBOX_REGISTRY_CA || undefined);
  if (caFile !== undefined) {
    let pem = '';
    try {
      pem = readFileSync(caFile, 'utf8');
    } catch (err) {
      throw invalid(`cannot read the registry CA bundle ${caFile}: ${(err as Error).message}`);
    }
    if (!pem.includes('-----BEGIN CERTIFICATE-----')) throw invalid(`the registry CA bundle ${caFile} holds no PEM certificate`);
  }
  const insecure = flags.insecureRegistry ?? (env.CUBEBOX_INSECURE_REGISTRY ?? '').split(',');
  const hosts = insecure.map((h) => h.trim()).filter(Boolean);
  for (const h of hosts) {
    if (!/^(?:[a-zA-Z0-9.-]+|\[[0-9a-fA-F:.]+\])(?::\d{1,5})?$/.test(h)) throw invalid(`bad insecure registry '${h}': give host or host:port`);
  }
  return { caFile: caFile && resolve(caFile), insecure: hosts };
}

/** The manager options a host configuration gives (the caller adds its logger and background work). */
export function managerOptions(config: HostConfig): ManagerOptions {
  return {
    dataDir: config.dataDir,
    runtime: config.runtime,
    network: config.network && { ...config.network },
    pidsBudget: config.pidsBudget,
    runtimeBinaries: config.runtimeBinaries,
    runtimeTimeoutMs: config.runtimeTimeoutMs,
  };
}

/** The crash tests' fault point (CUBEBOX_FAULT): the process kills itself when it reaches it. */
export function faultOf(env: Env = process.env): string | undefined {
  return env.CUBEBOX_FAULT || undefined;
}

/** Each new volume's disk size (MiB), unless CUBEBOX_VOLUME_SIZE_MB says otherwise. */
export const DEFAULT_VOLUME_SIZE_MB = 1024;

function volumeSizeOf(text: string | undefined): number {
  const sizeMB = Number(text ?? DEFAULT_VOLUME_SIZE_MB);
  if (!Number.isInteger(sizeMB) || sizeMB < 16 || sizeMB > 1024 * 1024)
    throw invalid(`CUBEBOX_VOLUME_SIZE_MB must be an integer from 16 to 1048576, got ${sizeMB}`);
  return sizeMB;
}

/** What `cubebox serve` is given on its command line; anything left out comes from the environment. */
export interface ServeFlags extends RegistryFlags {
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
  /** CA certificates (PEM file) the egress proxy verifies destinations with, instead of the host's. */
  egressCa?: string;
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
  /** The shared store of teams, keys and secrets: a postgres:// URL (default: the data directory's SQLite file). */
  database?: string;
  /** What this process is in a cluster: api, node or all (default all: one process, today's service). */
  role?: string;
  /** The file holding the secret nodes and API replicas authenticate to each other with. */
  clusterSecretFile?: string;
  /** How API replicas reach this node (default http://<host>:<port>). */
  nodeUrl?: string;
  /** Seconds without a heartbeat after which an API replica reports a node's sandboxes lost. */
  nodeLease?: string;
  /** A node: the OCI registry (http(s)://host[:port][/prefix]) the cluster's nodes share teams' templates through. */
  registry?: string;
}

export interface ServeConfig extends Omit<HostConfig, 'network' | 'logLevel'> {
  host: string;
  port: number;
  dataPort: number | undefined;
  domain: string | undefined;
  buildBase: boolean;
  /** Built ahead at start besides base (code-interpreter); otherwise built on first request. */
  buildCodeInterpreter: boolean;
  pool: Record<string, number | PoolBounds>;
  creates: CreateLimits;
  /** ms; undefined: the manager's default (30 days). */
  pausedLifetimeMs: number | undefined;
  /** How long a template build waits for its start command to be ready, ms; undefined: the builder's default. */
  buildReadyTimeoutMs: number | undefined;
  logLevel: string;
  /** false: loopback only. */
  network: false | { subnet?: string; maxFlows?: number; allowPrivate: string[]; dnsUpstreams: Upstream[]; egressCa?: Buffer };
  /** Each new volume's disk size, MiB. */
  volumeSizeMB: number;
  tls?: { cert: string; key: string };
  connections: ConnectionLimits & { fdReserve: number };
  shutdownTimeoutMs: number;
  /** A postgres:// URL of the shared store (teams, keys, secrets); undefined: the data directory's SQLite file. */
  database: string | undefined;
  /** all: one process with everything (the default); api and node: the two halves of a cluster (cluster.ts). */
  role: Role;
  /**
   * api and node: the cluster's shared secret, this node's address as replicas reach it, and how
   * long a node may go unheard before a replica reports its sandboxes lost.
   */
  cluster: { secret: string; nodeUrl: string | undefined; leaseMs: number; templateRegistry?: string } | undefined;
}

export type Role = 'api' | 'node' | 'all';

export const DEFAULT_FD_RESERVE = 4096;
export const DEFAULT_SHUTDOWN_TIMEOUT_SEC = 20;

/** The one place serve's configuration is read: flags, then CUBEBOX_* variables, then defaults. */
export function serveConfig(flags: ServeFlags, env: Env = process.env): ServeConfig {
  const host = hostConfig(flags, env);
  const portText = flags.port ?? env.CUBEBOX_PORT ?? '3000';
  const dataPortText = flags.dataPort ?? env.CUBEBOX_DATA_PORT;
  return {
    ...host,
    host: flags.host ?? env.CUBEBOX_HOST ?? '127.0.0.1',
    port: parsePort(portText, 'port'),
    dataPort: dataPortText === undefined ? undefined : parsePort(dataPortText, 'data port'),
    domain: flags.domain ?? env.CUBEBOX_DOMAIN,
    buildBase: flags.base !== false,
    buildCodeInterpreter: parseTemplates(flags.templates ?? env.CUBEBOX_TEMPLATES ?? 'base').includes('code-interpreter'),
    pool: parsePool(flags.pool ?? env.CUBEBOX_POOL ?? DEFAULT_POOL),
    creates: {
      concurrency: optionalCount(flags.maxCreating ?? env.CUBEBOX_MAX_CREATING, 'max creating', 1, 256),
      queue: optionalCount(flags.createQueue ?? env.CUBEBOX_CREATE_QUEUE, 'create queue', 0, 100_000),
    },
    pausedLifetimeMs: parsePausedLifetime(flags.pausedLifetime ?? env.CUBEBOX_PAUSED_LIFETIME),
    buildReadyTimeoutMs: (optionalCount(env.CUBEBOX_BUILD_READY_TIMEOUT_SEC, 'build ready timeout', 1, 86_400) ?? 0) * 1000 || undefined,
    logLevel: host.logLevel ?? 'info',
    volumeSizeMB: volumeSizeOf(env.CUBEBOX_VOLUME_SIZE_MB),
    network:
      flags.network === false || host.network === false
        ? false
        : {
            subnet: flags.subnet ?? host.network.subnet,
            maxFlows: host.network.maxFlows,
            allowPrivate: (flags.allowPrivate ?? env.CUBEBOX_ALLOW_PRIVATE ?? '').split(',').filter(Boolean),
            dnsUpstreams: dnsUpstreamsOf(flags.dnsUpstream ?? env.CUBEBOX_DNS_UPSTREAM),
            egressCa: egressCaOf(flags.egressCa ?? env.CUBEBOX_EGRESS_CA),
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
    database: databaseOf(flags, env),
    ...clusterOf(flags, env),
    shutdownTimeoutMs:
      1000 * (optionalCount(flags.shutdownTimeout ?? env.CUBEBOX_SHUTDOWN_TIMEOUT, 'shutdown timeout', 1, 3600) ?? DEFAULT_SHUTDOWN_TIMEOUT_SEC),
  };
}

function egressCaOf(file: string | undefined): Buffer | undefined {
  if (!file) return undefined;
  try {
    return readFileSync(file);
  } catch (err) {
    throw new Error(`--egress-ca: cannot read '${file}': ${(err as Error).message}`);
  }
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

/**
 * The shared store's URL (--database, else CUBEBOX_DATABASE): postgres:// or postgresql:// for
 * PostgreSQL; absent, the data directory's SQLite file. The URL may carry a password: errors
 * never quote it.
 */
export function databaseOf(flags: { database?: string }, env: Env = process.env): string | undefined {
  const url = flags.database ?? (env.CUBEBOX_DATABASE || undefined);
  if (url !== undefined && !isPostgresUrl(url)) throw invalid('--database (CUBEBOX_DATABASE) takes a postgres:// or postgresql:// URL');
  return url;
}

/**
 * The role (--role, CUBEBOX_ROLE; default all) and, for api and node, what a cluster needs: the
 * shared PostgreSQL store, and the secret its members authenticate to each other with
 * (--cluster-secret-file, CUBEBOX_CLUSTER_SECRET_FILE: at least 32 characters, read once).
 */
function clusterOf(flags: ServeFlags, env: Env): Pick<ServeConfig, 'role' | 'cluster'> {
  const role = flags.role ?? (env.CUBEBOX_ROLE || 'all');
  if (role !== 'api' && role !== 'node' && role !== 'all') throw invalid(`bad --role '${role}': api, node or all`);
  const templateRegistry = flags.registry ?? (env.CUBEBOX_REGISTRY || undefined);
  if (role === 'all') {
    if (flags.registry) throw invalid('--registry is for the nodes of a cluster (--role node)');
    return { role, cluster: undefined };
  }
  if (role === 'node' && templateRegistry) new RegistryRepo(templateRegistry); // a bad URL refuses the start
  if (!databaseOf(flags, env)) throw invalid(`--role ${role} needs the cluster's PostgreSQL database (--database postgres://... or CUBEBOX_DATABASE)`);
  const file = flags.clusterSecretFile ?? (env.CUBEBOX_CLUSTER_SECRET_FILE || undefined);
  if (!file) throw invalid(`--role ${role} needs the cluster secret (--cluster-secret-file or CUBEBOX_CLUSTER_SECRET_FILE)`);
  let secret: string;
  try {
    secret = readFileSync(file, 'utf8').trim();
  } catch (err) {
    throw invalid(`cannot read the cluster secret file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  if (secret.length < 32) throw invalid(`the cluster secret in ${file} is too short: at least 32 characters (e.g. openssl rand -hex 32)`);
  const nodeUrl = flags.nodeUrl ?? (env.CUBEBOX_NODE_URL || undefined);
  if (nodeUrl !== undefined && !/^https?:\/\/[^/?#]+\/?$/.test(nodeUrl)) throw invalid(`bad --node-url '${nodeUrl}': http(s)://host:port`);
  // a wildcard listen address is no address to reach the node at
  const host = flags.host ?? env.CUBEBOX_HOST ?? '127.0.0.1';
  if (role === 'node' && nodeUrl === undefined && (host === '0.0.0.0' || host === '::'))
    throw invalid(`--role node listening on ${host} needs --node-url (CUBEBOX_NODE_URL): the address API replicas reach it at`);
  const lease = flags.nodeLease ?? (env.CUBEBOX_NODE_LEASE || '30');
  // shorter than a live node's heartbeat age would call a node that still takes creates lost
  if (!/^\d+$/.test(lease) || Number(lease) < 10 || Number(lease) > 86_400) throw invalid(`bad --node-lease '${lease}': whole seconds, 10 to 86400`);
  return {
    role,
    cluster: {
      secret,
      nodeUrl: nodeUrl?.replace(/\/$/, ''),
      leaseMs: Number(lease) * 1000,
      ...(role === 'node' && templateRegistry ? { templateRegistry } : {}),
    },
  };
}
