// Host-side readings the benches take: process memory, the kernel's available memory, and the
// local spawn that is the baseline of a command run in a sandbox.
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { now } from './report.js';

/** PSS in KiB of a process, from smaps_rollup; 0 when it is gone. */
export function pssKiB(pid: number): number {
  try {
    const m = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8').match(/^Pss:\s+(\d+) kB/m);
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

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

/** One local spawn of /bin/bash with args, waited for; its time in ms. */
export function spawnBash(args: string[]): Promise<number> {
  const t = now();
  return new Promise<number>((resolve, reject) => {
    const c = spawn('/bin/bash', args, { stdio: 'ignore' });
    c.on('error', reject);
    c.on('close', (code) => (code === 0 ? resolve(now() - t) : reject(new Error(`bash ${args.join(' ')} exited ${code}`))));
  });
}
