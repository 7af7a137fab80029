// The shared store's load as Prometheus metrics (aggregates only): statements this process sent
// by pool, and a node's heartbeats. Registered by the node's metrics and an API replica's.
import { Counter, type Registry } from 'prom-client';
import { heartbeatCounts } from './nodes.js';
import { dbStatements } from './pool.js';

/** `heartbeats`: a node's (an API replica sends none). */
export function registerDatabaseMetrics(registry: Registry, opts: { heartbeats: boolean }): void {
  new Counter({
    name: 'cubebox_db_statements_total',
    help: 'Statements this process sent to PostgreSQL, by pool (store: teams, keys, secrets; cluster: heartbeats, placement, routes); BEGIN and COMMIT count',
    labelNames: ['pool'],
    registers: [registry],
    collect() {
      this.reset();
      for (const [pool, n] of dbStatements) this.inc({ pool }, n);
    },
  });
  if (!opts.heartbeats) return;
  new Counter({
    name: 'cubebox_cluster_heartbeats_total',
    help: "This node's heartbeats to the cluster registry, by outcome (written, failed)",
    labelNames: ['outcome'],
    registers: [registry],
    collect() {
      this.reset();
      for (const [outcome, n] of Object.entries(heartbeatCounts)) this.inc({ outcome }, n);
    },
  });
}
