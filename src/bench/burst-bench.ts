// Bursts of creates: N concurrent Sandbox.create() through the service with the published SDK
// (with serve's default pool, then with a pool sized for the burst), next to N concurrent bare
// `<runtime> run -d` of a tiny busybox bundle in the same run; and single creates (cold and
// pooled) next to a single bare run.
import { type BenchService, type CreateOutcome, type PoolConfig, type SdkSandbox } from './harness.js';
import { emptyPart, figure, mapLimit, median, now, percentile, timed, type PartReport } from './report.js';

export interface BurstOptions {
  /** Creates in a burst. */
  burst: number;
  /** Single creates (c=1) of each kind. */
  iterations: number;
}

interface Burst {
  ms: number[];
  totalMs: number;
}

/** N bare containers started at once, then deleted at once. */
async function bareBurst(svc: BenchService, n: number): Promise<{ run: Burst; deleteMs: number }> {
  const bundles = Array.from({ length: n }, () => svc.bare.prepare());
  const t0 = now();
  const ms = await Promise.all(bundles.map((b) => timed(() => svc.bare.run(b))));
  const totalMs = now() - t0;
  const deleteMs = await timed(() => Promise.all(bundles.map((b) => svc.bare.delete(b.id))));
  return { run: { ms, totalMs }, deleteMs };
}

/** What the service saw of a burst: where each create came from, its own timings, its create gate. */
type ServerView = Record<string, number>;

/** N Sandbox.create() at once; the sandboxes are killed afterwards (timed apart). */
async function createBurst(svc: BenchService, n: number): Promise<{ burst: Burst; outcomes: CreateOutcome[]; killMs: number; server: ServerView }> {
  const counts0 = { ...svc.manager.createCounts };
  const ops0 = await svc.serverOps();
  const stopSampling = svc.sampleGate();
  const t0 = now();
  const outcomes = await Promise.all(Array.from({ length: n }, () => svc.create()));
  const totalMs = now() - t0;
  const gate = stopSampling();
  const ops1 = await svc.serverOps();
  const made = outcomes.map((o) => o.sandbox).filter((s): s is SdkSandbox => !!s);
  const killMs = await svc.kill(made, n);
  const ops2 = await svc.serverOps();
  const c = svc.manager.createCounts;
  const mean = (a: typeof ops0, b: typeof ops0, op: string) => {
    const count = (b[op]?.count ?? 0) - (a[op]?.count ?? 0);
    return count ? Math.round((((b[op]?.sum ?? 0) - (a[op]?.sum ?? 0)) / count) * 1000) : NaN;
  };
  const server: ServerView = {
    fromPool: c.pool - counts0.pool,
    provisioned: c.new - counts0.new,
    refusedByService: c.refused - counts0.refused,
    serviceCreateMeanMs: mean(ops0, ops1, 'create'),
    serviceKillMeanMs: mean(ops1, ops2, 'delete'),
    ...gate,
  };
  return { burst: { ms: outcomes.filter((o) => o.sandbox).map((o) => o.ms), totalMs }, outcomes, killMs, server };
}

/** How many sandboxes a pool configuration keeps ready when idle (a fixed size, or an adaptive pool's minimum). */
export function poolFloor(pool: PoolConfig): number {
  let n = 0;
  for (const v of Object.values(pool) as unknown[]) n += typeof v === 'number' ? v : ((v as { min?: number }).min ?? 0);
  return n;
}

const poolText = (pool: PoolConfig) =>
  Object.entries(pool as Record<string, unknown>)
    .map(([k, v]) => `${k}=${typeof v === 'number' ? v : `${(v as { min: number }).min}:${(v as { max: number }).max}`}`)
    .join(',') || 'none';

export async function burstBench(svc: BenchService, o: BurstOptions, log: (s: string) => void = () => undefined): Promise<PartReport> {
  const part = emptyPart();
  const n = o.burst;
  const rt = svc.bare.name;
  const m = svc.manager;

  log(`bare ${rt} run -d x${n}`);
  const bare = await bareBurst(svc, n);
  const bareP = { p50: percentile(bare.run.ms, 50), p99: percentile(bare.run.ms, 99) };
  const bareName = (stat: string) => `bare ${rt} run -d x${n} ${stat}`;

  const report = (key: string, label: string, b: Burst, outcomes: CreateOutcome[], server: ServerView) => {
    part.figures.push(
      figure(`burst.${key}.p50`, label, 'p50', percentile(b.ms, 50), 'ms', { name: bareName('p50'), value: bareP.p50 }),
      figure(`burst.${key}.p99`, label, 'p99', percentile(b.ms, 99), 'ms', { name: bareName('p99'), value: bareP.p99 }),
      figure(`burst.${key}.total`, label, 'total', b.totalMs, 'ms', { name: bareName('total'), value: bare.run.totalMs }),
    );
    part.counts[`${key}.ok`] = outcomes.filter((x) => x.sandbox).length;
    part.counts[`${key}.errors`] = outcomes.filter((x) => x.error).length;
    part.counts[`${key}.refused`] = outcomes.reduce((s, x) => s + x.refused, 0);
    part.counts[`${key}.retried`] = outcomes.filter((x) => x.refused > 0).length;
    for (const [k, v] of Object.entries(server)) part.facts[`${key}.${k}`] = v;
    const errors = [...new Set(outcomes.map((x) => x.error).filter(Boolean))];
    if (errors.length) part.notes.push(`${key} errors: ${errors.slice(0, 3).join(' | ')}`);
  };

  // 2. the default settings: serve's default pool, filled as it would be on an idle service
  const floor = poolFloor(svc.defaultPool);
  log(`default pool ${poolText(svc.defaultPool)}: filling`);
  part.facts.defaultPool = poolText(svc.defaultPool);
  part.facts['defaultPool.readyBeforeBurst'] = await svc.setPoolAndWait(svc.defaultPool, floor, 60_000 + floor * 5000);
  log(`Sandbox.create() x${n}, default pool`);
  const dflt = await createBurst(svc, n);
  const status = svc.poolStatus();
  if (status !== undefined) part.facts['defaultPool.afterBurstAndKills'] = JSON.stringify(status);
  report('default', `Sandbox.create() x${n}, default pool`, dflt.burst, dflt.outcomes, dflt.server);

  // 3. the pool sized for the burst
  log(`pool base=${n}: filling`);
  const fillMs = await timed(async () => (part.facts['sizedPool.readyBeforeBurst'] = await svc.setPoolAndWait({ base: n }, n, 120_000 + n * 5000, log)));
  part.facts['sizedPool.fillSeconds'] = Math.round(fillMs / 100) / 10;
  log(`Sandbox.create() x${n}, pool base=${n}`);
  const sized = await createBurst(svc, n);
  report('pooled', `Sandbox.create() x${n}, pool ${n} ready`, sized.burst, sized.outcomes, sized.server);
  const bareDelete = { name: `bare ${rt} delete -f x${n}`, value: bare.deleteMs };
  part.figures.push(
    figure('burst.kill.total', `Sandbox.kill() x${n} at once, after the default burst`, 'total', dflt.killMs, 'ms', bareDelete),
    figure('burst.killPooled.total', `Sandbox.kill() x${n} at once, after the pooled burst`, 'total', sized.killMs, 'ms', bareDelete),
  );

  // 4. N sandboxes killed at once with no pool to refill: the deletes alone against N bare deletes at once
  await svc.noPool();
  log(`${n} sandboxes for a delete burst`);
  const quiet = await mapLimit(Array.from({ length: n }), 4, () => svc.create());
  const quietMade = quiet.map((o) => o.sandbox).filter((s): s is SdkSandbox => !!s);
  log(`Sandbox.kill() x${quietMade.length} at once, no pool`);
  const ops0 = await svc.serverOps();
  const stopSampling = svc.sampleDeleteGate();
  const quietKillMs = await svc.kill(quietMade, n);
  const deleteGate = stopSampling();
  const ops1 = await svc.serverOps();
  const deletes = (ops1.delete?.count ?? 0) - (ops0.delete?.count ?? 0);
  part.figures.push(figure('burst.killQuiet.total', `Sandbox.kill() x${quietMade.length} at once, no pool refilling`, 'total', quietKillMs, 'ms', bareDelete));
  part.facts['killQuiet.serviceDeleteMeanMs'] = deletes ? Math.round((((ops1.delete?.sum ?? 0) - (ops0.delete?.sum ?? 0)) / deletes) * 1000) : NaN;
  for (const [k, v] of Object.entries(deleteGate)) part.facts[`killQuiet.${k}`] = v;
  part.counts['killQuiet.createErrors'] = quiet.filter((o) => o.error).length;

  // 5. one at a time: cold (no pool) and from the pool, next to a single bare run
  const bareOne: number[] = [];
  const cold: number[] = [];
  const coldErrors: string[] = [];
  for (let i = 0; i < o.iterations; i++) {
    const b = svc.bare.prepare();
    bareOne.push(await timed(() => svc.bare.run(b)));
    await svc.bare.delete(b.id);
    const c = await svc.create();
    if (c.sandbox) {
      cold.push(c.ms);
      await c.sandbox.kill();
    } else coldErrors.push(c.error ?? '?');
    log(`cold create ${i + 1}/${o.iterations}`);
  }
  const pooled: number[] = [];
  for (let i = 0; i < o.iterations; i++) {
    await svc.setPoolAndWait({ base: 1 }, 1, 60_000);
    const c = await svc.create();
    if (c.sandbox) {
      pooled.push(c.ms);
      await c.sandbox.kill();
    } else coldErrors.push(c.error ?? '?');
    log(`pooled create ${i + 1}/${o.iterations}`);
  }
  await svc.noPool();
  const bareOneName = `bare ${rt} run -d c=1 median`;
  part.figures.push(
    figure('burst.cold1.median', 'Sandbox.create() c=1, no pool', 'median', median(cold), 'ms', { name: bareOneName, value: median(bareOne) }),
    figure('burst.pooled1.p50', 'Sandbox.create() c=1, from the pool', 'p50', percentile(pooled, 50), 'ms', { name: bareOneName, value: median(bareOne) }),
  );
  part.counts['single.errors'] = coldErrors.length;
  if (coldErrors.length) part.notes.push(`single create errors: ${[...new Set(coldErrors)].slice(0, 3).join(' | ')}`);
  part.facts.sandboxesLeft = m.list().length;
  return part;
}
