import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { DataPlaneProxy } from '../proxy/proxy.js';
import type { SandboxManager } from '../sandbox/manager.js';
import { registerDatabaseMetrics } from '../store/pg/metrics.js';

/**
 * The service's own metrics in Prometheus' text format (`GET /metrics`): sandboxes by
 * state, lifecycle operation latencies and failures, data-plane traffic, the process.
 * Aggregates only: no ids, tokens or metadata.
 */
export class ServiceMetrics {
  readonly registry = new Registry();
  private readonly opSeconds: Histogram<'op'>;
  private readonly opFailures: Counter<'op'>;

  constructor(manager: SandboxManager, proxy: DataPlaneProxy) {
    collectDefaultMetrics({ register: this.registry, prefix: 'cubebox_process_' });
    new Gauge({
      name: 'cubebox_sandboxes',
      help: 'Sandboxes by state',
      labelNames: ['state'],
      registers: [this.registry],
      collect() {
        this.reset();
        for (const s of manager.list()) this.inc({ state: s.state });
      },
    });
    new Gauge({
      name: 'cubebox_templates',
      help: 'Templates',
      registers: [this.registry],
      collect() {
        this.set(manager.templates.list().length);
      },
    });
    // creates: the warm pool, the gate that bounds provisioning, and what was refused
    const pools = () => manager.poolStatus();
    new Gauge({
      name: 'cubebox_pool_target',
      help: 'Warm pool size now, by template (adaptive pools move between their bounds)',
      labelNames: ['template'],
      registers: [this.registry],
      collect() {
        this.reset();
        for (const p of pools()) this.set({ template: p.template }, p.target);
      },
    });
    new Gauge({
      name: 'cubebox_pool_ready',
      help: 'Pooled sandboxes ready to be claimed, by template',
      labelNames: ['template'],
      registers: [this.registry],
      collect() {
        this.reset();
        for (const p of pools()) this.set({ template: p.template }, p.ready);
      },
    });
    new Gauge({
      name: 'cubebox_creates_in_progress',
      help: 'Sandboxes being provisioned now (creates and pool refills)',
      registers: [this.registry],
      collect() {
        this.set(manager.gate.inFlight);
      },
    });
    new Gauge({
      name: 'cubebox_creates_waiting',
      help: 'Creates waiting for a provisioning turn',
      registers: [this.registry],
      collect() {
        this.set(manager.gate.queued);
      },
    });
    new Gauge({
      name: 'cubebox_creates',
      help: 'Creates since the service started, by outcome: served from the pool, provisioned on demand, refused for capacity',
      labelNames: ['outcome'],
      registers: [this.registry],
      collect() {
        for (const [outcome, n] of Object.entries(manager.createCounts)) this.set({ outcome }, n);
      },
    });
    const traffic = () => [...proxy.stats().values()];
    new Gauge({
      name: 'cubebox_dataplane_open_streams',
      help: 'Proxied requests and streams open now',
      registers: [this.registry],
      collect() {
        this.set(traffic().reduce((n, t) => n + t.open, 0));
      },
    });
    // sandbox networking, per-sandbox-free totals since the service's nft table was made
    const netTotals = async () =>
      (await manager
        .network()
        ?.totals()
        .catch(() => undefined)) ?? { egressBytes: 0, deniedPackets: 0 };
    new Gauge({
      name: 'cubebox_network_egress_bytes',
      help: 'Bytes sandboxes sent out of their network links (all sandboxes together)',
      registers: [this.registry],
      async collect() {
        this.set((await netTotals()).egressBytes);
      },
    });
    new Gauge({
      name: 'cubebox_network_denied_packets',
      help: 'Packets of connections the egress policy refused (all sandboxes together)',
      registers: [this.registry],
      async collect() {
        this.set((await netTotals()).deniedPackets);
      },
    });
    new Counter({
      name: 'cubebox_egress_proxy_connections_total',
      help: "Sandbox connections through the egress proxy, by outcome (injected: requests given a rule's headers; refused_name: SNI/Host not allowed; tunnelled: sent through an upstream proxy, tunnel_failed: that proxy refused or was not reached)",
      labelNames: ['outcome'],
      registers: [this.registry],
      collect() {
        const c = manager.network()?.egress?.counts;
        this.reset();
        if (c)
          for (const [outcome, n] of Object.entries({
            injected: c.injected,
            passed_through: c.passedThrough,
            refused_name: c.refusedName,
            refused_other: c.refusedOther,
            tunnelled: c.tunnelled,
            tunnel_failed: c.tunnelFailed,
          }))
            this.inc({ outcome }, n);
      },
    });
    new Gauge({
      name: 'cubebox_dataplane_bytes',
      help: 'Data-plane body bytes of the sandboxes that exist now, by direction',
      labelNames: ['direction'],
      registers: [this.registry],
      collect() {
        const t = traffic();
        this.set(
          { direction: 'in' },
          t.reduce((n, x) => n + x.bytesIn, 0),
        );
        this.set(
          { direction: 'out' },
          t.reduce((n, x) => n + x.bytesOut, 0),
        );
      },
    });
    registerDatabaseMetrics(this.registry, { heartbeats: true }); // no samples unless the store is PostgreSQL
    this.opSeconds = new Histogram({
      name: 'cubebox_operation_seconds',
      help: 'Lifecycle operation latency',
      labelNames: ['op'],
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers: [this.registry],
    });
    this.opFailures = new Counter({
      name: 'cubebox_operation_failures_total',
      help: 'Failed lifecycle operations',
      labelNames: ['op'],
      registers: [this.registry],
    });
  }

  /** Times a lifecycle operation (create, pause, resume, delete, connect, snapshot, fork). */
  async time<T>(op: string, fn: () => Promise<T>): Promise<T> {
    const end = this.opSeconds.startTimer({ op });
    try {
      return await fn();
    } catch (err) {
      this.opFailures.inc({ op });
      throw err;
    } finally {
      end();
    }
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
