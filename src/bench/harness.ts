// The service the burst, throughput and density benches drive: an in-process manager served
// on a temporary data directory (by the composition root's serveNode, as `cubebox serve` does), the published e2b
// SDK pointed at it, the bare-runtime baseline, and the clean-up that checks nothing is left.
import diagnostics_channel from 'node:diagnostics_channel';
import { mkdtempSync, rmdirSync, rmSync } from 'node:fs';
import { dirname } from 'node:path';
import { ApiKeys } from '../api/keys.js';
import type { RunningServer } from '../api/server.js';
import { setTeamQuota } from '../api/tenancy.js';
import { sqliteSharedStore } from '../store/shared-sqlite.js';
import { formatLeaks, LeakChecker } from '../sandbox/leaks.js';
import { SandboxManager, type ManagerOptions } from '../sandbox/manager.js';
import { Store } from '../store/store.js';
import { BareRuntime } from './bare.js';
import { mapLimit, now, sleep, type CleanupReport } from './report.js';

type E2B = typeof import('e2b');
export type Sdk = E2B['Sandbox'];
export type SdkSandbox = Awaited<ReturnType<Sdk['create']>>;
export type PoolConfig = Parameters<SandboxManager['setPool']>[0];

/** Header the bench puts on its creates, to tell which create a refusal answered. */
const TAG_HEADER = 'x-cubebox-bench-create';

/** A refusal (429 or 503) the SDK received from the control plane, seen on the client side. */
export interface Refusal {
  status: number;
  retryAfterS: number | undefined;
  tag: string | undefined;
}

/**
 * Every 429 and 503 answer to a create, as the SDK's HTTP client (undici) received them,
 * including those the SDK retried by itself after Retry-After.
 */
class RefusalLog {
  readonly all: Refusal[] = [];
  private readonly onHeaders = (message: unknown) => {
    const { request, response } = message as {
      request: { method?: string; path?: string; headers?: unknown };
      response: { statusCode: number; headers: unknown };
    };
    if (response.statusCode !== 429 && response.statusCode !== 503) return;
    if (request.method !== 'POST' || !/^\/sandboxes(\?|$)/.test(request.path ?? '')) return;
    this.all.push({
      status: response.statusCode,
      retryAfterS: Number(header(response.headers, 'retry-after')) || undefined,
      tag: header(request.headers, TAG_HEADER),
    });
  };

  constructor() {
    diagnostics_channel.subscribe('undici:request:headers', this.onHeaders);
  }

  close(): void {
    diagnostics_channel.unsubscribe('undici:request:headers', this.onHeaders);
  }

  /** The Retry-After of the last refusal of a tagged create. */
  retryAfter(tag: string): number | undefined {
    for (let i = this.all.length - 1; i >= 0; i--) if (this.all[i]!.tag === tag) return this.all[i]!.retryAfterS;
    return undefined;
  }
}

/** A header's value from undici's flat [name, value, ...] lists (strings or buffers) or a raw header block. */
function header(headers: unknown, name: string): string | undefined {
  if (Array.isArray(headers)) {
    for (let i = 0; i + 1 < headers.length; i += 2) if (String(headers[i]).toLowerCase() === name) return String(headers[i + 1]);
    return undefined;
  }
  if (typeof headers === 'string') return headers.match(new RegExp(`^${name}:\\s*(.*?)\\r?$`, 'im'))?.[1];
  return undefined;
}

/** How one create through the SDK went, retries included. */
export interface CreateOutcome {
  ms: number;
  sandbox?: SdkSandbox;
  error?: string;
  /** 429/503 answers this create got (the SDK's own retries and the bench's). */
  refused: number;
}

/** What the bench is given of the node's configuration and composition (by the CLI). */
export interface BenchNode {
  /** The manager options configuration gives (runtime, network, logger, ...), without a data directory. */
  manager: Omit<ManagerOptions, 'dataDir'>;
  /** Where template builds keep what makes rebuilds fast. */
  cacheDir: string;
  /** Serves a manager as `cubebox serve` does (its node API and listeners). */
  serve(manager: SandboxManager, opts: { host: string; port: number }): Promise<RunningServer>;
}

export interface HarnessOptions {
  node: BenchNode;
  /** The pool `cubebox serve` starts with by default (from its configuration). */
  defaultPool: PoolConfig;
  log: (s: string) => void;
}

export class BenchService {
  readonly refusals = new RefusalLog();
  private tagSeq = 0;

  private constructor(
    readonly manager: SandboxManager,
    readonly server: RunningServer,
    readonly Sandbox: Sdk,
    /** The bench key's team (sandboxes the manager makes for the SDK to reach are given it). */
    readonly team: string,
    readonly bare: BareRuntime,
    readonly dataDir: string,
    readonly defaultPool: PoolConfig,
  ) {}

  /**
   * Opens a manager on a new data directory under /var/tmp (the base and busybox templates),
   * serves it on a loopback port and points the SDK at it with a key of a team whose quota
   * does not get in the way (the default quota is 20 sandboxes: a 429 that waiting cannot clear).
   */
  static async open(opts: HarnessOptions): Promise<BenchService> {
    const dataDir = mkdtempSync('/var/tmp/cubebox-bench-');
    let manager: SandboxManager | undefined;
    try {
      manager = await SandboxManager.open({
        ...opts.node.manager,
        dataDir,
        reconcileIntervalMs: 5000,
        reaperIntervalMs: 250,
        deleteStopped: true,
        network: { warmSlots: 4 },
      });
      opts.log('preparing the base template');
      await manager.templates.addDebianBase('base', { cacheDir: opts.node.cacheDir });
      const busybox = await manager.templates.addBusybox('busybox');
      const server = await opts.node.serve(manager, { host: '127.0.0.1', port: 0 });
      const shared = sqliteSharedStore(manager.store);
      const { key, info } = await new ApiKeys(shared).create('bench', { team: 'bench' });
      const big = 1_000_000_000;
      await setTeamQuota(shared, 'bench', { sandboxes: big, vcpus: big, memoryMB: big, diskMB: big });
      process.env.E2B_API_KEY = key;
      process.env.E2B_API_URL = server.url;
      process.env.E2B_SANDBOX_URL = server.url;
      delete process.env.E2B_DEBUG;
      const { Sandbox } = await import('e2b');
      const bare = new BareRuntime(manager, dataDir, busybox.layers[0]!, opts.node.manager.runtimeBinaries?.[manager.runtime.name]);
      return new BenchService(manager, server, Sandbox, info.team, bare, dataDir, opts.defaultPool);
    } catch (err) {
      if (manager) {
        await closeManager(manager);
        rmSync(manager.paths.runRoot, { recursive: true, force: true });
      }
      rmSync(dataDir, { recursive: true, force: true });
      throw err;
    }
  }

  /** Pooled sandboxes of a template ready now. */
  pooled(template = 'base'): number {
    return this.manager.list().filter((s) => s.state === 'pooled' && s.templateName === template).length;
  }

  /** Sets the pool and waits until `want` are pooled (at most timeoutMs); returns how many are. */
  async setPoolAndWait(pool: PoolConfig, want: number, timeoutMs: number, log: (s: string) => void = () => undefined): Promise<number> {
    this.manager.setPool(pool);
    const until = now() + timeoutMs;
    for (;;) {
      const n = this.pooled();
      if (n >= want || now() > until) return n;
      log(`pool filling ${n}/${want}`);
      await sleep(100);
    }
  }

  /** No pool, and the pooled sandboxes given back. */
  async noPool(): Promise<void> {
    this.manager.setPool({});
    for (let i = 0; i < 300 && this.pooled() + this.manager.list().filter((s) => s.state === 'creating').length > 0; i++) await sleep(100);
    for (const s of this.manager.list()) if (s.state === 'pooled') await this.manager.delete(s.id).catch(() => undefined);
  }

  /** The manager's view of its pools when it gives one (target and ready per template). */
  poolStatus(): unknown {
    const m = this.manager as unknown as { poolStatus?: () => unknown };
    return m.poolStatus?.();
  }

  /**
   * Sandbox.create() with the SDK's defaults, as a client would: a 429 with Retry-After is
   * retried by the SDK itself; a refusal it gives up on (or a 503) is retried here after
   * the Retry-After it carried (1 s without one) until giveUpMs have passed.
   */
  async create(opts: { timeoutMs?: number } = {}, giveUpMs = 120_000): Promise<CreateOutcome> {
    const tag = String(this.tagSeq++);
    const t0 = now();
    const refusedBefore = () => this.refusals.all.filter((r) => r.tag === tag).length;
    for (;;) {
      try {
        const sandbox = await this.Sandbox.create({ ...opts, apiHeaders: { [TAG_HEADER]: tag } });
        return { ms: now() - t0, sandbox, refused: refusedBefore() };
      } catch (err) {
        const status = (err as { statusCode?: number }).statusCode;
        if ((status === 429 || status === 503) && now() - t0 < giveUpMs) {
          await sleep((this.refusals.retryAfter(tag) ?? 1) * 1000);
          continue;
        }
        return { ms: now() - t0, error: (err as Error).message, refused: refusedBefore() };
      }
    }
  }

  /** The service's own lifecycle timings so far (Prometheus cubebox_operation_seconds): seconds and count per operation. */
  async serverOps(): Promise<Record<string, { sum: number; count: number }>> {
    const res = await fetch(`${this.server.url}/metrics`, { headers: { 'X-API-KEY': process.env.E2B_API_KEY ?? '' } });
    const text = await res.text();
    const out: Record<string, { sum: number; count: number }> = {};
    for (const m of text.matchAll(/^cubebox_operation_seconds_(sum|count)\{op="([a-z_-]+)"\} ([0-9.e+-]+)$/gm)) {
      const o = (out[m[2]!] ??= { sum: 0, count: 0 });
      o[m[1] as 'sum' | 'count'] = Number(m[3]);
    }
    return out;
  }

  /** Samples the create gate (provisionings in progress, creates waiting) until the returned stop() is called. */
  sampleGate(everyMs = 50): () => { meanInProgress: number; maxInProgress: number; maxWaiting: number } {
    const inFlight: number[] = [];
    let maxWaiting = 0;
    const gate = this.manager.gate;
    const timer = setInterval(() => {
      inFlight.push(gate.inFlight);
      maxWaiting = Math.max(maxWaiting, gate.queued);
    }, everyMs);
    return () => {
      clearInterval(timer);
      const mean = inFlight.length ? inFlight.reduce((a, b) => a + b, 0) / inFlight.length : 0;
      return { meanInProgress: Math.round(mean * 10) / 10, maxInProgress: Math.max(0, ...inFlight), maxWaiting };
    };
  }

  /** Samples the delete gate (teardowns in progress, waiting) until the returned stop() is called. */
  sampleDeleteGate(everyMs = 50): () => { maxDeletesInProgress: number; maxDeletesWaiting: number } {
    let inFlight = 0;
    let waiting = 0;
    const gate = this.manager.deleteGate;
    const timer = setInterval(() => {
      inFlight = Math.max(inFlight, gate.inFlight);
      waiting = Math.max(waiting, gate.queued);
    }, everyMs);
    return () => {
      clearInterval(timer);
      return { maxDeletesInProgress: inFlight, maxDeletesWaiting: waiting };
    };
  }

  /** Kills sandboxes through the SDK, a few at a time; returns the wall time in ms. */
  async kill(sandboxes: SdkSandbox[], concurrency = 16): Promise<number> {
    const t0 = now();
    await mapLimit(sandboxes, concurrency, (s) => s.kill().catch(() => undefined));
    return now() - t0;
  }

  /**
   * Deletes everything the run made: sandboxes, bare containers, the manager; checks the
   * instance with the leak checker, and removes the data directory and runtime root.
   */
  async close(): Promise<CleanupReport> {
    this.refusals.close();
    const report: CleanupReport = {
      dataDirs: [this.dataDir],
      runRoots: [this.manager.paths.runRoot],
      sandboxesLeft: 0,
      leaks: [],
      bareMarker: this.bare.marker,
    };
    const leftBare = await this.bare.deleteAll();
    report.leaks.push(...leftBare.map((id) => `bare container ${id}`));
    await this.server.close();
    report.sandboxesLeft = await deleteAllSandboxes(this.manager);
    const paths = this.manager.paths;
    await closeManager(this.manager, false);
    const store = new Store(paths.db);
    try {
      report.leaks.push(...formatLeaks(new LeakChecker(paths, store).instance()).split('\n').filter(Boolean));
    } finally {
      store.close();
    }
    rmSync(paths.runRoot, { recursive: true, force: true });
    rmSync(this.dataDir, { recursive: true, force: true });
    try {
      rmdirSync(dirname(paths.runRoot)); // /run/cubebox, once no instance uses it
    } catch {
      /* other instances remain */
    }
    return report;
  }
}

/** Deletes every sandbox of the manager (a few at a time); returns how many it still lists. */
export async function deleteAllSandboxes(m: SandboxManager, concurrency = 8): Promise<number> {
  m.setPool({});
  for (let round = 0; round < 3 && m.list().length; round++) {
    await mapLimit(m.list(), concurrency, (s) => m.delete(s.id).catch(() => undefined));
    if (m.list().length) await sleep(500); // a refill that was under way when the pool was emptied
  }
  return m.list().length;
}

async function closeManager(m: SandboxManager, deleteFirst = true): Promise<void> {
  if (deleteFirst) await deleteAllSandboxes(m);
  await m.close();
}
