// The sandbox's console log (tini's and envd's stdout and stderr, and the template's start
// command): a file on the sandbox's own disk that the sandbox writes without limit. The
// host keeps it capped by rotating it, and never reads it whole.
import { closeSync, fstatSync, openSync, readSync, renameSync, truncateSync, writeFileSync, constants } from 'node:fs';

/** Past this size the log is rotated: its newest half moves to `<file>.1`, the file restarts empty. */
export const CONSOLE_LOG_MAX = 8 * 1024 * 1024;

/** Opens a log the sandbox controls: never through a symlink. */
function openLog(file: string): number {
  return openSync(file, constants.O_RDONLY | constants.O_NOFOLLOW);
}

export { readLogTail } from '../util/log-tail.js';

/**
 * Rotates the log when it is past `max` bytes. The runtime opened it O_APPEND, so the
 * sandbox's next write lands at the start of the emptied file. Returns whether it rotated.
 */
export function rotateConsoleLog(file: string, max = CONSOLE_LOG_MAX): boolean {
  let fd: number;
  try {
    fd = openLog(file);
  } catch {
    return false;
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile() || st.size <= max) return false;
    const keep = Buffer.alloc(Math.floor(max / 2));
    const n = readSync(fd, keep, 0, keep.length, st.size - keep.length);
    writeFileSync(`${file}.1.tmp`, keep.subarray(0, n), { mode: 0o600 });
    renameSync(`${file}.1.tmp`, `${file}.1`);
    truncateSync(file, 0);
    return true;
  } finally {
    closeSync(fd);
  }
}
