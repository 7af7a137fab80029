// The shared store's load as Prometheus metrics (aggregates only): statements this process sent
// by pool, and a node's heartbeats. Registered by the node's metrics and an API replica's.
import pg from 'pg';
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
      this.inc({ outcome: 'written' }, heartbeatCounts.written);
      this.inc({ outcome: 'failed' }, heartbeatCounts.failed);
    },
  });
  new Counter({
    name: 'cubebox_cluster_heartbeat_statements_total',
    help: "Statements this node's written heartbeats sent",
    registers: [registry],
    collect() {
      this.reset();
      this.inc(heartbeatCounts.statements);
    },
  });
}

/** The server's own count of rows written, for the bench (one connection of its own). */
export interface RowCounter {
  /** Rows inserted, updated and deleted in all tables so far (each backend flushes its share at least every second it works). */
  rowsWritten(): Promise<number>;
  close(): Promise<void>;
}

export async function openRowCounter(url: string): Promise<RowCounter> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  return {
    async rowsWritten() {
      const [r] = (await client.query<{ n: string }>('SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) AS n FROM pg_stat_user_tables')).rows;
      return Number(r?.n ?? 0);
    },
    close: () => client.end(),
  };
}
