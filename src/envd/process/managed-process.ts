// One process envd started: output fan-out to the streams attached to it (with flow control),
// stdin, resize, signals, its deadline and its end. It lives independently of its streams.
import type { ChildProcess } from 'node:child_process';
import type { IPty } from 'node-pty';
import { Code, ConnectError } from '@connectrpc/connect';
import { killSession } from './status.js';
import { MAX_CHUNK, type EndInfo, type OutputKind, type SpawnSpec, type Subscriber } from './types.js';

export class ManagedProcess {
  readonly subscribers = new Set<Subscriber>();
  ended?: EndInfo;
  private paused = false;
  private deadline?: NodeJS.Timeout;
  private stdinClosed = false;
  /** Set once the process itself has exited and been reaped (its end may wait for its pipes). */
  private gone = false;
  private goneWaiters: (() => void)[] = [];

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

  /** The process exited and was reaped: its pid no longer exists. */
  markExited(): void {
    if (this.gone) return;
    this.gone = true;
    for (const w of this.goneWaiters.splice(0)) w();
  }

  /** Resolves once the process exited and was reaped, or after ms; whether it did. */
  waitExited(ms: number): Promise<boolean> {
    if (this.gone) return Promise.resolve(true);
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        resolve(this.gone);
      };
      const timer = setTimeout(() => {
        this.goneWaiters = this.goneWaiters.filter((w) => w !== done);
        done();
      }, ms);
      this.goneWaiters.push(done);
    });
  }

  finish(end: EndInfo): void {
    this.markExited();
    if (this.ended) return;
    this.ended = end;
    if (this.deadline) clearTimeout(this.deadline);
    // A natural end leaves what the command started in the background running, as E2B's envd
    // does (`server &` is how agents start servers); a kill or the deadline took the whole tree
    // (killSession). A fork storm stays inside the sandbox's pids and CPU limits.
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
