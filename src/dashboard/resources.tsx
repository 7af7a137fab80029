// The team's templates (with their builds and build logs), volumes, secrets (names only) and snapshots.
import { useState } from 'preact/hooks';
import { api, message } from './api.js';
import { ErrorLine, time, usePoll } from './ui.js';

interface TemplateRow {
  templateID: string;
  buildID: string;
  names?: string[];
  aliases?: string[];
  public: boolean;
  cpuCount: number;
  memoryMB: number;
  diskSizeMB: number;
  createdAt: string;
  buildStatus: string;
}
interface Build {
  buildID: string;
  status: string;
  createdAt: string;
}
interface BuildStatus {
  status: string;
  logEntries: { timestamp: string; level: string; message: string }[];
  reason?: { message: string };
}

function BuildLog({ templateID, buildID }: { templateID: string; buildID: string }) {
  const path = `/templates/${encodeURIComponent(templateID)}/builds/${encodeURIComponent(buildID)}/status?logsOffset=0&limit=1000`;
  const st = usePoll(() => api<BuildStatus>(path), [path], 2000);
  return (
    <div>
      <ErrorLine error={st.error} />
      <p>status: {st.data?.status ?? '…'}</p>
      {st.data?.reason ? <p class="error">{st.data.reason.message}</p> : null}
      <pre class="logs" tabIndex={0} aria-label="Build log">
        {(st.data?.logEntries ?? []).map((l) => `${l.timestamp} ${l.level} ${l.message}`).join('\n') || '(no log lines)'}
      </pre>
    </div>
  );
}

function Builds({ templateID }: { templateID: string }) {
  const t = usePoll(() => api<{ builds: Build[] }>(`/templates/${encodeURIComponent(templateID)}`), [templateID], 5000);
  const [open, setOpen] = useState<string>();
  return (
    <div class="panel">
      <ErrorLine error={t.error} />
      <ul>
        {(t.data?.builds ?? []).map((b) => (
          <li key={b.buildID}>
            <span class="mono">{b.buildID}</span> {b.status} {time(b.createdAt)}{' '}
            <button type="button" onClick={() => setOpen(open === b.buildID ? undefined : b.buildID)} aria-expanded={open === b.buildID}>
              {open === b.buildID ? 'Hide log' : 'Show log'}
            </button>
            {open === b.buildID ? <BuildLog templateID={templateID} buildID={b.buildID} /> : null}
          </li>
        ))}
      </ul>
    </div>
  );
}

export function TemplatesView() {
  const list = usePoll(() => api<TemplateRow[]>('/templates'), [], 10_000);
  const [open, setOpen] = useState<string>();
  const [note, setNote] = useState<string>();
  const start = async (t: TemplateRow) => {
    try {
      const s = await api<{ sandboxID: string }>('/sandboxes', { method: 'POST', body: { templateID: t.templateID } });
      location.hash = `#/sandbox/${encodeURIComponent(s.sandboxID)}`;
    } catch (e) {
      setNote(message(e));
    }
  };
  return (
    <section aria-labelledby="templates-title">
      <h1 id="templates-title">Templates</h1>
      <ErrorLine error={list.error ?? note} />
      <div class="scroll">
        <table>
          <thead>
            <tr>
              <th scope="col">Names</th>
              <th scope="col">Id</th>
              <th scope="col">Size</th>
              <th scope="col">Public</th>
              <th scope="col">Created</th>
              <th scope="col">Actions</th>
            </tr>
          </thead>
          <tbody>
            {(list.data ?? []).map((t) => (
              <>
                <tr key={t.templateID}>
                  <td>{(t.names ?? t.aliases ?? []).join(', ')}</td>
                  <td class="mono">{t.templateID}</td>
                  <td>{`${t.cpuCount} CPU, ${t.memoryMB} MiB, ${t.diskSizeMB} MiB disk`}</td>
                  <td>{t.public ? 'yes' : 'no'}</td>
                  <td>{time(t.createdAt)}</td>
                  <td class="actions">
                    <button type="button" onClick={() => setOpen(open === t.templateID ? undefined : t.templateID)} aria-expanded={open === t.templateID}>
                      Builds
                    </button>
                    <button type="button" onClick={() => void start(t)}>
                      Start sandbox
                    </button>
                  </td>
                </tr>
                {open === t.templateID ? (
                  <tr key={`${t.templateID}-builds`}>
                    <td colSpan={6}>
                      <Builds templateID={t.templateID} />
                    </td>
                  </tr>
                ) : null}
              </>
            ))}
          </tbody>
        </table>
      </div>
    </section>
  );
}

function SimpleList<T>({ title, path, cols, row }: { title: string; path: string; cols: string[]; row: (x: T) => (string | undefined)[] }) {
  const list = usePoll(() => api<T[]>(path), [path], 10_000);
  return (
    <section aria-label={title}>
      <h2>{title}</h2>
      <ErrorLine error={list.error} />
      {list.data && !list.data.length ? (
        <p>None.</p>
      ) : (
        <div class="scroll">
          <table>
            <thead>
              <tr>
                {cols.map((c) => (
                  <th scope="col" key={c}>
                    {c}
                  </th>
                ))}
              </tr>
            </thead>
            <tbody>
              {(list.data ?? []).map((x, i) => (
                <tr key={i}>
                  {row(x).map((v, j) => (
                    <td key={j}>{v ?? ''}</td>
                  ))}
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}

interface Volume {
  volumeID: string;
  name: string;
}
interface Secret {
  secretID: string;
  name: string;
  currentVersion: number;
  metadata: Record<string, string>;
  updatedAt: string;
}
interface Snapshot {
  snapshotID: string;
  names: string[];
  sandboxID?: string;
  createdAt: string;
}

export function StorageView() {
  return (
    <div>
      <h1>Storage</h1>
      <SimpleList<Volume> title="Volumes" path="/volumes" cols={['Name', 'Id']} row={(v) => [v.name, v.volumeID]} />
      <SimpleList<Secret>
        title="Secrets (names only)"
        path="/secrets"
        cols={['Name', 'Id', 'Version', 'Metadata', 'Updated']}
        row={(s) => [
          s.name,
          s.secretID,
          String(s.currentVersion),
          Object.entries(s.metadata)
            .map(([k, v]) => `${k}=${v}`)
            .join(' '),
          time(s.updatedAt),
        ]}
      />
      <SimpleList<Snapshot>
        title="Snapshots"
        path="/snapshots"
        cols={['Names', 'Id', 'Of sandbox', 'Created']}
        row={(s) => [s.names.join(', '), s.snapshotID, s.sandboxID, time(s.createdAt)]}
      />
    </div>
  );
}
