// The team (or, for an admin key, every team): usage against its quota (an admin edits it),
// concurrent sandboxes and start rate over the last 24 h from the team metrics API, its API
// keys; the host: an admin's from GET /admin/host, a team key's from the public /metrics.
import uPlot from 'uplot';
import { useEffect, useRef } from 'preact/hooks';
import { api, type Team } from './api.js';
import { HostView, QuotaForm, useHost } from './admin.js';
import { ApiKeys } from './keys.js';
import { ErrorLine, usePoll, type ConfirmRequest } from './ui.js';

interface TeamMetric {
  timestampUnix: number;
  concurrentSandboxes: number;
  sandboxStartRate: number;
}

function UsageChart({ team }: { team: string }) {
  const el = useRef<HTMLDivElement>(null);
  const start = Math.floor(Date.now() / 1000) - 24 * 3600;
  const m = usePoll(() => api<TeamMetric[]>(`/teams/${encodeURIComponent(team)}/metrics?start=${start}`), [team], 30_000);
  useEffect(() => {
    if (!el.current || !m.data) return;
    const rows = m.data;
    const width = Math.min(640, Math.max(280, window.innerWidth - 48));
    const plot = new uPlot(
      {
        title: 'Concurrent sandboxes and starts per second, last 24 h',
        width,
        height: 180,
        series: [{}, { label: 'concurrent', stroke: '#2f6fdf', width: 2 }, { label: 'starts/s', stroke: '#d9822b', width: 2 }],
      },
      [rows.map((r) => r.timestampUnix), rows.map((r) => r.concurrentSandboxes), rows.map((r) => r.sandboxStartRate)],
      el.current,
    );
    return () => plot.destroy();
  }, [m.data]);
  const peak = Math.max(0, ...(m.data ?? []).map((r) => r.concurrentSandboxes));
  return (
    <div>
      <ErrorLine error={m.error} />
      <p>{m.data ? `peak concurrent sandboxes in the last 24 h: ${peak}` : 'loading…'}</p>
      <div ref={el} role="img" aria-label={`Usage chart of team ${team}`} />
    </div>
  );
}

const QUOTA_NAMES: Record<string, string> = {
  sandboxes: 'Sandboxes (running or paused with memory)',
  vcpus: 'vCPUs',
  memoryMB: 'Memory, MiB',
  diskMB: 'Disk, MiB',
  pausedSandboxes: 'Paused sandboxes',
  snapshots: 'Snapshots',
  metadataBytes: 'Metadata per sandbox, bytes',
  secrets: 'Secrets',
  volumes: 'Volumes',
  volumeMB: 'Volume size, MiB',
};

function Quota({ team, admin }: { team: string; admin: boolean }) {
  const q = usePoll(() => api<{ quota: Record<string, number>; usage: Record<string, number> }>(`/teams/${encodeURIComponent(team)}/quota`), [team], 10_000);
  if (!q.data) return <ErrorLine error={q.error} />;
  const { quota, usage } = q.data;
  return (
    <>
      <table class="quota">
        <caption>Usage against the quota{admin ? '' : ' (an admin key changes it)'}</caption>
        <tbody>
          {Object.entries(quota).map(([k, limit]) => (
            <tr key={k}>
              <th scope="row">{QUOTA_NAMES[k] ?? k}</th>
              <td>{k in usage ? `${usage[k]} of ${limit}` : `limit ${limit}`}</td>
              <td>{k in usage ? <meter min={0} max={limit || 1} value={usage[k]} high={limit * 0.8} aria-label={`${QUOTA_NAMES[k] ?? k} used`} /> : null}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {admin ? <QuotaForm team={team} quota={quota} names={QUOTA_NAMES} onSaved={q.refresh} /> : null}
    </>
  );
}

/** The gauges of the Prometheus text that describe the host's pool and create gate. */
function gauges(text: string): [string, string][] {
  const want = /^(cubebox_(?:sandboxes|templates|pool_target|pool_ready|creates_in_progress|creates_waiting))(\{[^}]*\})? (\S+)$/;
  const out: [string, string][] = [];
  for (const line of text.split('\n')) {
    const m = want.exec(line);
    if (m) out.push([`${m[1]}${m[2] ?? ''}`, m[3]!]);
  }
  return out;
}

/** The host's pool and create gate as the public /metrics tells them (for a team key). */
function Host() {
  const h = usePoll(
    async () => {
      const r = await fetch('/metrics', { cache: 'no-store', credentials: 'omit' });
      if (!r.ok) throw new Error(`/metrics answered ${r.status}`);
      return gauges(await r.text());
    },
    [],
    10_000,
  );
  return (
    <section aria-label="Host">
      <h2>Host: sandboxes, warm pool and create gate</h2>
      <ErrorLine error={h.error} />
      <table>
        <tbody>
          {(h.data ?? []).map(([k, v]) => (
            <tr key={k}>
              <th scope="row" class="mono">
                {k}
              </th>
              <td>{v}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}

export function TeamsView({ ask }: { ask: (r: ConfirmRequest) => void }) {
  const teams = usePoll(() => api<Team[]>('/teams'), [], 30_000);
  const host = useHost();
  const admin = !!host.data;
  const many = (teams.data?.length ?? 0) > 1;
  return (
    <div>
      <h1>{many ? 'Teams' : 'Team'}</h1>
      <ErrorLine error={teams.error} />
      {(teams.data ?? []).map((t) => (
        <section key={t.teamID} aria-label={`Team ${t.name}`}>
          <h2>
            {t.name} <span class="mono muted">{t.teamID}</span>
          </h2>
          {t.apiKey ? <p>Signed in with the key {t.apiKey}</p> : null}
          <Quota team={t.teamID} admin={admin} />
          <UsageChart team={t.teamID} />
          <ApiKeys team={t.teamID} ask={ask} />
        </section>
      ))}
      {host.data === null ? <Host /> : <HostView h={host} />}
    </div>
  );
}
