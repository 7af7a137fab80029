// What every bench part shares: timing and percentiles, the figure each part reports (a value
// next to a baseline measured in the same run, and their ratio), the text table and the one
// JSON document `cubebox bench --json` prints.
import { cpus, loadavg, release, totalmem } from 'node:os';

/** A row of the lifecycle benches: a median next to an optional baseline median. */
export interface BenchRow {
  name: string;
  medianMs: number;
  baselineName?: string;
  baselineMs?: number;
}

export type Unit = 'ms' | 's' | 'ops/s' | 'MiB' | 'KiB';

/** One measured figure; ratio is value / baseline.value (for a rate, below 1 is slower). */
export interface Figure {
  /** Stable identifier for scripts: `<part>.<what>[.<stat>]`. */
  id: string;
  name: string;
  /** p50, p99, median, total, rate, mean... */
  stat: string;
  value: number;
  unit: Unit;
  baseline?: { name: string; value: number };
  ratio?: number;
}

export interface PartReport {
  figures: Figure[];
  /** Counts that are not timings: refused creates, errors, sandboxes that fit. */
  counts: Record<string, number>;
  /** Anything else the part found (what the pool was, where a run stopped). */
  facts: Record<string, string | number | boolean | null>;
  notes: string[];
  /** A part's structured breakdown, for --json only (the text report shows it in its notes). */
  detail?: unknown;
}

export function emptyPart(): PartReport {
  return { figures: [], counts: {}, facts: {}, notes: [] };
}

export const median = (xs: number[]): number => {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
};

/** Nearest-rank percentile (p in 0..100) of a sample; NaN when empty. */
export function percentile(xs: number[], p: number): number {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * s.length);
  return s[Math.min(s.length - 1, Math.max(0, rank - 1))]!;
}

export const now = (): number => Number(process.hrtime.bigint()) / 1e6;

export async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t = now();
  await fn();
  return now() - t;
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Runs fn over items with at most `limit` in flight; results in item order. */
export async function mapLimit<T, R>(items: T[], limit: number, fn: (item: T, i: number) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    for (let i = next++; i < items.length; i = next++) out[i] = await fn(items[i]!, i);
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
  return out;
}

/** A figure with its ratio to the baseline (when there is one). */
export function figure(id: string, name: string, stat: string, value: number, unit: Unit, baseline?: { name: string; value: number }): Figure {
  const f: Figure = { id, name, stat, value: round(value), unit };
  if (baseline) {
    f.baseline = { name: baseline.name, value: round(baseline.value) };
    if (Number.isFinite(value) && Number.isFinite(baseline.value) && baseline.value > 0) f.ratio = round(value / baseline.value);
  }
  return f;
}

function round(x: number): number {
  return Number.isFinite(x) ? Math.round(x * 1000) / 1000 : x;
}

const slug = (s: string) =>
  s
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-|-$/g, '');

/** The lifecycle benches' rows as figures (medians in ms). */
export function rowsToPart(part: string, rows: BenchRow[], notes: string[] = []): PartReport {
  const seen = new Map<string, number>();
  const figures = rows.map((r) => {
    let id = `${part}.${slug(r.name)}`;
    const n = (seen.get(id) ?? 0) + 1;
    seen.set(id, n);
    if (n > 1) id += `.${slug(r.baselineName ?? String(n))}`;
    return figure(id, r.name, 'median', r.medianMs, 'ms', r.baselineMs !== undefined ? { name: r.baselineName ?? '', value: r.baselineMs } : undefined);
  });
  return { ...emptyPart(), figures, notes };
}

function fmtValue(v: number, unit: Unit): string {
  if (!Number.isFinite(v)) return 'n/a';
  const digits = unit === 'ms' ? (v < 100 ? 1 : 0) : unit === 'ops/s' ? (v < 10 ? 2 : 0) : unit === 's' ? 2 : 1;
  return `${v.toFixed(digits)} ${unit}`;
}

/** A part as a text table: figure, stat, value, baseline, its value, ratio. */
export function formatPart(title: string, p: PartReport): string {
  const rows = p.figures.map((f) => [
    f.name,
    f.stat,
    fmtValue(f.value, f.unit),
    f.baseline?.name ?? '',
    f.baseline ? fmtValue(f.baseline.value, f.unit) : '',
    f.ratio !== undefined ? `${f.ratio.toFixed(2)}x` : '',
  ]);
  const head = ['figure', 'stat', 'value', 'baseline (same run)', 'value', 'ratio'];
  const width = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const right = [false, false, true, false, true, true];
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (right[i] ? c.padStart(width[i]!) : c.padEnd(width[i]!)))
      .join('  ')
      .trimEnd();
  const out = [`== ${title}`, line(head), ...rows.map(line)];
  const counts = Object.entries(p.counts);
  if (counts.length) out.push(`counts: ${counts.map(([k, v]) => `${k} ${v}`).join(', ')}`);
  const facts = Object.entries(p.facts);
  if (facts.length) out.push(...facts.map(([k, v]) => `${k}: ${v}`));
  out.push(...p.notes);
  return out.join('\n');
}

/** The machine a run was made on, with the load average when it started and ended. */
export interface MachineInfo {
  cpus: number;
  cpuModel: string;
  memTotalMiB: number;
  kernel: string;
  node: string;
  runtime: string;
  loadavgStart: number[];
  loadavgEnd?: number[];
}

export function machineInfo(runtime: string): MachineInfo {
  return {
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model ?? '?',
    memTotalMiB: Math.round(totalmem() / 2 ** 20),
    kernel: release(),
    node: process.version,
    runtime,
    loadavgStart: loadavg().map((x) => Math.round(x * 100) / 100),
  };
}

/** The document `cubebox bench --json` prints: one per run. */
export interface BenchDocument {
  version: 1;
  startedAt: string;
  durationS?: number;
  machine: MachineInfo;
  options: Record<string, unknown>;
  parts: Record<string, PartReport>;
  /** What the run made and removed again, checked at its end. */
  cleanup: CleanupReport;
}

export interface CleanupReport {
  dataDirs: string[];
  runRoots: string[];
  /** Sandboxes the manager still listed after the last delete (expected 0). */
  sandboxesLeft: number;
  /** What the leak checker found of the instances afterwards (expected none). */
  leaks: string[];
  /** The argument the bare containers' process ran with, unique to the run (to look for leftovers). */
  bareMarker?: string;
}

export function emptyCleanup(): CleanupReport {
  return { dataDirs: [], runRoots: [], sandboxesLeft: 0, leaks: [] };
}
