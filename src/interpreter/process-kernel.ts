// Kernels that are a child process of this server: a persistent bash, the Node kernel
// (js-kernel.ts) and the Java kernel (java/JavaKernel.java). Each execution ends with a marker the child writes on its stdout and its
// stderr (\x1e<token>[:<status>]\x1e), so that every byte of output written before the end
// is passed on before the execution ends, whatever order the pipes are read in.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { errorEvent, now, type Emit, type ExecuteOptions, type Kernel, type OutEvent } from './kernel.js';
import { resultEvent } from './results.js';

const SEP = '\x1e';
/** Where kernels start (the sandbox user's home). */
const HOME_DIR = existsSync('/home/user') ? '/home/user' : '/';

/** Splits a child's output into text and end markers; a marker split across chunks is held back. */
class MarkerStream {
  private held = '';
  constructor(
    private readonly onText: (text: string) => void,
    private readonly onMarker: (token: string, status: string) => void,
  ) {}

  feed(chunk: string): void {
    let s = this.held + chunk;
    this.held = '';
    for (;;) {
      const at = s.indexOf(SEP);
      if (at < 0) break;
      const end = s.indexOf(SEP, at + 1);
      if (end < 0) {
        if (s.length - at > 80) break; // too long for a marker: plain output
        if (at > 0) this.onText(s.slice(0, at));
        this.held = s.slice(at);
        return;
      }
      const m = /^([a-f0-9]{16})(?::(\d+))?$/.exec(s.slice(at + 1, end));
      if (!m) {
        this.onText(s.slice(0, end));
        s = s.slice(end);
        continue;
      }
      if (at > 0) this.onText(s.slice(0, at));
      this.onMarker(m[1]!, m[2] ?? '');
      s = s.slice(end + 1);
    }
    if (s) this.onText(s);
  }
}

interface Running {
  token: string;
  emit: Emit;
  seen: Set<string>;
  status?: string;
  done: () => void;
  /** JS: the kernel's answer (result or error) on its control channel. */
  reply?: { result?: Record<string, unknown>; error?: { name: string; value: string; traceback: string } };
}

/** A kernel in a child process; subclasses say how to start it and how to send a cell. */
abstract class ProcessKernel implements Kernel {
  protected child: ChildProcess | undefined;
  protected running: Running | undefined;
  private count = 0;

  constructor(protected readonly env: NodeJS.ProcessEnv) {}

  protected abstract launch(): ChildProcess;
  protected abstract send(code: string, token: string): void;
  /** Whether an execution is complete once both markers are in. */
  protected complete(r: Running): boolean {
    return r.seen.has('stdout') && r.seen.has('stderr');
  }

  async start(): Promise<void> {
    const child = this.launch();
    this.child = child;
    // listened to first: a spawn that fails (EMFILE, a missing binary) has no pipes and reports
    // here, never as an unhandled 'error' that would end the server
    child.on('error', (err) => {
      for (const name of ['stdout', 'stderr'] as const) child[name]?.destroy();
      this.running?.emit(errorEvent('KernelError', `the kernel could not be started: ${err.message}`));
      this.running?.done();
    });
    if (!child.stdout || !child.stderr) {
      this.child = undefined;
      throw new Error('the kernel could not be started');
    }
    for (const name of ['stdout', 'stderr'] as const) {
      const stream = new MarkerStream(
        (text) => this.running?.emit({ type: name, text, timestamp: now() }),
        (token, status) => {
          const r = this.running;
          if (!r || r.token !== token) return;
          r.seen.add(name);
          if (status) r.status = status;
          if (this.complete(r)) r.done();
        },
      );
      child[name]!.setEncoding('utf8').on('data', (d: string) => stream.feed(d));
    }
    child.on('exit', () => {
      if (this.child !== child) return;
      this.child = undefined;
      const r = this.running;
      if (r) {
        r.emit(errorEvent('ContextRestarting', 'the kernel exited; it was started again and its state is lost'));
        r.done();
      }
    });
    // a first empty execution: the kernel is up and its startup output is behind us
    await this.execute('', () => undefined, { silent: true });
  }

  async execute(code: string, emit: Emit, opts: ExecuteOptions = {}): Promise<void> {
    if (!this.child) await this.start();
    const token = randomBytes(8).toString('hex');
    if (!opts.silent) emit({ type: 'number_of_executions', execution_count: ++this.count });
    await new Promise<void>((resolve) => {
      const r: Running = { token, emit, seen: new Set(), done: () => undefined };
      r.done = () => {
        if (this.running === r) this.running = undefined;
        this.finish(r);
        resolve();
      };
      this.running = r;
      this.send(code, token);
    });
  }

  /** What an execution reports at its end beyond its output. */
  protected finish(_r: Running): void {}

  async interrupt(): Promise<void> {
    const r = this.running;
    const child = this.child;
    if (!r || !child?.pid) return;
    try {
      process.kill(-child.pid, 'SIGINT');
    } catch {
      /* gone */
    }
    this.afterInterrupt(r);
    // a kernel that does not come back is started again: the context stays usable
    const timer = setTimeout(() => {
      if (this.running === r && this.child === child) {
        r.emit(errorEvent('KeyboardInterrupt', 'the kernel did not stop; it was started again and its state is lost'));
        this.kill();
        r.done();
      }
    }, 3000);
    timer.unref();
  }

  protected afterInterrupt(_r: Running): void {}

  protected kill(): void {
    const child = this.child;
    this.child = undefined;
    if (child?.pid) {
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  }

  async restart(): Promise<void> {
    this.kill();
    this.count = 0;
    await this.start();
  }

  async shutdown(): Promise<void> {
    this.kill();
  }
}

/** A persistent bash: variables, functions and the working directory stay between runs. */
export class BashKernel extends ProcessKernel {
  private readonly dir = mkdtempSync('/tmp/.cubebox-bash-');

  protected override launch(): ChildProcess {
    // interactive, so that an interrupt ends the running command line and not the shell
    return spawn('bash', ['--norc', '--noprofile', '--noediting', '-i'], {
      env: { ...this.env, PS1: '', PS2: '', PROMPT_COMMAND: '' },
      cwd: HOME_DIR,
      stdio: ['pipe', 'pipe', 'pipe'],
      detached: true,
    });
  }

  protected override send(code: string, token: string): void {
    // the cell runs from a file: a syntax error in it cannot swallow the end marker
    const cell = join(this.dir, 'cell.sh');
    writeFileSync(cell, code + '\n', { mode: 0o600 });
    const done = `printf '${SEP}%s:%s${SEP}' ${token} $?; printf '${SEP}%s${SEP}' ${token} >&2`;
    const prelude = this.primed ? '' : `set +H; `;
    this.primed = true;
    this.child?.stdin?.write(`${prelude}. ${cell} </dev/null; ${done}\n`);
  }
  private primed = false;

  protected override afterInterrupt(r: Running): void {
    // bash drops the rest of an interrupted line, its marker included: ask for a new one
    const token = randomBytes(8).toString('hex');
    r.token = token;
    r.status = '130';
    this.child?.stdin?.write(`printf '${SEP}%s:130${SEP}' ${token}; printf '${SEP}%s${SEP}' ${token} >&2\n`);
  }

  protected override finish(r: Running): void {
    if (r.status && r.status !== '0') r.emit(errorEvent('ExitCode', r.status, `the last command exited with status ${r.status}`));
  }

  override async shutdown(): Promise<void> {
    await super.shutdown();
    rmSync(this.dir, { recursive: true, force: true });
  }

  override async restart(): Promise<void> {
    this.primed = false;
    await super.restart();
  }
}

/**
 * A kernel that answers each execution on a control channel (fd 3): a JSON line with its token
 * and the cell's result or error, before its end markers.
 */
abstract class ReplyKernel extends ProcessKernel {
  /** Spawns the child with fd 3 as the control channel and listens to its replies. */
  protected spawnWithControl(file: string, args: string[], stdin: 'ignore' | 'pipe'): ChildProcess {
    const child = spawn(file, args, { env: this.env, cwd: HOME_DIR, stdio: [stdin, 'pipe', 'pipe', 'pipe'], detached: true });
    child.on('error', () => undefined); // start() reports it; pipes are missing after a failed spawn
    const control = child.stdio[3] as NodeJS.ReadableStream | null | undefined;
    if (!control) return child;
    createInterface({ input: control }).on('line', (line) => {
      let msg: { token: string } & NonNullable<Running['reply']>;
      try {
        msg = JSON.parse(line) as typeof msg;
      } catch {
        return;
      }
      const r = this.running;
      if (!r || r.token !== msg.token) return;
      r.reply = msg;
      r.seen.add('reply');
      if (this.complete(r)) r.done();
    });
    return child;
  }

  protected override complete(r: Running): boolean {
    return super.complete(r) && r.seen.has('reply');
  }

  protected override finish(r: Running): void {
    if (r.reply?.result) r.emit(resultEvent(r.reply.result, true));
    if (r.reply?.error) r.emit(errorEvent(r.reply.error.name, r.reply.error.value, r.reply.error.traceback));
  }
}

/** The Node kernel (js-kernel.mjs) over the server's own node; requests and replies on fd 3. */
export class NodeKernel extends ReplyKernel {
  constructor(
    env: NodeJS.ProcessEnv,
    private readonly command: string[],
    private readonly typescript: boolean,
  ) {
    super(env);
  }

  protected override launch(): ChildProcess {
    const [file, ...args] = this.command;
    return this.spawnWithControl(file!, args, 'ignore');
  }

  protected override send(code: string, token: string): void {
    (this.child?.stdio[3] as NodeJS.WritableStream | undefined)?.write(JSON.stringify({ token, code, typescript: this.typescript }) + '\n');
  }
}

/** The Java kernel (JavaKernel.java: the JDK's JShell in one JVM); requests on stdin, replies on fd 3. */
export class JavaKernel extends ReplyKernel {
  constructor(
    env: NodeJS.ProcessEnv,
    private readonly command: string[],
  ) {
    super(env);
  }

  protected override launch(): ChildProcess {
    const [file, ...args] = this.command;
    return this.spawnWithControl(file!, args, 'pipe');
  }

  protected override send(code: string, token: string): void {
    this.child?.stdin?.write(`${token} ${Buffer.from(code, 'utf8').toString('base64')}\n`);
  }
}

export type { OutEvent };
