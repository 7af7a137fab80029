// The processes envd started: spawning (pipes or a PTY, always in a new session and process
// group, as the requested user) and the process table. A process (managed-process.ts) lives
// independently of its streams; a piped process's output and end are in pipes.ts.
import { spawn } from 'node:child_process';
import type { IPty } from 'node-pty';
import { Code, ConnectError } from '@connectrpc/connect';
import { ManagedProcess } from './managed-process.js';
import { wirePipes } from './pipes.js';
import { endInfo, spawnError } from './status.js';
import type { SpawnSpec } from './types.js';

export { ManagedProcess } from './managed-process.js';
export { endInfo, killSession, spawnError } from './status.js';
export { MAX_CHUNK } from './types.js';
export type { EndInfo, OutputKind, ProcessConfigInfo, ProcOutput, SpawnSpec, Subscriber } from './types.js';

let ptyModule: typeof import('node-pty') | undefined;
async function loadPty(): Promise<typeof import('node-pty')> {
  if (!ptyModule) {
    const m = (await import('node-pty')) as typeof import('node-pty') & { default?: typeof import('node-pty') };
    ptyModule = typeof m.spawn === 'function' ? m : (m.default as typeof import('node-pty'));
  }
  return ptyModule;
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
    child.once('exit', () => proc.markExited()); // node emits 'exit' after reaping the child
    wirePipes(child, proc);
    return proc;
  }

  /** Kill every process (shutdown). */
  killAll(): void {
    for (const p of this.processes.values()) p.kill('SIGKILL');
  }
}
