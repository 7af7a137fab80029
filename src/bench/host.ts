// Host-side readings the benches take: process memory, the kernel's available memory, and the
// local spawn that is the baseline of a command run in a sandbox.
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { now } from './report.js';

/** A field of a process's smaps_rollup in KiB; 0 when the process is gone. */
function smapsKiB(pid: number, field: string): number {
  try {
    const m = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8').match(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

/** PSS in KiB of a process; 0 when it is gone. */
export const pssKiB = (pid: number): number => smapsKiB(pid, 'Pss');

/**
 * The anonymous part of a process's PSS in KiB (heap, stacks: what it alone adds; its binary's
 * pages are shared by every process that maps the same file), 0 when it is gone.
 */
export const anonPssKiB = (pid: number): number => smapsKiB(pid, 'Pss_Anon');

/** The kernel's MemAvailable in KiB. */
export function memAvailableKiB(): number {
  const m = readFileSync('/proc/meminfo', 'utf8').match(/^MemAvailable:\s+(\d+) kB/m);
  return m ? Number(m[1]) : 0;
}

/** Whether a process is envd (the node running envd.mjs, directly or through the support tree's ld.so). */
export function isEnvd(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8')
      .split('\0')
      .some((a) => /\benvd\.(mjs|cjs)$/.test(a));
  } catch {
    return false;
  }
}

/** One local spawn of /bin/bash with args (and env: the whole environment), waited for; its time in ms. */
export function spawnBash(args: string[], env?: NodeJS.ProcessEnv): Promise<number> {
  const t = now();
  return new Promise<number>((resolve, reject) => {
    const c = spawn('/bin/bash', args, { stdio: 'ignore', env });
    c.on('error', reject);
    c.on('close', (code) => (code === 0 ? resolve(now() - t) : reject(new Error(`bash ${args.join(' ')} exited ${code}`))));
  });
}

/**
 * A login shell on the host with the sandbox user's own dotfiles: a temporary HOME holding
 * the template's ~/.profile, ~/.bashrc and ~/.bash_logout (from its topmost layer that has each)
 * and a clean environment, so a local `bash -l -c` reads what the sandbox's reads and not the
 * host user's own profile (which may load far more: version managers and the like).
 */
export class LocalLogin {
  readonly home: string;
  readonly env: NodeJS.ProcessEnv;

  constructor(layers: string[], user = 'user') {
    this.home = mkdtempSync('/var/tmp/cubebox-bench-home-');
    for (const f of ['.profile', '.bashrc', '.bash_logout']) {
      const from = layers.map((l) => join(l, 'home', user, f)).find((p) => existsSync(p));
      if (from) copyFileSync(from, join(this.home, f));
    }
    this.env = { HOME: this.home, USER: user, PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C.UTF-8' };
  }

  /** `bash <flags> true` in that environment; its time in ms. */
  run(flags: string[]): Promise<number> {
    return spawnBash([...flags, 'true'], this.env);
  }

  close(): void {
    rmSync(this.home, { recursive: true, force: true });
  }
}
