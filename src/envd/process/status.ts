// Exit status as E2B's envd reports it, killing a process's whole session, and why a spawn
// failed as a Connect error.
import { readdirSync, readFileSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { Code, ConnectError } from '@connectrpc/connect';
import type { EndInfo } from './types.js';

// Go's names of the signals (ProcessState.String() of E2B's envd).
const SIGNAL_TEXT: Record<number, string> = {
  1: 'hangup',
  2: 'interrupt',
  3: 'quit',
  4: 'illegal instruction',
  5: 'trace/breakpoint trap',
  6: 'aborted',
  7: 'bus error',
  8: 'floating point exception',
  9: 'killed',
  10: 'user defined signal 1',
  11: 'segmentation fault',
  12: 'user defined signal 2',
  13: 'broken pipe',
  14: 'alarm clock',
  15: 'terminated',
  16: 'stack fault',
  17: 'child exited',
  18: 'continued',
  19: 'stopped (signal)',
  20: 'stopped',
  21: 'stopped (tty input)',
  22: 'stopped (tty output)',
  23: 'urgent I/O condition',
  24: 'CPU time limit exceeded',
  25: 'file size limit exceeded',
  26: 'virtual timer expired',
  27: 'profiling timer expired',
  28: 'window changed',
  29: 'I/O possible',
  30: 'power failure',
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

export function signalNumber(sig: NodeJS.Signals | null): number | null {
  if (!sig) return null;
  return (osConstants.signals as Record<string, number>)[sig] ?? null;
}

/**
 * Kill a process group and, for SIGKILL, the command's whole tree: every process group of the
 * session the leader created (job-control shells put jobs in groups of their own), swept again
 * until none is left, so that a fork storm cannot outrun one pass. A session id cannot be reused
 * while any process still has it, and a group never spans sessions, so only descendants that
 * stayed in the session are hit (one that called setsid() left it on purpose, like a daemon).
 */
export function killSession(sid: number, sig: NodeJS.Signals): void {
  if (!(sid > 1)) return;
  try {
    process.kill(-sid, sig);
  } catch {
    /* group gone */
  }
  if (sig === 'SIGKILL') killSessionTree(sid);
}

/** How many more sweeps a session's tree gets (10 ms apart) while processes of it remain. */
const TREE_SWEEPS = 200;

/**
 * SIGKILLs each process group of session sid found in /proc; sweeps again (without blocking
 * envd) while any remain. Each group is signalled as a whole, which the kernel makes atomic
 * against forks in that group; the groups are read from processes that hold them right now.
 */
export function killSessionTree(sid: number, sweeps = TREE_SWEEPS): void {
  if (!(sid > 1)) return;
  const groups = sessionGroups(sid);
  if (groups.size === 0) return;
  for (const g of groups) {
    try {
      process.kill(-g, 'SIGKILL');
    } catch {
      /* gone meanwhile */
    }
  }
  if (sweeps > 0) setTimeout(() => killSessionTree(sid, sweeps - 1), 10).unref();
}

/** Process groups of the live (not yet zombie) processes of session sid. */
function sessionGroups(sid: number): Set<number> {
  const groups = new Set<number>();
  let names: string[] = [];
  try {
    names = readdirSync('/proc');
  } catch {
    return groups;
  }
  for (const n of names) {
    const c = n.charCodeAt(0);
    if (c < 48 || c > 57) continue;
    try {
      const stat = readFileSync(`/proc/${n}/stat`, 'latin1');
      // after the command name: state, ppid, pgrp, session
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[3]) !== sid || fields[0] === 'Z' || fields[0] === 'X') continue;
      const pgrp = Number(fields[2]);
      if (pgrp > 1) groups.add(pgrp);
    } catch {
      /* exited meanwhile */
    }
  }
  return groups;
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
