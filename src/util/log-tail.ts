// Reading the end of a log a sandbox writes: bounded, and never through a symlink.
import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs';

/** At most `maxBytes` from the end of the log, as text (a partial first line is dropped). */
export function readLogTail(file: string, maxBytes: number): string {
  let fd: number | undefined;
  try {
    fd = openSync(file, constants.O_RDONLY | constants.O_NOFOLLOW);
    const size = fstatSync(fd).size;
    const buf = Buffer.alloc(Math.min(size, maxBytes));
    const n = readSync(fd, buf, 0, buf.length, size - buf.length);
    const text = buf.subarray(0, n).toString('utf8');
    return buf.length < size ? text.slice(text.indexOf('\n') + 1) : text;
  } catch {
    return '';
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}
