// The service's open-file limit (RLIMIT_NOFILE): raised at start with util-linux `prlimit`
// (Node has no setrlimit), so that connection caps, not the kernel's default, bound its clients.
import { readFileSync } from 'node:fs';
import { runOk } from './exec.js';

export interface FdLimit {
  soft: number;
  hard: number;
}

/** What the service asks for when it may raise the hard limit too (root). */
export const WANTED_FDS = 1 << 20;

/** This process's limit, from /proc/self/limits ("unlimited" as the largest number). */
export function fdLimit(): FdLimit {
  const line = /^Max open files\s+(\S+)\s+(\S+)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
  const num = (t: string | undefined) => (t === undefined ? 1024 : t === 'unlimited' ? Number.MAX_SAFE_INTEGER : Number(t));
  return { soft: num(line?.[1]), hard: num(line?.[2]) };
}

/**
 * Raises the soft limit to the hard one, and as root both up to WANTED_FDS (within the kernel's
 * fs.nr_open). Returns the limit in force afterwards, and why it could not be raised if it could not.
 */
export async function raiseFdLimit(): Promise<FdLimit & { error?: string }> {
  const now = fdLimit();
  // as root, both limits up (needs CAP_SYS_RESOURCE, which a container may lack); else the soft one to the hard one
  const targets = process.getuid?.() === 0 ? [Math.max(now.hard, Math.min(WANTED_FDS, nrOpen())), now.hard] : [now.hard];
  let error: string | undefined;
  for (const target of targets) {
    if (fdLimit().soft >= target) break;
    try {
      await runOk('prlimit', ['--pid', String(process.pid), `--nofile=${target}:${target}`], { timeoutMs: 10_000 });
      error = undefined;
      break;
    } catch (err) {
      error = (err as Error).message;
    }
  }
  return { ...fdLimit(), error };
}

function nrOpen(): number {
  try {
    return Number(readFileSync('/proc/sys/fs/nr_open', 'utf8').trim()) || WANTED_FDS;
  } catch {
    return WANTED_FDS;
  }
}
