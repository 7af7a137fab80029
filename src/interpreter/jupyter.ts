// Jupyter Server inside the sandbox: the process (started and restarted by this server),
// its REST API (kernels: start, interrupt, restart, delete) and each kernel's channels
// WebSocket, through which executions run (Jupyter messaging protocol 5.3).
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import WebSocket from 'ws';
import { errorEvent, now, type Emit, type ExecuteOptions, type Kernel } from './kernel.js';
import { resultEvent } from './results.js';

const PORT = 8888;
const BASE = `http://127.0.0.1:${PORT}`;

export class JupyterServer {
  private child: ChildProcess | undefined;
  private stopped = false;

  constructor(
    private readonly env: NodeJS.ProcessEnv,
    readonly log: (msg: string) => void,
  ) {}

  /** Starts Jupyter (restarted a second after it dies) and waits until it answers. */
  async start(): Promise<void> {
    this.spawnServer();
    await this.waitReady(60_000);
  }

  private spawnServer(): void {
    const args = [
      '-m',
      'jupyter_server',
      '--ServerApp.ip=127.0.0.1',
      `--ServerApp.port=${PORT}`,
      '--ServerApp.port_retries=0',
      '--ServerApp.token=',
      '--ServerApp.password=',
      '--ServerApp.allow_root=True',
      '--ServerApp.open_browser=False',
      '--ServerApp.disable_check_xsrf=True',
      '--ServerApp.root_dir=/home/user',
      '--ServerApp.iopub_data_rate_limit=1e10',
      '--ServerApp.iopub_msg_rate_limit=1e10',
      '--MappingKernelManager.cull_idle_timeout=0',
      '--config=/.cubebox/interpreter/jupyter_config.py',
    ];
    const child = spawn('python3', args, { env: this.env, cwd: '/home/user', stdio: ['ignore', 'ignore', 'pipe'] });
    this.child = child;
    let tail = '';
    // a failed spawn (EMFILE, no python3) has no pipes and no 'exit': it is retried, never a crash
    child.on('error', (err) => {
      if (this.stopped || child.pid !== undefined) return;
      this.log(`jupyter server could not be started (${err.message}); trying again`);
      setTimeout(() => this.spawnServer(), 1000).unref();
    });
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (tail = (tail + d).slice(-4000)));
    child.on('exit', (code, signal) => {
      if (this.stopped) return;
      this.log(`jupyter server exited (${code ?? signal}); restarting it: ${tail.trim().split('\n').slice(-5).join(' | ')}`);
      setTimeout(() => this.spawnServer(), 1000).unref();
    });
  }

  async waitReady(timeoutMs: number): Promise<void> {
    const until = Date.now() + timeoutMs;
    while (Date.now() < until) {
      if (await this.healthy()) return;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`jupyter server did not answer in ${timeoutMs / 1000} s`);
  }

  async healthy(): Promise<boolean> {
    try {
      return (await fetch(`${BASE}/api/status`, { signal: AbortSignal.timeout(2000) })).ok;
    } catch {
      return false;
    }
  }

  stop(): void {
    this.stopped = true;
    this.child?.kill('SIGTERM');
  }

  async request(method: string, path: string, body?: unknown): Promise<unknown> {
    const res = await fetch(`${BASE}${path}`, {
      method,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(60_000),
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${res.status} ${text.slice(0, 500)}`);
    return text ? (JSON.parse(text) as unknown) : null;
  }

  /** A new kernel of the given kernelspec name. */
  async startKernel(name: string): Promise<JupyterKernel> {
    const k = (await this.request('POST', '/api/kernels', { name })) as { id: string };
    const kernel = new JupyterKernel(this, k.id, name);
    await kernel.connect();
    return kernel;
  }
}

interface Message {
  header: { msg_id: string; msg_type: string; date?: string };
  parent_header: { msg_id?: string };
  content: Record<string, unknown>;
  channel?: string;
}

/** How long a silent request may go without any answer before it is sent again, and how often. */
const LOST_REQUEST_MS = 5_000;
const LOST_REQUEST_RESENDS = 3;
/** How long a run whose reply came waits for the kernel's idle status before it ends anyway. */
const IDLE_AFTER_REPLY_MS = 10_000;

/** One kernel, driven over its channels WebSocket. */
export class JupyterKernel implements Kernel {
  private ws: WebSocket | undefined;
  /**
   * The session of the current channels socket: a new one for every socket. Jupyter Server keeps a
   * closed socket's session and its ZMQ streams for a reconnect with the same session and then
   * buffers that session's replies instead of sending them, when the old socket's close is handled
   * after the new socket opened (which a reconnect right after a kernel restart does): the runs on
   * the new socket then never got an answer.
   */
  private session = randomUUID();
  /** Set when Jupyter restarted the kernel on its own: its state (cwd, env, helpers) is gone. */
  restarted = false;
  /**
   * Set when Jupyter gave the kernel up (it died again and again right after each restart) and
   * dropped it: the context gets a new kernel on its next run.
   */
  private dead = false;
  /** The Jupyter kernel behind the context now: the one it started with until one is given up. */
  private kernelId: string;
  private readonly valuesAsDisplay: boolean;
  /** Listeners of running executions, by their request's msg_id. */
  private readonly listeners = new Map<string, (m: Message | null) => void>();

  constructor(
    private readonly server: JupyterServer,
    readonly id: string,
    private readonly kernelName: string,
  ) {
    this.kernelId = id;
    // IRkernel shows a cell's values as display data
    this.valuesAsDisplay = kernelName === 'ir';
  }

  /** The channels socket, opened if need be (its handshake bounded by timeoutMs). */
  async connect(timeoutMs = 60_000): Promise<WebSocket> {
    if (this.ws?.readyState === WebSocket.OPEN) return this.ws;
    this.session = randomUUID();
    const url = `ws://127.0.0.1:${PORT}/api/kernels/${this.kernelId}/channels?session_id=${this.session}`;
    const ws = new WebSocket(url, { maxPayload: 0, handshakeTimeout: timeoutMs });
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
    });
    ws.on('error', () => undefined);
    ws.on('message', (data, isBinary) => {
      if (isBinary) return; // buffers (widgets): not part of the wire
      let m: Message;
      try {
        m = JSON.parse(data.toString()) as Message;
      } catch {
        return;
      }
      const parent = m.parent_header?.msg_id;
      if (parent) this.listeners.get(parent)?.(m);
      else if (m.header?.msg_type === 'status' && ['restarting', 'dead'].includes(String(m.content?.execution_state))) {
        // the kernel died (Jupyter restarts it): running executions end, the context is set up again
        this.restarted = true;
        if (m.content.execution_state === 'dead') this.dead = true;
        for (const l of [...this.listeners.values()]) l(m);
      }
    });
    ws.on('close', () => {
      if (this.ws !== ws) return; // closed on purpose (restart): its runs were ended already
      this.ws = undefined;
      for (const l of [...this.listeners.values()]) l(null);
    });
    this.ws = ws;
    return ws;
  }

  async execute(code: string, emit: Emit, opts: ExecuteOptions = {}): Promise<void> {
    let ws: WebSocket;
    try {
      ws = await this.connect();
    } catch (err) {
      emit(errorEvent('WebSocketError', `cannot reach the kernel: ${String(err)}`));
      return;
    }
    const msgId = randomUUID();
    await new Promise<void>((resolve) => {
      let idle = false;
      let replied = false;
      let errored = false;
      let counted = false;
      let seen = false; // any message of this request: the kernel has it
      let idleWait: NodeJS.Timeout | undefined;
      const finish = () => {
        clearTimeout(idleWait);
        this.listeners.delete(msgId);
        resolve();
      };
      this.listeners.set(msgId, (m) => {
        seen = true;
        if (!m) {
          emit(errorEvent('UnexpectedEndOfExecution', 'the connection to the kernel was lost before the execution finished'));
          return finish();
        }
        const c = m.content;
        switch (m.header.msg_type) {
          case 'execute_input':
            if (!opts.silent && !counted) emit({ type: 'number_of_executions', execution_count: Number(c.execution_count) });
            counted = true;
            break;
          case 'stream':
            emit({ type: c.name === 'stderr' ? 'stderr' : 'stdout', text: String(c.text ?? ''), timestamp: m.header.date ?? now() });
            break;
          case 'execute_result':
          case 'display_data': {
            const data = (c.data ?? {}) as Record<string, unknown>;
            // IRkernel shows a cell's values as display data: those are its main results, not its plots
            const main = m.header.msg_type === 'execute_result' || (this.valuesAsDisplay && !Object.keys(data).some((k) => k.startsWith('image/')));
            emit(resultEvent(data, main));
            break;
          }
          case 'error':
            if (!errored) emit(errorEvent(String(c.ename), String(c.evalue), ((c.traceback ?? []) as string[]).join('\n')));
            errored = true;
            break;
          case 'status':
            if (c.execution_state === 'idle') idle = true;
            else if (c.execution_state === 'restarting' || c.execution_state === 'dead') {
              emit(errorEvent('ContextRestarting', 'Context was restarted'));
              return finish();
            }
            break;
          case 'execute_reply':
            replied = true;
            if (!opts.silent && !counted && typeof c.execution_count === 'number') {
              emit({ type: 'number_of_executions', execution_count: c.execution_count });
              counted = true;
            }
            if (c.status === 'error' && !errored) {
              emit(errorEvent(String(c.ename ?? 'Error'), String(c.evalue ?? ''), ((c.traceback ?? []) as string[]).join('\n')));
              errored = true;
            } else if (c.status === 'abort' || c.status === 'aborted') {
              emit(errorEvent('ExecutionAborted', 'Execution was aborted'));
            }
            // the idle status follows the reply at once unless this socket's iopub went deaf: the
            // run ends anyway, and the next one gets a new socket
            if (!idle)
              idleWait = setTimeout(() => {
                if (!this.listeners.has(msgId)) return;
                this.server.log(`kernel ${this.kernelId}: no idle status after a reply; the run ends and the next one opens a new channels socket`);
                if (this.ws === ws) void this.closeSocket();
                finish();
              }, IDLE_AFTER_REPLY_MS).unref();
            break;
        }
        if (idle && replied) finish();
      });
      const msg = {
        header: { msg_id: msgId, msg_type: 'execute_request', username: 'e2b', session: this.session, date: now(), version: '5.3' },
        parent_header: {},
        metadata: {},
        content: { code, silent: opts.silent === true, store_history: !opts.silent, user_expressions: {}, allow_stdin: false, stop_on_error: true },
        channel: 'shell',
        buffers: [],
      };
      const send = () =>
        ws.send(JSON.stringify(msg), (err) => {
          if (!err) return;
          emit(errorEvent('WebSocketError', 'Failed to send execution request'));
          finish();
        });
      send();
      // Jupyter can drop a request sent just after a kernel restart, even once the kernel answered
      // kernel_info: a silent set-up run that nothing answered is sent again (it is idempotent; a
      // user's code never is, so it is not resent). A request that nothing ever answered while the
      // kernel sits idle was lost: it ends with an error instead of waiting for ever.
      let resends = 0;
      const watchdog = setInterval(() => {
        if (seen || !this.listeners.has(msgId)) return clearInterval(watchdog);
        if (opts.silent && resends < LOST_REQUEST_RESENDS) {
          resends++;
          return send();
        }
        void this.state().then((state) => {
          if (seen || !this.listeners.has(msgId) || state !== 'idle') return;
          clearInterval(watchdog);
          emit(errorEvent('ExecutionLost', 'the kernel never received the request (it is idle); run it again'));
          finish();
        });
      }, LOST_REQUEST_MS);
      watchdog.unref();
    });
  }

  /**
   * Waits until the kernel answers a kernel_info_request on both channels: its reply on shell and
   * its busy/idle status on iopub (asked again every half second: a request sent to a kernel that
   * is still starting after a restart can be lost). A new channels socket's iopub subscription can
   * connect after its shell does: what the kernel publishes in between (the idle status of the
   * next run) is lost, and that run would wait for ever. A socket whose iopub stays silent through
   * two replies is replaced by a new one.
   */
  async waitReady(timeoutMs = 30_000): Promise<void> {
    // a channels socket from before a restart no longer reaches the kernel: a new one does
    await this.closeSocket();
    const until = Date.now() + timeoutMs;
    let deafReplies = 0;
    while (Date.now() < until) {
      const ws = await this.connect(Math.max(1000, until - Date.now())).catch(() => undefined);
      if (!ws) {
        await new Promise((r) => setTimeout(r, 500));
        continue;
      }
      const msgId = randomUUID();
      const answer = await new Promise<'both' | 'shell' | 'none'>((resolve) => {
        let replied = false;
        let statused = false;
        const timer = setTimeout(() => done(replied ? 'shell' : 'none'), 500);
        const done = (a: 'both' | 'shell' | 'none') => {
          clearTimeout(timer);
          this.listeners.delete(msgId);
          resolve(a);
        };
        this.listeners.set(msgId, (m) => {
          if (m?.header.msg_type === 'kernel_info_reply') replied = true;
          else if (m?.header.msg_type === 'status') statused = true;
          if (replied && statused) done('both');
        });
        const header = { msg_id: msgId, msg_type: 'kernel_info_request', username: 'e2b', session: this.session, date: now(), version: '5.3' };
        ws.send(JSON.stringify({ header, parent_header: {}, metadata: {}, content: {}, channel: 'shell', buffers: [] }));
      });
      if (answer === 'both') return;
      // the kernel is up but this socket's iopub is deaf (two replies without a status): a new socket
      if (answer === 'shell' && ++deafReplies >= 2) {
        deafReplies = 0;
        this.server.log(`kernel ${this.kernelId}: no iopub messages on its channels socket; opening a new one`);
        await this.closeSocket();
      }
    }
    throw new Error(`kernel ${this.kernelId} did not answer in ${timeoutMs / 1000} s`);
  }

  /**
   * Closes the channels socket and waits until it is closed (2 s at most): Jupyter Server keeps a
   * closed session's messages until another session connects, so the next socket opens only after.
   */
  private async closeSocket(): Promise<void> {
    const ws = this.ws;
    this.ws = undefined;
    if (!ws || ws.readyState === WebSocket.CLOSED) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        ws.terminate();
        resolve();
      }, 2000);
      ws.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
      ws.close();
    });
  }

  /** The kernel's execution state as Jupyter Server last saw it ('idle', 'busy', ...); '' if it cannot say. */
  private async state(): Promise<string> {
    const k = (await this.server.request('GET', `/api/kernels/${this.kernelId}`).catch(() => undefined)) as { execution_state?: unknown } | undefined;
    return typeof k?.execution_state === 'string' ? k.execution_state : '';
  }

  /**
   * Makes the kernel usable again after Jupyter restarted it on its own: waits for the restarted
   * kernel, or starts a new one when Jupyter gave it up.
   */
  async recover(): Promise<void> {
    this.restarted = false;
    if (this.dead) {
      await this.closeSocket();
      const k = (await this.server.request('POST', '/api/kernels', { name: this.kernelName })) as { id: string };
      this.kernelId = k.id;
      this.dead = false;
    }
    await this.waitReady();
  }

  async interrupt(): Promise<void> {
    await this.server.request('POST', `/api/kernels/${this.kernelId}/interrupt`);
  }

  async restart(): Promise<void> {
    await this.closeSocket();
    await this.server.request('POST', `/api/kernels/${this.kernelId}/restart`);
    await this.waitReady();
  }

  async shutdown(): Promise<void> {
    await this.closeSocket();
    if (this.dead) return; // Jupyter dropped it already
    await this.server.request('DELETE', `/api/kernels/${this.kernelId}`);
  }
}
