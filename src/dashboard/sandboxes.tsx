// The team's sandboxes: one list polled with backoff, filtered and searched in the page, shown a
// page at a time (so a thousand stay responsive), with the CPU and memory of the page's running ones.
import { useMemo, useState } from 'preact/hooks';
import { api, type ListedSandbox } from './api.js';
import { SandboxActions } from './actions.js';
import { bytes, ErrorLine, Meta, time, usePoll, type ConfirmRequest } from './ui.js';

const PAGE = 100; // also the most ids one /sandboxes/metrics takes
interface Now {
  cpuUsedPct: number;
  memUsed: number;
}

function matches(s: ListedSandbox, q: string): boolean {
  if (!q) return true;
  const hay = [s.sandboxID, s.templateID, s.alias ?? '', s.cubeboxState ?? '', ...Object.entries(s.metadata ?? {}).map(([k, v]) => `${k}=${v}`)];
  return hay.some((h) => h.toLowerCase().includes(q));
}

export function SandboxesView({ ask }: { ask: (r: ConfirmRequest) => void }) {
  const list = usePoll(() => api<ListedSandbox[]>('/sandboxes?state=running,paused'), []);
  const [q, setQ] = useState('');
  const [state, setState] = useState<'all' | 'running' | 'paused'>('all');
  const [page, setPage] = useState(0);
  const shown = useMemo(() => {
    const needle = q.trim().toLowerCase();
    return (list.data ?? [])
      .filter((s) => (state === 'all' || s.state === state) && matches(s, needle))
      .sort((a, b) => (a.startedAt < b.startedAt ? 1 : a.startedAt > b.startedAt ? -1 : a.sandboxID < b.sandboxID ? -1 : 1));
  }, [list.data, q, state]);
  const pages = Math.max(1, Math.ceil(shown.length / PAGE));
  const at = Math.min(page, pages - 1);
  const rows = shown.slice(at * PAGE, at * PAGE + PAGE);
  const running = rows.filter((s) => s.state === 'running').map((s) => s.sandboxID);
  const now = usePoll(
    async () =>
      running.length
        ? (await api<{ sandboxes: Record<string, Now> }>(`/sandboxes/metrics?sandbox_ids=${running.map(encodeURIComponent).join(',')}`)).sandboxes
        : {},
    [running.join(',')],
    5000,
  );
  return (
    <section aria-labelledby="sandboxes-title">
      <h1 id="sandboxes-title">Sandboxes</h1>
      <form class="row filters" role="search" onSubmit={(e) => e.preventDefault()}>
        <label>
          Search{' '}
          <input
            name="search"
            type="search"
            value={q}
            placeholder="id, template, key=value"
            onInput={(e) => {
              setQ((e.target as HTMLInputElement).value);
              setPage(0);
            }}
          />
        </label>
        <label>
          State{' '}
          <select
            name="state"
            value={state}
            onChange={(e) => {
              setState((e.target as HTMLSelectElement).value as typeof state);
              setPage(0);
            }}
          >
            <option value="all">all</option>
            <option value="running">running</option>
            <option value="paused">paused</option>
          </select>
        </label>
        <span aria-live="polite" class="count">
          {list.data ? `${shown.length} of ${list.data.length}` : 'loading…'}
        </span>
      </form>
      <ErrorLine error={list.error} />
      <div class="scroll">
        <table class="sandboxes">
          <thead>
            <tr>
              <th scope="col">Sandbox</th>
              <th scope="col">State</th>
              <th scope="col">Template</th>
              <th scope="col">Started</th>
              <th scope="col">Ends at</th>
              <th scope="col">CPU / memory now</th>
              <th scope="col">Metadata</th>
              <th scope="col">Actions</th>
            </tr>
          </thead>
          <tbody>
            {rows.map((s) => {
              const m = now.data?.[s.sandboxID];
              return (
                <tr key={s.sandboxID}>
                  <td data-label="Sandbox">
                    <a href={`#/sandbox/${encodeURIComponent(s.sandboxID)}`} class="mono">
                      {s.sandboxID}
                    </a>
                  </td>
                  <td data-label="State">
                    <span class={`state ${s.state}`}>{s.cubeboxState ?? s.state}</span>
                  </td>
                  <td data-label="Template">{s.alias || s.templateID}</td>
                  <td data-label="Started">{time(s.startedAt)}</td>
                  <td data-label="Ends at">{time(s.endAt)}</td>
                  <td data-label="CPU / memory now">{m ? `${m.cpuUsedPct.toFixed(0)}% · ${bytes(m.memUsed)}` : ''}</td>
                  <td data-label="Metadata">
                    <Meta m={s.metadata} />
                  </td>
                  <td data-label="Actions">
                    <SandboxActions s={s} ask={ask} done={list.refresh} />
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      </div>
      {list.data && !shown.length ? <p>No sandboxes{q || state !== 'all' ? ' match' : ''}.</p> : null}
      <nav class="row pager" aria-label="Pages">
        <button type="button" disabled={at === 0} onClick={() => setPage(at - 1)}>
          Previous
        </button>
        <span>
          page {at + 1} of {pages}
        </span>
        <button type="button" disabled={at >= pages - 1} onClick={() => setPage(at + 1)}>
          Next
        </button>
      </nav>
    </section>
  );
}
