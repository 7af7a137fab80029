import { spawn, type SpawnOptions } from 'node:child_process';

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
export function run(
  file: string,
  args: readonly string[],
  opts: { env?: NodeJS.ProcessEnv; cwd?: string; timeoutMs?: number } = {},
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const options: SpawnOptions = { stdio: ['ignore', 'pipe', 'pipe'], env: opts.env, cwd: opts.cwd };
    const child = spawn(file, args, options);
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
