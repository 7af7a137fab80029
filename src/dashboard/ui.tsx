// What the views share: polling with backoff, a confirmation dialog, tabs, and formatting.
import type { ComponentChildren } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';
import { message } from './api.js';

/**
 * Calls `fetch` now and again every `everyMs`; a failure doubles the wait (up to a minute), a
 * hidden tab waits at least 15 s. Returns the last data, the last error, and a refresh.
 */
export function usePoll<T>(fetcher: () => Promise<T>, deps: unknown[], everyMs = 3000) {
  const [data, setData] = useState<T | undefined>(undefined);
  const [error, setError] = useState<string | undefined>(undefined);
  const [tick, setTick] = useState(0);
  const fn = useRef(fetcher);
  fn.current = fetcher;
  useEffect(() => {
    let stopped = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    let wait = everyMs;
    const run = async () => {
      try {
        const d = await fn.current();
        if (stopped) return;
        setData(d);
        setError(undefined);
        wait = everyMs;
      } catch (e) {
        if (stopped) return;
        setError(message(e));
        wait = Math.min(wait * 2, 60_000);
      }
      if (!stopped && everyMs > 0) timer = setTimeout(() => void run(), document.hidden ? Math.max(wait, 15_000) : wait);
    };
    void run();
    return () => {
      stopped = true;
      clearTimeout(timer);
    };
  }, [...deps, tick, everyMs]);
  return { data, error, refresh: () => setTick((t) => t + 1) };
}

export interface ConfirmRequest {
  title: string;
  body?: ComponentChildren;
  action: string;
  danger?: boolean;
  run: () => Promise<unknown>;
}

/** A modal confirmation (never window.confirm): Escape or Cancel closes it, the action button has focus. */
export function Confirm({ req, onClose }: { req: ConfirmRequest; onClose: (err?: string) => void }) {
  const ok = useRef<HTMLButtonElement>(null);
  const [busy, setBusy] = useState(false);
  useEffect(() => {
    // focus moves into the dialog and, when it closes, back to what opened it
    const opener = document.activeElement as HTMLElement | null;
    ok.current?.focus();
    return () => opener?.focus();
  }, []);
  const go = async () => {
    setBusy(true);
    try {
      await req.run();
      onClose();
    } catch (e) {
      onClose(message(e));
    }
  };
  return (
    <div class="backdrop" onKeyDown={(e) => e.key === 'Escape' && onClose()}>
      <div class="dialog" role="dialog" aria-modal="true" aria-labelledby="confirm-title">
        <h2 id="confirm-title">{req.title}</h2>
        {req.body}
        <div class="row">
          <button type="button" ref={ok} class={req.danger ? 'danger' : ''} disabled={busy} onClick={() => void go()}>
            {req.action}
          </button>
          <button type="button" onClick={() => onClose()} disabled={busy}>
            Cancel
          </button>
        </div>
      </div>
    </div>
  );
}

export function Tabs<K extends string>({ tabs, current, onPick, label }: { tabs: [K, string][]; current: K; onPick: (k: K) => void; label: string }) {
  return (
    <div role="tablist" aria-label={label} class="tabs">
      {tabs.map(([k, name]) => (
        <button type="button" role="tab" aria-selected={k === current} key={k} class={k === current ? 'on' : ''} onClick={() => onPick(k)}>
          {name}
        </button>
      ))}
    </div>
  );
}

export const ErrorLine = ({ error }: { error?: string }) =>
  error ? (
    <p class="error" role="alert">
      {error}
    </p>
  ) : null;

export function time(iso: string | undefined): string {
  if (!iso) return '';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString(undefined, { dateStyle: 'short', timeStyle: 'medium' });
}

export function bytes(n: number | undefined): string {
  if (n === undefined || !Number.isFinite(n)) return '';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n < 10 && i ? n.toFixed(1) : Math.round(n)} ${u[i]}`;
}

/** Metadata as text: key=value pairs, each a separate text node (never markup). */
export const Meta = ({ m }: { m: Record<string, string> | undefined }) => (
  <span class="meta">
    {Object.entries(m ?? {}).map(([k, v]) => (
      <span class="chip" key={k}>
        {k}={v}
      </span>
    ))}
  </span>
);
