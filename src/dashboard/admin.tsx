// What an admin key sees besides the teams: a team's quota form (PATCH /teams/{teamID}/quota)
// and the host (GET /admin/host): capacity, slots, pids, warm pool, create gate, runtimes and
// the doctor's findings.
import { useState } from 'preact/hooks';
import type { Check, HostStatus } from '../protocol/host-status.js';
import { api, ApiError, message } from './api.js';
import { ErrorLine, usePoll } from './ui.js';

/** The quota form of a team: every limit, with an empty field meaning the default. */
export function QuotaForm({
  team,
  quota,
  names,
  onSaved,
}: {
  team: string;
  quota: Record<string, number>;
  names: Record<string, string>;
  onSaved: () => void;
}) {
  const [values, setValues] = useState<Record<string, string>>({});
  const [status, setStatus] = useState<{ ok?: string; error?: string }>({});
  const save = async (e: Event) => {
    e.preventDefault();
    const change: Record<string, number | null> = {};
    for (const [k, v] of Object.entries(values)) {
      const s = v.trim();
      if (s === String(quota[k])) continue;
      change[k] = s === '' ? null : Number(s);
    }
    if (!Object.keys(change).length) return setStatus({ ok: 'Nothing changed.' });
    try {
      await api(`/teams/${encodeURIComponent(team)}/quota`, { method: 'PATCH', body: change });
      setValues({});
      setStatus({ ok: 'Quota saved.' });
      onSaved();
    } catch (err) {
      setStatus({ error: message(err) });
    }
  };
  return (
    <form class="quota-form" onSubmit={(e) => void save(e)} aria-label={`Quota of team ${team}`}>
      <fieldset>
        <legend>Edit the quota (empty: the default)</legend>
        {Object.entries(quota).map(([k, limit]) => (
          <label key={k}>
            {names[k] ?? k}{' '}
            <input
              name={`quota-${k}`}
              type="number"
              min="0"
              step="1"
              value={values[k] ?? String(limit)}
              onInput={(e) => setValues({ ...values, [k]: (e.target as HTMLInputElement).value })}
            />
          </label>
        ))}
        <button type="submit">Save quota</button>
      </fieldset>
      {status.ok ? <p role="status">{status.ok}</p> : null}
      <ErrorLine error={status.error} />
    </form>
  );
}

const mb = (n: number) => (n >= 10 * 1024 ? `${(n / 1024).toFixed(1)} GiB` : `${n} MiB`);

function Checks({ title, checks }: { title: string; checks: Check[] }) {
  return (
    <table>
      <caption>{title}</caption>
      <tbody>
        {checks.map((c) => (
          <tr key={c.name}>
            <th scope="row">{c.name}</th>
            <td class="status">{c.ok ? 'ok' : c.essential ? 'FAIL' : 'warning'}</td>
            <td>{c.detail}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

/** GET /admin/host, polled (every second while the doctor's first probe runs): data null for a key that is not an admin's. */
export function useHost() {
  const [probing, setProbing] = useState(false);
  return usePoll(
    async () => {
      try {
        const h = await api<HostStatus>('/admin/host');
        setProbing('probing' in h.doctor);
        return h;
      } catch (e) {
        if (e instanceof ApiError && e.status === 403) return null; // a team key: no host view
        throw e;
      }
    },
    [],
    probing ? 1000 : 10_000,
  );
}

/** The host as GET /admin/host reports it. */
export function HostView({ h }: { h: ReturnType<typeof useHost> }) {
  const s = h.data;
  const facts: [string, string][] = s
    ? [
        ['CPUs', `${s.cpus.count} (load ${s.cpus.load1.toFixed(2)} / ${s.cpus.load5.toFixed(2)} / ${s.cpus.load15.toFixed(2)})`],
        ['Memory', `${mb(s.memory.availableMB)} available of ${mb(s.memory.totalMB)}`],
        ['Disk', `${mb(s.disk.freeMB)} free of ${mb(s.disk.totalMB)} (${s.disk.path})`],
        ['Network slots', s.networkSlots ? `${s.networkSlots.used} used, ${s.networkSlots.free} free of ${s.networkSlots.total}` : 'loopback only'],
        ['Pids', `${s.pids.tasks} tasks of pid_max ${s.pids.max}; sandboxes may hold ${s.pids.sandboxes}`],
        [
          'Sandboxes',
          Object.entries(s.sandboxes)
            .map(([k, n]) => `${n} ${k}`)
            .join(', ') || 'none',
        ],
        ['Create gate', `${s.gate.inFlight} of ${s.gate.concurrency} provisioning, ${s.gate.queued} waiting (at most ${s.gate.maxQueue})`],
        ['Creates', `${s.creates.pool} from the pool, ${s.creates.new} new, ${s.creates.refused} refused`],
        ['Warm pool', s.pool.map((p) => `${p.template}: ${p.ready} ready of ${p.target} (${p.min}-${p.max})`).join('; ') || 'none'],
      ]
    : [];
  const d = s?.doctor;
  return (
    <section aria-label="Host">
      <h2>Host</h2>
      <ErrorLine error={h.error} />
      <dl class="facts">{facts.flatMap(([k, v]) => [<dt key={`t-${k}`}>{k}</dt>, <dd key={`d-${k}`}>{v}</dd>])}</dl>
      {s ? (
        <table>
          <caption>Runtimes (new sandboxes get {s.defaultRuntime})</caption>
          <tbody>
            {s.runtimes.map((r) => (
              <tr key={r.name}>
                <th scope="row">{r.name}</th>
                <td class="status">{!r.installed ? 'missing' : r.works ? 'works' : 'broken'}</td>
                <td>
                  {r.version ?? ''} {r.detail}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      ) : null}
      {d && 'checks' in d ? (
        <>
          <p>
            Doctor ({d.ready ? 'host ready' : 'host NOT ready'}, probed {new Date(d.probedAt).toLocaleTimeString()})
          </p>
          <Checks title="Doctor's checks" checks={d.checks} />
          <Checks title="Isolation" checks={d.isolation} />
        </>
      ) : d && 'error' in d ? (
        <p class="error">The doctor's probe failed: {d.error}</p>
      ) : d ? (
        <p class="muted">The doctor is probing the host…</p>
      ) : null}
    </section>
  );
}
