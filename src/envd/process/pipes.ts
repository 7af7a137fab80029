// A piped process's output and end. Subtle: a process's exit can be seen before its last
// output, and a background child can hold the pipes open after it; see wirePipes.
import type { ChildProcess } from 'node:child_process';
import type { ManagedProcess } from './managed-process.js';
import { endInfo, signalNumber } from './status.js';
import type { EndInfo } from './types.js';

/** How long the output pipes may stay quiet and open after the process exited (background children). */
const PIPE_GRACE_MS = 100;
/** How long a background child may keep the pipes open and busy after the process exited. */
const PIPE_BUSY_CAP_MS = 1000;

/**
 * Run `f` after the event loop has polled for I/O at least once more. A process's exit can be
 * seen before its last output is: libuv reaps every exited child when it handles one SIGCHLD, so
 * a child that wrote and exited while envd was busy has its exit reported while its pipe's
 * readiness waits for the next poll. (Two check phases: the first is the current iteration's.)
 */
function afterIoRound(f: () => void): void {
  setImmediate(() => setImmediate(f));
}

/**
 * Feeds the child's stdout and stderr to proc and finishes proc once every byte the process
 * wrote was read (or the pipes were cut, below). Called right after the spawn, before any
 * output can be read.
 */
export function wirePipes(child: ChildProcess, proc: ManagedProcess): void {
  child.stdin?.on('error', () => {});
  child.stdout?.on('data', (d: Buffer) => proc.emitData('stdout', d));
  child.stderr?.on('data', (d: Buffer) => proc.emitData('stderr', d));
  let exit: EndInfo | undefined;
  let exitSeenAt = 0;
  let grace: NodeJS.Timeout | undefined;
  let closed = false;
  let dataSeq = 0;
  child.stdout?.on('data', () => dataSeq++);
  child.stderr?.on('data', () => dataSeq++);
  const done = () => {
    closed = true;
    if (grace) clearTimeout(grace);
    if (exit) proc.finish(exit);
  };
  child.on('error', () => {});
  // The end is sent once both pipes reached EOF ('close'), so every byte the process wrote is
  // read first. A background child may hold the pipes open: then the pipes are cut once they
  // stayed quiet over a grace period and a full I/O poll (never on a timer alone: under load
  // the loop's clock is stale and a timer can fire before pending output is read), or once the
  // process has been gone for PIPE_BUSY_CAP_MS; never while a slow stream holds the output back.
  const cut = () => {
    if (closed) return;
    child.stdout?.destroy();
    child.stderr?.destroy();
    done();
  };
  const armGrace = () => {
    if (closed) return;
    const seq = dataSeq;
    grace = setTimeout(() => {
      grace = undefined;
      if (closed) return;
      if (proc.isPaused) return armGrace();
      afterIoRound(() => {
        if (closed) return;
        if (proc.isPaused) return armGrace();
        if (dataSeq === seq || performance.now() - exitSeenAt > PIPE_BUSY_CAP_MS) cut();
        else armGrace();
      });
    }, PIPE_GRACE_MS);
  };
  child.on('exit', (code, signal) => {
    exit = endInfo(code, signalNumber(signal));
    exitSeenAt = performance.now();
    afterIoRound(armGrace);
  });
  child.on('close', done);
}
