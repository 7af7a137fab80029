// One sandbox: what it is, its actions, metrics, logs, network and ports, files and a terminal.
import { useState } from 'preact/hooks';
import { api, type SandboxDetail } from './api.js';
import { SandboxActions } from './actions.js';
import { MetricsCharts } from './charts.js';
import { FilesPane } from './files.js';
import { TerminalPane } from './terminal.js';
import { ErrorLine, Meta, Tabs, time, usePoll, type ConfirmRequest } from './ui.js';

type Tab = 'metrics' | 'logs' | 'files' | 'terminal' | 'network';

function Logs({ id }: { id: string }) {
  const [follow, setFollow] = useState(true);
  const [search, setSearch] = useState('');
  const logs = usePoll(
    () =>
      api<{ logs: { timestamp: string; message: string }[] }>(
        `/v2/sandboxes/${encodeURIComponent(id)}/logs?limit=500${search ? `&search=${encodeURIComponent(search)}` : ''}`,
      ),
    [id, search],
    follow ? 2000 : 0,
  );
  return (
    <div>
      <div class="row">
        <label>
          <input type="checkbox" name="follow" checked={follow} onChange={(e) => setFollow((e.target as HTMLInputElement).checked)} /> follow
        </label>
        <label>
          Search logs <input name="logSearch" type="search" value={search} onChange={(e) => setSearch((e.target as HTMLInputElement).value)} />
        </label>
        <button type="button" onClick={logs.refresh}>
          Refresh
        </button>
      </div>
      <ErrorLine error={logs.error} />
      <pre class="logs" tabIndex={0} aria-label="Console log">
        {(logs.data?.logs ?? []).map((l) => l.message).join('\n') || (logs.data ? '(empty)' : 'loading…')}
      </pre>
    </div>
  );
}

function Network({ d }: { d: SandboxDetail }) {
  const [port, setPort] = useState('8080');
  const host = `${port}-${d.sandboxID}.${d.domain ?? ''}`;
  const scheme = location.protocol === 'https:' ? 'https' : 'http';
  return (
    <div>
      <dl class="facts">
        <dt>Internet access</dt>
        <dd>{d.allowInternetAccess === false ? 'denied' : 'allowed'}</dd>
        <dt>Allowed out</dt>
        <dd>{(d.network?.allowOut ?? []).join(', ') || '—'}</dd>
        <dt>Denied out</dt>
        <dd>{(d.network?.denyOut ?? []).join(', ') || '—'}</dd>
        <dt>Public traffic</dt>
        <dd>{d.network?.allowPublicTraffic === false ? 'needs the traffic token' : 'allowed'}</dd>
        <dt>Egress rules</dt>
        <dd>
          {Object.keys(d.network?.rules ?? {}).length ? (
            <ul class="rules">
              {Object.entries(d.network!.rules!).map(([domain, rules]) => (
                <li key={domain}>
                  <span class="mono">{domain}</span>:{' '}
                  {rules
                    .flatMap((r) => Object.entries(r.transform?.headers ?? {}))
                    .map(([name, value]) => (
                      <span key={name} class="mono">
                        {name}: {value}{' '}
                      </span>
                    ))}
                </li>
              ))}
            </ul>
          ) : (
            '—'
          )}
        </dd>
        <dt>Upstream proxy</dt>
        <dd class="mono">
          {d.network?.egressProxy
            ? `SOCKS5 ${d.network.egressProxy.address}${d.network.egressProxy.username ? ` as ${d.network.egressProxy.username}` : ''}`
            : '—'}
        </dd>
      </dl>
      <p class="row">
        <label>
          Port <input name="port" type="number" min="1" max="65535" value={port} onInput={(e) => setPort((e.target as HTMLInputElement).value)} />
        </label>
        <a href={`${scheme}://${host}/`} target="_blank" rel="noopener noreferrer" class="mono">
          {host}
        </a>
      </p>
    </div>
  );
}

export function SandboxView({ id, ask }: { id: string; ask: (r: ConfirmRequest) => void }) {
  const [tab, setTab] = useState<Tab>('metrics');
  const d = usePoll(() => api<SandboxDetail>(`/sandboxes/${encodeURIComponent(id)}`), [id], 4000);
  const s = d.data;
  const gone = d.error && !s;
  if (!s) {
    return (
      <section>
        <h1 class="mono">{id}</h1>
        {gone ? <ErrorLine error={d.error} /> : <p>loading…</p>}
        <a href="#/sandboxes">Back to the sandboxes</a>
      </section>
    );
  }
  const running = s.state === 'running';
  const tabs: [Tab, string][] = [
    ['metrics', 'Metrics'],
    ['logs', 'Logs'],
    ['files', 'Files'],
    ['terminal', 'Terminal'],
    ['network', 'Network & ports'],
  ];
  return (
    <section aria-labelledby="sandbox-title">
      <p>
        <a href="#/sandboxes">← Sandboxes</a>
      </p>
      <h1 id="sandbox-title" class="mono">
        {s.sandboxID}
      </h1>
      <div class="row">
        <span class={`state ${s.state}`} data-testid="sandbox-state">
          {s.cubeboxState ?? s.state}
        </span>
        <SandboxActions s={s} ask={ask} done={d.refresh} />
      </div>
      <ErrorLine error={d.error} />
      <dl class="facts">
        <dt>Template</dt>
        <dd>{s.alias || s.templateID}</dd>
        <dt>Started</dt>
        <dd>{time(s.startedAt)}</dd>
        <dt>Ends at</dt>
        <dd>{time(s.endAt)}</dd>
        <dt>Size</dt>
        <dd>{`${s.cpuCount} CPU, ${s.memoryMB} MiB memory, ${s.diskSizeMB} MiB disk`}</dd>
        <dt>On timeout</dt>
        <dd>{s.lifecycle?.onTimeout ?? 'kill'}</dd>
        <dt>Metadata</dt>
        <dd>
          <Meta m={s.metadata} />
        </dd>
      </dl>
      <Tabs tabs={tabs} current={tab} onPick={setTab} label="Sandbox views" />
      <div role="tabpanel" class="panel">
        {tab === 'metrics' ? <MetricsCharts id={id} /> : null}
        {tab === 'logs' ? <Logs id={id} /> : null}
        {tab === 'network' ? <Network d={s} /> : null}
        {(tab === 'files' || tab === 'terminal') && !running ? <p>The sandbox is paused: resume it to reach its files and terminal.</p> : null}
        {tab === 'files' && running ? <FilesPane detail={s} /> : null}
        {tab === 'terminal' && running ? <TerminalPane detail={s} /> : null}
      </div>
    </section>
  );
}
