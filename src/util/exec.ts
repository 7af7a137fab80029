import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { Readable, Writable } from 'node:stream';

/**
 * spawn(), but a program that cannot be started is an ordinary failure of this one call, never
 * a crash: Node reports it (ENOENT, EMFILE, EAGAIN) as an 'error' event on the next tick, which
 * ends the process when nobody listens, and at EMFILE it leaves the pipes unset, so a caller that
 * reads them before listening throws first. Here a failed child gets empty pipes (read: end at
 * once; written: discarded) and an 'error' listener of its own; 'close' follows with the negated
 * errno as its code, and the caller's own 'error' listeners see the error as before.
 */
export const spawnChild = ((file: string, args?: readonly string[] | SpawnOptions, options?: SpawnOptions): ChildProcess => {
  const argv = Array.isArray(args) ? (args as readonly string[]) : [];
  const opts = (Array.isArray(args) ? options : (args as SpawnOptions | undefined)) ?? {};
  const spawned = spawnObserver?.(file, argv);
  const child = spawn(file, argv, opts);
  child.on('error', () => undefined);
  spawned?.(child);
  if (child.pid === undefined) {
    const { stdio } = opts;
    const piped = (i: number) => stdio === undefined || stdio === 'pipe' || (Array.isArray(stdio) && stdio[i] === 'pipe');
    if (!child.stdin && piped(0)) child.stdin = new Writable({ write: (_c, _e, cb) => cb() });
    if (!child.stdout && piped(1)) child.stdout = Readable.from([]);
    if (!child.stderr && piped(2)) child.stderr = Readable.from([]);
  }
  return child;
}) as typeof spawn;

/** Told of a spawn before it starts; what it returns is told of the child right after. */
export type SpawnObserver = (file: string, args: readonly string[]) => ((child: ChildProcess) => void) | undefined;
let spawnObserver: SpawnObserver | undefined;

/**
 * Sees every child spawnChild starts, before and after the spawn (undefined: none, the default).
 * For measurements only (`cubebox bench --profile` counts and times the host's processes);
 * an observer must not change what the child does.
 */
export function observeSpawns(fn: SpawnObserver | undefined): void {
  spawnObserver = fn;
}

export interface RunResult {
  code: number;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs a program to completion and captures its output. Never goes through a shell.
 * stdin is /dev/null so that a detaching runtime cannot hold a pipe of ours open.
 */
export function run(file: string, args: readonly string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string; timeoutMs?: number } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const options: SpawnOptions = { stdio: ['ignore', 'pipe', 'pipe'], env: opts.env, cwd: opts.cwd };
    const child = spawnChild(file, args, options);
    let stdout = '';
    let stderr = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    let timer: NodeJS.Timeout | undefined;
    if (opts.timeoutMs) timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs);
    child.on('error', (e) => {
      if (timer) clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      if (timer) clearTimeout(timer);
      resolve({ code: code ?? -1, signal, stdout, stderr });
    });
  });
}

/** Like run(), but a non-zero exit becomes an error carrying the program's stderr. */
export async function runOk(file: string, args: readonly string[], opts: Parameters<typeof run>[2] = {}): Promise<string> {
  const r = await run(file, args, opts);
  if (r.code !== 0) {
    const what = r.stderr.trim() || r.stdout.trim() || `exit ${r.code}${r.signal ? ` (${r.signal})` : ''}`;
    throw new Error(`${file.split('/').pop()} ${args[0] ?? ''}: ${what}`);
  }
  return r.stdout;
}

export interface LinesResult {
  code: number;
  signal: NodeJS.Signals | null;
  /** The last output lines (stdout and stderr interleaved), at most `keep` of them. */
  lines: string[];
  /** Set when the program could not be started; the result then has code -1. */
  error?: string;
}

/**
 * Runs a long program (a build step) in its own process group, passing each non-empty output
 * line of stdout and stderr to onLine and keeping the last ones. Never rejects: a program that
 * cannot start comes back with `error`. An abort, or this process exiting, kills the whole group.
 */
export function runLines(
  file: string,
  args: readonly string[],
  opts: { onLine?: (line: string) => void; signal?: AbortSignal; env?: NodeJS.ProcessEnv; keep?: number } = {},
): Promise<LinesResult> {
  const { onLine, signal, keep = 200 } = opts;
  return new Promise((resolve) => {
    const lines: string[] = [];
    const take = (l: string) => {
      lines.push(l);
      if (lines.length > keep) lines.shift();
      onLine?.(l);
    };
    const child = spawnChild(file, args, { stdio: ['ignore', 'pipe', 'pipe'], env: opts.env, detached: true });
    const kill = () => {
      if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) {
        try {
          process.kill(-child.pid, 'SIGKILL');
        } catch {
          /* already gone */
        }
      }
    };
    signal?.addEventListener('abort', kill, { once: true });
    process.once('exit', kill); // do not leave it running if this process exits
    for (const stream of [child.stdout!, child.stderr!]) {
      let buf = '';
      stream.setEncoding('utf8');
      stream.on('data', (d: string) => {
        buf += d;
        const parts = buf.split(/\r?\n|\r/);
        buf = parts.pop() ?? '';
        for (const p of parts) if (p.trim()) take(p);
      });
      stream.on('end', () => {
        if (buf.trim()) take(buf);
        buf = '';
      });
    }
    let error: string | undefined;
    child.on('error', (e) => (error = e.message));
    child.on('close', (code, sig) => {
      signal?.removeEventListener('abort', kill);
      process.removeListener('exit', kill);
      resolve({ code: code ?? -1, signal: sig, lines, error });
    });
    if (signal?.aborted) kill();
  });
}
