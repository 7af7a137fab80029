// `serve --role api`: an API replica. No data directory, no sandboxes: the cluster registry in
// the shared PostgreSQL store and the router over it (cluster/router.ts), on one listener.
import { readFileSync } from 'node:fs';
import pino, { type Logger } from 'pino';
import { ClusterRegistry } from '../store/pg/nodes.js';
import { startRouter } from '../cluster/router.js';
import { redactUrl } from '../store/shared.js';
import type { ServeConfig } from './config.js';

export interface RunningReplica {
  url: string;
  log: Logger;
  close(): Promise<void>;
}

export async function startReplica(config: ServeConfig): Promise<RunningReplica> {
  const log = pino({ level: config.logLevel });
  if (!config.cluster || !config.database) throw new Error('an API replica needs the cluster secret and the database'); // serveConfig checked both
  const registry = await ClusterRegistry.open(config.database, log);
  const { connections } = config;
  const router = await startRouter({
    registry,
    secret: config.cluster.secret,
    leaseMs: config.cluster.leaseMs,
    host: config.host,
    port: config.port,
    log,
    tls: config.tls && { cert: readFileSync(config.tls.cert), key: readFileSync(config.tls.key) },
    connections: { maxConnections: connections.maxConnections, maxPerAddress: connections.maxPerAddress, headerTimeoutMs: connections.headerTimeoutMs },
  }).catch(async (err: unknown) => {
    await registry.close();
    throw err;
  });
  log.info({ url: router.url, role: 'api', database: redactUrl(config.database) }, 'cubebox serve ready');
  return {
    url: router.url,
    log,
    async close() {
      await router.close();
      await registry.close();
    },
  };
}
