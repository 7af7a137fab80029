// A team's API keys (GET/POST/DELETE /api-keys): the list shows names and masks only; a new key
// is shown once, with a copy button, until the panel is dismissed; a revoke asks first.
import { useState } from 'preact/hooks';
import { api, message } from './api.js';
import { ErrorLine, time, usePoll, type ConfirmRequest } from './ui.js';

export interface TeamApiKey {
  id: string;
  name: string;
  mask: { prefix: string; valueLength: number; maskedValuePrefix: string; maskedValueSuffix: string };
  createdAt: string;
  lastUsed: string | null;
  teamID: string;
  admin?: boolean;
}

const masked = (k: TeamApiKey) => `${k.mask.prefix}${k.mask.maskedValuePrefix}…${k.mask.maskedValueSuffix}`;

/** The key just made: in this component's state only, gone once dismissed (or the view is left). */
function NewKey({ made, onDone }: { made: { name: string; key: string }; onDone: () => void }) {
  const [copied, setCopied] = useState<string>();
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(made.key);
      setCopied('Copied.');
    } catch (e) {
      setCopied(`Copy failed (${message(e)}): select the key and copy it.`);
    }
  };
  return (
    <div class="new-key" role="status" aria-label="New API key">
      <p>
        The key <strong>{made.name || '(no name)'}</strong> is shown this once: copy it now.
      </p>
      <p class="row">
        <input class="mono" readOnly value={made.key} aria-label="New API key value" onFocus={(e) => (e.target as HTMLInputElement).select()} />
        <button type="button" onClick={() => void copy()}>
          Copy
        </button>
        <button type="button" onClick={onDone}>
          Done
        </button>
      </p>
      {copied ? <p class="muted">{copied}</p> : null}
    </div>
  );
}

export function ApiKeys({ team, ask }: { team: string; ask: (r: ConfirmRequest) => void }) {
  const keys = usePoll(() => api<TeamApiKey[]>(`/api-keys?teamID=${encodeURIComponent(team)}`), [team], 15_000);
  const [name, setName] = useState('');
  const [made, setMade] = useState<{ name: string; key: string }>();
  const [error, setError] = useState<string>();
  const [busy, setBusy] = useState(false);
  const create = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    try {
      const r = await api<{ key: string; name: string }>('/api-keys', { method: 'POST', body: { name: name.trim(), teamID: team } });
      setMade({ name: r.name, key: r.key });
      setName('');
      setError(undefined);
      keys.refresh();
    } catch (err) {
      setError(message(err));
    } finally {
      setBusy(false);
    }
  };
  const revoke = (k: TeamApiKey) =>
    ask({
      title: `Revoke the key ${k.name || masked(k)}?`,
      body: <p>Requests with it are refused from now on (this one too, if you logged in with it). This cannot be undone.</p>,
      action: 'Revoke',
      danger: true,
      run: async () => {
        await api(`/api-keys/${encodeURIComponent(k.id)}`, { method: 'DELETE' });
        keys.refresh();
      },
    });
  return (
    <div class="keys">
      <h3>API keys</h3>
      <ErrorLine error={keys.error ?? error} />
      {made ? <NewKey made={made} onDone={() => setMade(undefined)} /> : null}
      <table>
        <thead>
          <tr>
            <th scope="col">Name</th>
            <th scope="col">Key</th>
            <th scope="col">Created</th>
            <th scope="col">Last used</th>
            <th scope="col">
              <span class="sr-only">Actions</span>
            </th>
          </tr>
        </thead>
        <tbody>
          {(keys.data ?? []).map((k) => (
            <tr key={k.id}>
              <td>
                {k.name || <span class="muted">(no name)</span>}
                {k.admin ? <span class="chip">admin</span> : null}
              </td>
              <td class="mono">{masked(k)}</td>
              <td>{time(k.createdAt)}</td>
              <td>{k.lastUsed ? time(k.lastUsed) : <span class="muted">never</span>}</td>
              <td>
                <button type="button" class="danger" aria-label={`Revoke key ${k.name || masked(k)}`} onClick={() => revoke(k)}>
                  Revoke
                </button>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      <form class="row" onSubmit={(e) => void create(e)} aria-label={`New API key of team ${team}`}>
        <label>
          Name of a new key <input name="keyName" maxLength={200} value={name} onInput={(e) => setName((e.target as HTMLInputElement).value)} />
        </label>
        <button type="submit" disabled={busy}>
          Create key
        </button>
      </form>
    </div>
  );
}
