// The processes envd started: spawning (pipes or a PTY, always in a new session and process
// group, as the requested user), output fan-out to the streams attached to a process, stdin,
// signals, deadlines and exit status. A process lives independently of its streams.
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import type { IPty } from 'node-pty';
import { Code, ConnectError } from '@connectrpc/connect';
import type { UserInfo } from '../users.js';

/** Largest data event sent to a client. */
export const MAX_CHUNK = 32 * 1024;
/** How long the output pipes may stay quiet and open after the process exited (background children). */
const PIPE_GRACE_MS = 100;
/** How long a background child may keep the pipes open and busy after the process exited. */
const PIPE_BUSY_CAP_MS = 1000;

/**
 * Run `f` after the event loop has polled for I/O at least once more. A process's exit can be
 * seen before its last output is: libuv reaps every exited child when it handles one SIGCHLD, so
 * a child that wrote and exited while envd was busy has its exit reported while its pipe's
 * readiness waits for the next poll. (Two check phases: the first is the current iteration's.)
 */
function afterIoRound(f: () => void): void {
  setImmediate(() => setImmediate(f));
}

export type OutputKind = 'stdout' | 'stderr' | 'pty';

export interface EndInfo {
  exitCode: number;
  exited: boolean;
  status: string;
  error?: string;
}

export type ProcOutput = { kind: 'data'; stream: OutputKind; data: Buffer } | { kind: 'end'; end: EndInfo };

export interface Subscriber {
  push(ev: ProcOutput): void;
  congested(): boolean;
}

export interface ProcessConfigInfo {
  cmd: string;
  args: string[];
  envs: Record<string, string>;
  cwd?: string;
}

export interface SpawnSpec {
  file: string;
  args: string[];
  env: Record<string, string>;
  cwd: string;
  user: UserInfo;
  pty?: { cols: number; rows: number };
  stdin: boolean;
  tag?: string;
  /** The configuration as requested, reported by List. */
  config: ProcessConfigInfo;
  /** Process deadline: the whole session is killed when it passes. */
  timeoutMs?: number;
}

// Go's names of the signals (ProcessState.String() of E2B's envd).
const SIGNAL_TEXT: Record<number, string> = {
  1: 'hangup', 2: 'interrupt', 3: 'quit', 4: 'illegal instruction', 5: 'trace/breakpoint trap',
  6: 'aborted', 7: 'bus error', 8: 'floating point exception', 9: 'killed', 10: 'user defined signal 1',
  11: 'segmentation fault', 12: 'user defined signal 2', 13: 'broken pipe', 14: 'alarm clock',
  15: 'terminated', 16: 'stack fault', 17: 'child exited', 18: 'continued', 19: 'stopped (signal)',
  20: 'stopped', 21: 'stopped (tty input)', 22: 'stopped (tty output)', 23: 'urgent I/O condition',
  24: 'CPU time limit exceeded', 25: 'file size limit exceeded', 26: 'virtual timer expired',
  27: 'profiling timer expired', 28: 'window changed', 29: 'I/O possible', 30: 'power failure',
  31: 'bad system call',
};

export function endInfo(code: number | null, signal: number | null): EndInfo {
  if (signal) {
    const status = `signal: ${SIGNAL_TEXT[signal] ?? `signal ${signal}`}`;
    return { exitCode: -1, exited: false, status, error: status };
  }
  const c = code ?? -1;
  const status = `exit status ${c}`;
  return c === 0 ? { exitCode: 0, exited: true, status } : { exitCode: c, exited: true, status, error: status };
}

function signalNumber(sig: NodeJS.Signals | null): number | null {
  if (!sig) return null;
  return (osConstants.signals as Record<string, number>)[sig] ?? null;
}

/**
 * Kill a process group and, for SIGKILL, every process of the session the leader created
 * (job-control shells put jobs in groups of their own). A session id cannot be reused while
 * any process still has it, so this only ever hits descendants of the leader.
 */
export function killSession(sid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(-sid, sig);
  } catch {
    /* group gone */
  }
  if (sig !== 'SIGKILL') return;
  let names: string[] = [];
  try {
    names = readdirSync('/proc');
  } catch {
    return;
  }
  for (const n of names) {
    const c = n.charCodeAt(0);
    if (c < 48 || c > 57) continue;
    try {
      const stat = readFileSync(`/proc/${n}/stat`, 'latin1');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[3]) === sid) process.kill(Number(n), 'SIGKILL');
    } catch {
      /* exited meanwhile */
    }
  }
}

/**
 * Why a process could not start, as a Connect error: the sandbox's limits (a fork refused with
 * EAGAIN under the pids limit, no memory, no file descriptors) are resource_exhausted, not a bad
 * request.
 */
export function spawnError(e: NodeJS.ErrnoException): ConnectError {
  const code = e.code ?? /\b(EAGAIN|ENOMEM|EMFILE|ENFILE)\b/.exec(e.message ?? '')?.[1];
  switch (code) {
    case 'EAGAIN':
      return new ConnectError(
        `failed to start the process: the sandbox reached its process limit (pids limit: too many processes or threads running): ${e.message}`,
        Code.ResourceExhausted,
      );
    case 'ENOMEM':
      return new ConnectError(`failed to start the process: the sandbox is out of memory: ${e.message}`, Code.ResourceExhausted);
    case 'EMFILE':
    case 'ENFILE':
      return new ConnectError(`failed to start the process: too many open files: ${e.message}`, Code.ResourceExhausted);
    default:
      return new ConnectError(`failed to start the process: ${e.message}`, Code.InvalidArgument);
  }
}

let ptyModule: typeof import('node-pty') | undefined;
async function loadPty(): Promise<typeof import('node-pty')> {
  if (!ptyModule) {
    const m = (await import('node-pty')) as typeof import('node-pty') & { default?: typeof import('node-pty') };
    ptyModule = typeof m.spawn === 'function' ? m : (m.default as typeof import('node-pty'));
  }
  return ptyModule;
}

export class ManagedProcess {
  readonly subscribers = new Set<Subscriber>();
  ended?: EndInfo;
  private paused = false;
  private deadline?: NodeJS.Timeout;
  private stdinClosed = false;

  constructor(
    readonly pid: number,
    readonly spec: SpawnSpec,
    private readonly child: ChildProcess | undefined,
    private readonly pty: IPty | undefined,
    private readonly onEnd: (p: ManagedProcess) => void,
  ) {
    if (spec.timeoutMs !== undefined && spec.timeoutMs > 0) {
      this.deadline = setTimeout(() => this.kill('SIGKILL'), Math.min(spec.timeoutMs, 2 ** 31 - 1));
    }
  }

  get tag(): string | undefined {
    return this.spec.tag;
  }

  get isPty(): boolean {
    return this.pty !== undefined;
  }

  get isPaused(): boolean {
    return this.paused;
  }

  /** Attach a stream; it receives output from now on (and the end if it already ended). */
  subscribe(sub: Subscriber): () => void {
    if (this.ended) {
      sub.push({ kind: 'end', end: this.ended });
      return () => {};
    }
    this.subscribers.add(sub);
    return () => {
      this.subscribers.delete(sub);
      this.updateFlow();
    };
  }

  emitData(stream: OutputKind, data: Buffer): void {
    if (this.subscribers.size === 0) return;
    for (let off = 0; off < data.length; off += MAX_CHUNK) {
      const chunk = data.length <= MAX_CHUNK ? data : data.subarray(off, off + MAX_CHUNK);
      for (const s of this.subscribers) s.push({ kind: 'data', stream, data: chunk });
    }
    this.updateFlow();
  }

  /** Pause reading output while a stream is congested; resume once none is. */
  updateFlow(): void {
    let congested = false;
    for (const s of this.subscribers) if (s.congested()) congested = true;
    if (congested === this.paused || this.ended) return;
    this.paused = congested;
    if (this.pty) {
      if (congested) this.pty.pause();
      else this.pty.resume();
    } else if (this.child) {
      for (const s of [this.child.stdout, this.child.stderr]) {
        if (!s) continue;
        if (congested) s.pause();
        else s.resume();
      }
    }
  }

  finish(end: EndInfo): void {
    if (this.ended) return;
    this.ended = end;
    if (this.deadline) clearTimeout(this.deadline);
    this.onEnd(this);
    for (const s of this.subscribers) s.push({ kind: 'end', end });
    this.subscribers.clear();
  }

  kill(sig: NodeJS.Signals): void {
    if (this.ended) return;
    killSession(this.pid, sig);
  }

  async writeInput(data: Uint8Array): Promise<void> {
    if (this.pty) {
      this.pty.write(Buffer.from(data.buffer, data.byteOffset, data.byteLength));
      return;
    }
    const stdin = this.child?.stdin;
    if (!stdin) throw new ConnectError('stdin is not enabled for this process', Code.FailedPrecondition);
    if (this.stdinClosed || stdin.destroyed) throw new ConnectError('stdin is closed', Code.FailedPrecondition);
    await new Promise<void>((resolve, reject) => {
      stdin.write(Buffer.from(data), (err) => (err ? reject(new ConnectError(`failed to write to stdin: ${err.message}`, Code.Internal)) : resolve()));
    });
  }

  closeStdin(): void {
    if (this.pty) {
      this.pty.write('\x04');
      return;
    }
    const stdin = this.child?.stdin;
    if (!stdin) throw new ConnectError('stdin is not enabled for this process', Code.FailedPrecondition);
    this.stdinClosed = true;
    stdin.end();
  }

  resize(cols: number, rows: number): void {
    if (!this.pty) throw new ConnectError('the process has no PTY', Code.FailedPrecondition);
    if (!(cols > 0 && rows > 0)) throw new ConnectError('cols and rows must be positive', Code.InvalidArgument);
    this.pty.resize(cols, rows);
  }
}

export class ProcessManager {
  readonly processes = new Map<number, ManagedProcess>();
  private warnedNoHelper = false;

  constructor(private readonly helperPath: string | undefined) {}

  list(): ManagedProcess[] {
    return [...this.processes.values()];
  }

  find(sel: { pid?: number; tag?: string }): ManagedProcess {
    if (sel.pid !== undefined) {
      const p = this.processes.get(sel.pid);
      if (!p) throw new ConnectError(`process with pid ${sel.pid} not found`, Code.NotFound);
      return p;
    }
    if (sel.tag !== undefined) {
      for (const p of this.processes.values()) if (p.tag === sel.tag) return p;
      throw new ConnectError(`process with tag ${sel.tag} not found`, Code.NotFound);
    }
    throw new ConnectError('a process selector (pid or tag) is required', Code.InvalidArgument);
  }

  /** argv that starts `file args` as the user through the exec helper. */
  private wrap(spec: SpawnSpec, tty: boolean): { file: string; args: string[]; direct: boolean } {
    if (!this.helperPath) {
      if (!this.warnedNoHelper) {
        this.warnedNoHelper = true;
        process.stderr.write('envd: exec helper not found: processes run without supplementary groups\n');
      }
      return { file: spec.file, args: spec.args, direct: true };
    }
    const u = spec.user;
    const args = [String(u.uid), String(u.gid), u.groups.length ? u.groups.join(',') : '-', spec.cwd, spec.file, ...spec.args];
    if (tty) args.unshift('-t');
    return { file: this.helperPath, args, direct: false };
  }

  /**
   * Start a process. `attach` is called synchronously right after the spawn, before any output
   * can be read, so the first stream sees everything.
   */
  async start(spec: SpawnSpec, attach: (p: ManagedProcess) => void): Promise<ManagedProcess> {
    const onEnd = (p: ManagedProcess) => {
      if (this.processes.get(p.pid) === p) this.processes.delete(p.pid);
    };
    if (spec.pty) {
      const ptyMod = await loadPty();
      const w = this.wrap(spec, true);
      let term: IPty;
      try {
        term = ptyMod.spawn(w.file, w.args, {
          name: spec.env.TERM || 'xterm-256color',
          cols: spec.pty.cols,
          rows: spec.pty.rows,
          cwd: spec.cwd,
          env: spec.env,
          encoding: null,
          ...(w.direct ? { uid: spec.user.uid, gid: spec.user.gid } : {}),
        });
      } catch (e) {
        throw spawnError(e as NodeJS.ErrnoException);
      }
      const proc = new ManagedProcess(term.pid, spec, undefined, term, onEnd);
      this.processes.set(proc.pid, proc);
      attach(proc);
      term.onData((d: string | Buffer) => proc.emitData('pty', typeof d === 'string' ? Buffer.from(d) : d));
      term.onExit(({ exitCode, signal }) => proc.finish(endInfo(exitCode, signal || null)));
      return proc;
    }

    const w = this.wrap(spec, false);
    const child = spawn(w.file, w.args, {
      cwd: spec.cwd,
      env: spec.env,
      stdio: [spec.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'],
      detached: true,
      ...(w.direct ? { uid: spec.user.uid, gid: spec.user.gid } : {}),
    });
    if (child.pid === undefined) {
      const err = await new Promise<NodeJS.ErrnoException>((resolve) => child.once('error', resolve));
      throw spawnError(err);
    }
    const proc = new ManagedProcess(child.pid, spec, child, undefined, onEnd);
    this.processes.set(proc.pid, proc);
    attach(proc);
    child.stdin?.on('error', () => {});
    child.stdout?.on('data', (d: Buffer) => proc.emitData('stdout', d));
    child.stderr?.on('data', (d: Buffer) => proc.emitData('stderr', d));
    let exit: EndInfo | undefined;
    let exitSeenAt = 0;
    let grace: NodeJS.Timeout | undefined;
    let closed = false;
    let dataSeq = 0;
    child.stdout?.on('data', () => dataSeq++);
    child.stderr?.on('data', () => dataSeq++);
    const done = () => {
      closed = true;
      if (grace) clearTimeout(grace);
      if (exit) proc.finish(exit);
    };
    child.on('error', () => {});
    // The end is sent once both pipes reached EOF ('close'), so every byte the process wrote is
    // read first. A background child may hold the pipes open: then the pipes are cut once they
    // stayed quiet over a grace period and a full I/O poll (never on a timer alone: under load
    // the loop's clock is stale and a timer can fire before pending output is read), or once the
    // process has been gone for PIPE_BUSY_CAP_MS; never while a slow stream holds the output back.
    const cut = () => {
      if (closed) return;
      child.stdout?.destroy();
      child.stderr?.destroy();
      done();
    };
    const armGrace = () => {
      if (closed) return;
      const seq = dataSeq;
      grace = setTimeout(() => {
        grace = undefined;
        if (closed) return;
        if (proc.isPaused) return armGrace();
        afterIoRound(() => {
          if (closed) return;
          if (proc.isPaused) return armGrace();
          if (dataSeq === seq || performance.now() - exitSeenAt > PIPE_BUSY_CAP_MS) cut();
          else armGrace();
        });
      }, PIPE_GRACE_MS);
    };
    child.on('exit', (code, signal) => {
      exit = endInfo(code, signalNumber(signal));
      exitSeenAt = performance.now();
      afterIoRound(armGrace);
    });
    child.on('close', done);
    return proc;
  }

  /** Kill every process (shutdown). */
  killAll(): void {
    for (const p of this.processes.values()) p.kill('SIGKILL');
  }
}
