// Connect implementation of process.Process.
import { statSync } from 'node:fs';
import { posix } from 'node:path';
import type { HandlerContext, ServiceImpl } from '@connectrpc/connect';
import { Code, ConnectError } from '@connectrpc/connect';
import type { MessageInitShape } from '@bufbuild/protobuf';
import { Process, Signal, type ProcessEventSchema, type ProcessSelector } from '../gen/process/process_pb.js';
import { rpcUser } from '../rpc-user.js';
import { resolvePath } from '../paths.js';
import { EventQueue, keepaliveMs } from '../queue.js';
import type { EnvdState } from '../state.js';
import type { UserInfo } from '../users.js';
import { type ManagedProcess, type ProcOutput, type ProcessManager, type Subscriber } from './manager.js';

const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
/** How long a SIGKILL's answer waits for the process to be gone. */
const KILL_WAIT_MS = 5000;

/** A StartResponse or ConnectResponse (same shape). */
type EventInit = { event: MessageInitShape<typeof ProcessEventSchema> };

function toEvent(ev: ProcOutput): EventInit {
  if (ev.kind === 'data') {
    return { event: { event: { case: 'data', value: { output: { case: ev.stream, value: ev.data } } } } };
  }
  return { event: { event: { case: 'end', value: ev.end } } };
}

function selector(sel: ProcessSelector | undefined): { pid?: number; tag?: string } {
  const s = sel?.selector;
  if (s?.case === 'pid') return { pid: s.value };
  if (s?.case === 'tag') return { tag: s.value };
  return {};
}

function isDir(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

function isExecutableFile(p: string): boolean {
  try {
    const st = statSync(p);
    return st.isFile() && (st.mode & 0o111) !== 0;
  } catch {
    return false;
  }
}

/** Like Go's exec.LookPath, so a bad command is refused before anything starts. */
function lookPath(cmd: string, pathVar: string, cwd: string): string {
  if (cmd.includes('/')) {
    const p = posix.resolve(cwd, cmd);
    if (!isExecutableFile(p)) throw new ConnectError(`exec: "${cmd}": no such executable file`, Code.InvalidArgument);
    return cmd;
  }
  for (const dir of pathVar.split(':')) {
    const p = posix.resolve(cwd, dir || '.', cmd);
    if (isExecutableFile(p)) return cmd;
  }
  throw new ConnectError(`exec: "${cmd}": executable file not found in $PATH`, Code.InvalidArgument);
}

export function buildEnv(state: EnvdState, user: UserInfo, envs: Record<string, string>): Record<string, string> {
  return {
    PATH: process.env.PATH || DEFAULT_PATH,
    HOME: user.home,
    USER: user.name,
    LOGNAME: user.name,
    ...state.envVars,
    ...envs,
  };
}

function attachQueue(proc: ManagedProcess): { queue: EventQueue<ProcOutput>; unsubscribe: () => void } {
  const queue = new EventQueue<ProcOutput>(() => proc.updateFlow());
  const sub: Subscriber = {
    push(ev) {
      queue.push(ev, ev.kind === 'data' ? ev.data.length : 0);
      if (ev.kind === 'end') queue.close();
    },
    congested: () => queue.congested,
  };
  const unsubscribe = proc.subscribe(sub);
  return { queue, unsubscribe };
}

async function* streamEvents(proc: ManagedProcess, queue: EventQueue<ProcOutput>, unsubscribe: () => void, ctx: HandlerContext): AsyncGenerator<EventInit> {
  try {
    yield { event: { event: { case: 'start', value: { pid: proc.pid } } } };
    for await (const ev of queue.iterate(ctx.signal, keepaliveMs(ctx.requestHeader))) {
      if (ev === null) {
        yield { event: { event: { case: 'keepalive', value: {} } } };
        continue;
      }
      yield toEvent(ev);
    }
  } finally {
    unsubscribe();
  }
}

export function processService(state: EnvdState, pm: ProcessManager): Partial<ServiceImpl<typeof Process>> {
  return {
    async *start(req, ctx) {
      const user = rpcUser(state, ctx.requestHeader);
      const cfg = req.process;
      if (!cfg || !cfg.cmd) throw new ConnectError('process.cmd is required', Code.InvalidArgument);
      let cwd: string;
      if (cfg.cwd !== undefined && cfg.cwd !== '') {
        cwd = resolvePath(cfg.cwd, user.home);
        if (!isDir(cwd)) throw new ConnectError(`invalid cwd '${cfg.cwd}': no such directory`, Code.InvalidArgument);
      } else {
        cwd = state.defaultWorkdir ? resolvePath(state.defaultWorkdir, user.home) : user.home;
        if (!isDir(cwd)) cwd = '/';
      }
      const env = buildEnv(state, user, cfg.envs);
      lookPath(cfg.cmd, env.PATH ?? DEFAULT_PATH, cwd);
      let pty: { cols: number; rows: number } | undefined;
      if (req.pty) pty = { cols: req.pty.size?.cols || 80, rows: req.pty.size?.rows || 24 };
      // Connect-Timeout-Ms is also the process deadline (even if the stream goes away first).
      const remaining = ctx.timeoutMs();
      if (ctx.signal.aborted) throw ctx.signal.reason instanceof ConnectError ? ctx.signal.reason : new ConnectError('request aborted', Code.Canceled);
      let attached: { queue: EventQueue<ProcOutput>; unsubscribe: () => void } | undefined;
      const proc = await pm.start(
        {
          file: cfg.cmd,
          args: cfg.args,
          env,
          cwd,
          user,
          pty,
          stdin: pty ? true : (req.stdin ?? true),
          tag: req.tag,
          config: { cmd: cfg.cmd, args: [...cfg.args], envs: { ...cfg.envs }, ...(cfg.cwd !== undefined ? { cwd: cfg.cwd } : {}) },
          timeoutMs: remaining === undefined ? undefined : Math.max(1, remaining),
        },
        (p) => {
          attached = attachQueue(p);
        },
      );
      const a = attached ?? attachQueue(proc);
      yield* streamEvents(proc, a.queue, a.unsubscribe, ctx);
    },

    async *connect(req, ctx) {
      const proc = pm.find(selector(req.process));
      const { queue, unsubscribe } = attachQueue(proc);
      yield* streamEvents(proc, queue, unsubscribe, ctx);
    },

    list() {
      return {
        processes: pm.list().map((p) => ({
          pid: p.pid,
          tag: p.tag,
          config: p.spec.config,
        })),
      };
    },

    async sendInput(req) {
      const proc = pm.find(selector(req.process));
      const input = req.input?.input;
      if (!input || input.case === undefined) return {};
      await proc.writeInput(input.value);
      return {};
    },

    async streamInput(reqs) {
      let proc: ManagedProcess | undefined;
      for await (const r of reqs) {
        const ev = r.event;
        if (ev.case === 'start') proc = pm.find(selector(ev.value.process));
        else if (ev.case === 'data') {
          if (!proc) throw new ConnectError('the first message must select a process', Code.FailedPrecondition);
          const input = ev.value.input?.input;
          if (input && input.case !== undefined) await proc.writeInput(input.value);
        }
      }
      return {};
    },

    async sendSignal(req) {
      const proc = pm.find(selector(req.process));
      if (req.signal === Signal.SIGKILL) {
        proc.kill('SIGKILL');
        // E2B's callers expect the process gone when kill returns (`kill -0 <pid>` fails):
        // answer once it exited and was reaped (bounded: a process stuck in the kernel may take longer)
        await proc.waitExited(KILL_WAIT_MS);
      } else if (req.signal === Signal.SIGTERM) proc.kill('SIGTERM');
      else throw new ConnectError('unsupported signal', Code.InvalidArgument);
      return {};
    },

    closeStdin(req) {
      pm.find(selector(req.process)).closeStdin();
      return {};
    },

    update(req) {
      const proc = pm.find(selector(req.process));
      if (req.pty?.size) proc.resize(req.pty.size.cols, req.pty.size.rows);
      return {};
    },
  };
}
