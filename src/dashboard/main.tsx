// The cubebox dashboard: a login form, then views chosen by the URL's fragment (#/sandboxes,
// #/sandbox/<id>, #/templates, #/storage, #/teams). Everything a sandbox or a team controls is
// rendered as text by Preact (no raw HTML anywhere).
import './nonce.js'; // first: xterm.js makes <style> elements, which the page's CSP lets in by nonce
import '@xterm/xterm/css/xterm.css';
import 'uplot/dist/uPlot.min.css';
import './style.css';
import { render } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';
import { apiKey, logIn, logOut, message, request, unauthorized, type Team } from './api.js';
import { SandboxesView } from './sandboxes.js';
import { SandboxView } from './sandbox.js';
import { StorageView, TemplatesView } from './resources.js';
import { TeamsView } from './team.js';
import { Confirm, type ConfirmRequest } from './ui.js';

function Login({ onIn }: { onIn: () => void }) {
  const [error, setError] = useState<string>();
  const [busy, setBusy] = useState(false);
  const field = useRef<HTMLInputElement>(null);
  useEffect(() => field.current?.focus(), []);
  const submit = async (e: Event) => {
    e.preventDefault();
    const key = String(new FormData(e.target as HTMLFormElement).get('apiKey') ?? '').trim();
    if (!key) return setError('Enter an API key.');
    setBusy(true);
    try {
      await request<Team[]>('/teams', { key }); // checks the key before keeping it
      logIn(key);
      onIn();
    } catch (err) {
      setError(message(err));
    } finally {
      setBusy(false);
    }
  };
  return (
    <main class="login">
      <h1>cubebox</h1>
      <form onSubmit={(e) => void submit(e)} aria-label="Log in">
        <label for="apiKey">API key</label>
        <input id="apiKey" ref={field} name="apiKey" type="password" autocomplete="off" spellcheck={false} required />
        <button type="submit" disabled={busy}>
          Log in
        </button>
        {error ? (
          <p class="error" role="alert">
            {error}
          </p>
        ) : null}
      </form>
      <p class="muted">The key stays in this tab (session storage) and goes only to this server, as the X-API-Key header.</p>
    </main>
  );
}

function useHash(): string {
  const [h, setH] = useState(location.hash);
  useEffect(() => {
    const on = () => setH(location.hash);
    window.addEventListener('hashchange', on);
    return () => window.removeEventListener('hashchange', on);
  }, []);
  return h;
}

const NAV: [string, string][] = [
  ['#/sandboxes', 'Sandboxes'],
  ['#/templates', 'Templates'],
  ['#/storage', 'Storage'],
  ['#/teams', 'Team & host'],
];

function App() {
  const [inside, setInside] = useState(!!apiKey());
  const [confirm, setConfirm] = useState<ConfirmRequest>();
  const [error, setError] = useState<string>();
  const hash = useHash();
  useEffect(() => {
    const out = () => {
      logOut();
      setInside(false);
    };
    unauthorized.add(out);
    return () => void unauthorized.delete(out);
  }, []);
  if (!inside) return <Login onIn={() => setInside(true)} />;
  const sandbox = /^#\/sandbox\/([^/]+)$/.exec(hash);
  const view = sandbox ? (
    <SandboxView id={decodeURIComponent(sandbox[1]!)} ask={setConfirm} />
  ) : hash === '#/templates' ? (
    <TemplatesView />
  ) : hash === '#/storage' ? (
    <StorageView />
  ) : hash === '#/teams' ? (
    <TeamsView ask={setConfirm} />
  ) : (
    <SandboxesView ask={setConfirm} />
  );
  const current = sandbox ? '#/sandboxes' : NAV.some(([h]) => h === hash) ? hash : '#/sandboxes';
  return (
    <>
      <header inert={!!confirm}>
        <strong>cubebox</strong>
        <nav aria-label="Main">
          {NAV.map(([h, name]) => (
            <a key={h} href={h} aria-current={h === current ? 'page' : undefined}>
              {name}
            </a>
          ))}
        </nav>
        <button
          type="button"
          onClick={() => {
            logOut();
            setInside(false);
          }}
        >
          Log out
        </button>
      </header>
      <main inert={!!confirm}>
        {error ? (
          <p class="error" role="alert">
            {error}
          </p>
        ) : null}
        {view}
      </main>
      {confirm ? (
        <Confirm
          req={confirm}
          onClose={(err) => {
            setConfirm(undefined);
            setError(err);
          }}
        />
      ) : null}
    </>
  );
}

render(<App />, document.getElementById('app')!);
