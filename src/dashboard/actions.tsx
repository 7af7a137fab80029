// A sandbox's lifecycle actions (pause, resume, set timeout, kill), each behind a confirmation.
import { useState } from 'preact/hooks';
import { api, type ListedSandbox } from './api.js';
import type { ConfirmRequest } from './ui.js';

function PauseBody({ onMemory }: { onMemory: (v: boolean) => void }) {
  return (
    <p>
      <label>
        <input type="checkbox" checked onChange={(e) => onMemory((e.target as HTMLInputElement).checked)} /> keep memory (processes resume where they were)
      </label>
    </p>
  );
}

function TimeoutBody({ onChange }: { onChange: (v: number) => void }) {
  const [v, setV] = useState('300');
  return (
    <p>
      <label>
        New timeout from now, in seconds{' '}
        <input
          name="timeout"
          type="number"
          min="0"
          max="86400"
          value={v}
          onInput={(e) => {
            const s = (e.target as HTMLInputElement).value;
            setV(s);
            onChange(Number(s));
          }}
        />
      </label>
    </p>
  );
}

/** The buttons of one sandbox; `ask` opens a confirmation, `done` runs after an action succeeded. */
export function SandboxActions({ s, ask, done }: { s: ListedSandbox; ask: (r: ConfirmRequest) => void; done: () => void }) {
  const id = s.sandboxID;
  const path = `/sandboxes/${encodeURIComponent(id)}`;
  const after = async (p: Promise<unknown>) => {
    await p;
    done();
  };
  const pause = () => {
    let memory = true;
    ask({
      title: `Pause ${id}?`,
      body: <PauseBody onMemory={(v) => (memory = v)} />,
      action: 'Pause',
      run: () => after(api(`${path}/pause`, { method: 'POST', body: { memory } })),
    });
  };
  const resume = () => void after(api(`${path}/resume`, { method: 'POST', body: {} })).catch(() => done());
  const timeout = () => {
    let t = 300;
    ask({
      title: `Set the timeout of ${id}`,
      body: <TimeoutBody onChange={(v) => (t = v)} />,
      action: 'Set timeout',
      run: () => after(api(`${path}/timeout`, { method: 'POST', body: { timeout: t } })),
    });
  };
  const kill = () =>
    ask({
      title: `Kill ${id}?`,
      body: <p>Its processes and files are gone for good.</p>,
      action: 'Kill',
      danger: true,
      run: () => after(api(path, { method: 'DELETE' })),
    });
  return (
    <span class="actions">
      {s.state === 'running' ? (
        <button type="button" onClick={pause} aria-label={`Pause ${id}`}>
          Pause
        </button>
      ) : (
        <button type="button" onClick={resume} aria-label={`Resume ${id}`}>
          Resume
        </button>
      )}
      <button type="button" onClick={timeout} aria-label={`Set timeout of ${id}`} disabled={s.state !== 'running'}>
        Timeout
      </button>
      <button type="button" class="danger" onClick={kill} aria-label={`Kill ${id}`}>
        Kill
      </button>
    </span>
  );
}
