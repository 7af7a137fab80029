// A sandbox's CPU, memory and disk over time (uPlot), from GET /sandboxes/:id/metrics.
import uPlot from 'uplot';
import { useEffect, useRef } from 'preact/hooks';
import { api, type Metric } from './api.js';
import { ErrorLine, usePoll } from './ui.js';

const MiB = 1024 * 1024;

function Chart({ title, series, data, width }: { title: string; series: string[]; data: uPlot.AlignedData; width: number }) {
  const el = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  useEffect(() => {
    if (!el.current) return;
    const colors = ['#2f6fdf', '#d9822b', '#3a9a5b'];
    plot.current = new uPlot(
      {
        title,
        width,
        height: 180,
        series: [{}, ...series.map((label, i) => ({ label, stroke: colors[i % colors.length], width: 2 }))],
        axes: [{}, { size: 60 }],
      },
      data,
      el.current,
    );
    return () => plot.current?.destroy();
    // a new chart when its shape changes; the data is set below
  }, [title, series.join(','), width]);
  useEffect(() => plot.current?.setData(data), [data]);
  return <div ref={el} role="img" aria-label={`${title} chart`} />;
}

export function MetricsCharts({ id }: { id: string }) {
  const m = usePoll(() => api<Metric[]>(`/sandboxes/${encodeURIComponent(id)}/metrics?start=${Math.floor(Date.now() / 1000) - 3600}`), [id], 5000);
  const rows = m.data ?? [];
  const t = rows.map((r) => r.timestampUnix);
  const width = Math.min(640, Math.max(280, (typeof window === 'undefined' ? 640 : window.innerWidth) - 48));
  const last = rows[rows.length - 1];
  return (
    <div>
      <ErrorLine error={m.error} />
      {last ? (
        <p>
          {`now: CPU ${last.cpuUsedPct.toFixed(1)}% of ${last.cpuCount}, memory ${(last.memUsed / MiB).toFixed(0)} of ${(last.memTotal / MiB).toFixed(0)} MiB, disk ${(last.diskUsed / MiB).toFixed(0)} of ${(last.diskTotal / MiB).toFixed(0)} MiB`}
        </p>
      ) : (
        <p>{m.data ? 'No samples yet (a paused sandbox has none).' : 'loading…'}</p>
      )}
      <div class="charts">
        <Chart title="CPU %" series={['cpu %']} data={[t, rows.map((r) => r.cpuUsedPct)]} width={width} />
        <Chart title="Memory MiB" series={['used', 'total']} data={[t, rows.map((r) => r.memUsed / MiB), rows.map((r) => r.memTotal / MiB)]} width={width} />
        <Chart title="Disk MiB" series={['used']} data={[t, rows.map((r) => r.diskUsed / MiB)]} width={width} />
      </div>
    </div>
  );
}
