// A terminal in the sandbox: xterm.js over E2B's PTY API (the SDK's pty.create, sendInput, resize).
import { FitAddon } from '@xterm/addon-fit';
import { Terminal } from '@xterm/xterm';
import { useEffect, useRef, useState } from 'preact/hooks';
import { message, type SandboxDetail } from './api.js';
import { sdkSandbox } from './sdk.js';
import { ErrorLine } from './ui.js';

export function TerminalPane({ detail }: { detail: SandboxDetail }) {
  const el = useRef<HTMLDivElement>(null);
  const [error, setError] = useState<string>();
  const [status, setStatus] = useState('connecting…');
  useEffect(() => {
    if (!el.current) return;
    const term = new Terminal({ cursorBlink: true, fontSize: 14, convertEol: false, scrollback: 2000 });
    const fit = new FitAddon();
    term.loadAddon(fit);
    term.open(el.current);
    fit.fit();
    const sbx = sdkSandbox(detail);
    const enc = new TextEncoder();
    let pid: number | undefined;
    let closed = false;
    let handle: { kill(): Promise<boolean>; disconnect(): Promise<void> } | undefined;
    sbx.pty
      .create({ cols: term.cols, rows: term.rows, timeoutMs: 0, onData: (d) => term.write(d) })
      .then((h) => {
        handle = h;
        pid = h.pid;
        if (closed) return void h.kill().catch(() => undefined);
        setStatus(`connected (pid ${h.pid})`);
        term.focus();
        h.wait()
          .then(() => setStatus('the shell exited'))
          .catch((e: unknown) => !closed && setStatus(`ended: ${message(e)}`));
      })
      .catch((e: unknown) => setError(message(e)));
    // input goes out in order, one request at a time
    let chain: Promise<unknown> = Promise.resolve();
    const input = term.onData((s) => {
      if (pid === undefined) return;
      const p = pid;
      chain = chain.then(() => sbx.pty.sendInput(p, enc.encode(s))).catch((e: unknown) => setError(message(e)));
    });
    const onResize = () => {
      fit.fit();
      if (pid !== undefined) void sbx.pty.resize(pid, { cols: term.cols, rows: term.rows }).catch(() => undefined);
    };
    window.addEventListener('resize', onResize);
    return () => {
      closed = true;
      window.removeEventListener('resize', onResize);
      input.dispose();
      void handle?.kill().catch(() => undefined);
      term.dispose();
    };
  }, [detail.sandboxID]);
  return (
    <div>
      <p class="muted" aria-live="polite">
        Terminal: {status}
      </p>
      <ErrorLine error={error} />
      <div class="term-box" ref={el} aria-label="Terminal" />
    </div>
  );
}
