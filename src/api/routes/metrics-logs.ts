// A sandbox's metrics (sampled from its cgroup) and its console log, read by bounded range.
import type { FastifyInstance } from 'fastify';
import type { SandboxInfo } from '../../sandbox/types.js';
import type { MetricSample } from '../../sandbox/metrics.js';
import { sandboxIdOf } from '../../protocol/ids.js';
import { invalid } from '../../util/errors.js';
import { DEFAULT_LOG_LINES, MAX_LOG_LINES, readConsoleLog, type LogRange } from '../logs.js';
import { one, type Query, type Req, type RouteContext } from './context.js';

/** Sandboxes one GET /sandboxes/metrics may name. */
const MAX_METRICS_IDS = 100;

export function registerMetricsLogsRoutes(app: FastifyInstance, ctx: RouteContext): void {
  const { sandboxes, metrics, idOf, visible, usable, diskSizeMB } = ctx;

  const metricBody = (info: SandboxInfo, m: MetricSample) => ({
    timestamp: new Date(m.ts).toISOString(),
    timestampUnix: Math.floor(m.ts / 1000),
    cpuCount: m.cpuCount,
    cpuUsedPct: m.cpuUsedPct,
    memUsed: m.memUsed,
    memTotal: m.memTotal,
    memCache: m.memCache,
    diskUsed: m.diskUsed,
    diskTotal: diskSizeMB(info) * 1024 * 1024,
  });
  /**
   * The latest metric of each running sandbox named (`sandbox_ids=a,b`, or the parameter
   * repeated as the SDK's client sends an array); unknown, other teams' and paused sandboxes
   * are left out, as E2B leaves out what is not running.
   */
  app.get('/sandboxes/metrics', async (req: Req) => {
    const raw = req.query.sandbox_ids;
    const ids = [
      ...new Set(
        (Array.isArray(raw) ? raw : [raw ?? ''])
          .flatMap((v) => v.split(','))
          .map((v) => v.trim())
          .filter(Boolean),
      ),
    ];
    if (!ids.length) throw invalid('sandbox_ids is required: a comma-separated list of sandbox ids');
    if (ids.length > MAX_METRICS_IDS) throw invalid(`sandbox_ids names ${ids.length} sandboxes, at most ${MAX_METRICS_IDS} at once`);
    const out: Record<string, unknown> = {};
    for (const raw of ids) {
      const id = sandboxIdOf(raw);
      if (!id) continue;
      let info: SandboxInfo;
      try {
        info = visible(req, id);
      } catch {
        continue;
      }
      if (info.state !== 'running') continue;
      const m = metrics.latest(id);
      if (m) out[id] = metricBody(info, m);
    }
    return { sandboxes: out };
  });
  app.get('/sandboxes/:id/metrics', async (req: Req) => {
    const id = idOf(req);
    const info = visible(req, id);
    const sec = (k: string) => {
      const v = one(req.query[k]);
      if (v === undefined) return undefined;
      const n = Number(v);
      if (!Number.isFinite(n)) throw invalid(`${k} must be a unix timestamp in seconds`);
      return n * 1000;
    };
    return metrics.range(id, sec('start'), sec('end')).map((m) => metricBody(info, m));
  });

  /**
   * The console log by range, read asynchronously and bounded (lines and bytes): E2B's `start`
   * (v1) or `cursor` (v2) in ms, `limit`, and v2's `direction`. Lines carry the log's last write
   * time (the console keeps no per-line times): with a start at or before it the read goes
   * forward from the beginning; with none (or `direction=backward`) it is the tail.
   */
  const logs = async (id: string, q: Query, startKey: 'start' | 'cursor') => {
    const limitRaw = one(q.limit);
    const limit = limitRaw === undefined ? DEFAULT_LOG_LINES : Number(limitRaw);
    if (!Number.isInteger(limit) || limit < 0) throw invalid('limit must be a non-negative integer');
    const startRaw = one(q[startKey]);
    const start = startRaw === undefined || startRaw === '' ? undefined : Number(startRaw);
    if (start !== undefined && !Number.isFinite(start)) throw invalid(`${startKey} must be a timestamp in milliseconds`);
    const direction = one(q.direction);
    if (direction !== undefined && direction !== 'forward' && direction !== 'backward') throw invalid("direction must be 'forward' or 'backward'");
    const range: LogRange = {
      from: direction === 'backward' || (direction === undefined && start === undefined) ? 'tail' : 'head',
      limit: Math.min(limit, MAX_LOG_LINES),
    };
    const read = await readConsoleLog(sandboxes.consoleLogPath(id), range);
    if (start !== undefined && read.mtime.getTime() < start) return [];
    const level = one(q.level);
    if (level !== undefined && level !== 'debug' && level !== 'info') return [];
    const search = one(q.search);
    const at = read.mtime.toISOString();
    return read.lines.filter((l) => !search || l.includes(search)).map((line) => ({ timestamp: at, line }));
  };
  app.get('/sandboxes/:id/logs', async (req: Req) => {
    const id = idOf(req);
    usable(req, id);
    const lines = await logs(id, req.query, 'start');
    return {
      // E2B's v1 lines are JSON log records (the E2B CLI parses each): the console line is the message
      logs: lines.map((l) => ({ timestamp: l.timestamp, line: JSON.stringify({ level: 'info', logger: 'console', message: l.line }) })),
      logEntries: lines.map((l) => ({ timestamp: l.timestamp, level: 'info', message: l.line, fields: {} })),
    };
  });
  app.get('/v2/sandboxes/:id/logs', async (req: Req) => {
    const id = idOf(req);
    usable(req, id);
    return { logs: (await logs(id, req.query, 'cursor')).map((l) => ({ timestamp: l.timestamp, level: 'info', message: l.line, fields: {} })) };
  });
}
