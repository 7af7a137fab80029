// A sandbox's console log read by range: asynchronously, in chunks, and never more than a hard
// byte bound, whatever the log's size. The sandbox writes this file, so it is opened without
// following links and read only when it is a regular file.
import { constants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';

/** Lines returned when the caller names no limit, and the most it may ask for. */
export const DEFAULT_LOG_LINES = 1000;
export const MAX_LOG_LINES = 10_000;
/** The most bytes of the log one request reads (and so, about, returns). */
export const MAX_LOG_BYTES = 2 * 1024 * 1024;
const CHUNK = 64 * 1024;

export interface LogRange {
  /** 'head': the first lines (forward from the start); 'tail': the last lines. */
  from: 'head' | 'tail';
  limit: number;
  maxBytes?: number;
}

export interface LogRead {
  lines: string[];
  /** The log's last write: the timestamp each line is reported with. */
  mtime: Date;
  /** Whether there is more in the direction read (the limit or the byte bound stopped it). */
  more: boolean;
}

const NONE = (): LogRead => ({ lines: [], mtime: new Date(), more: false });

/**
 * The console log with its rotated predecessor (`<file>.1`, older lines) read as one: the
 * tail continues into the older file when the current one has too few lines, the head starts
 * in it. One byte budget covers both.
 */
export async function readConsoleLog(path: string, range: LogRange): Promise<LogRead> {
  const budget = Math.max(1, Math.min(range.maxBytes ?? MAX_LOG_BYTES, MAX_LOG_BYTES));
  const [first, second] = range.from === 'tail' ? [path, `${path}.1`] : [`${path}.1`, path];
  const a = await readLogRange(first, { ...range, maxBytes: budget });
  const used = a.lines.reduce((n, l) => n + Buffer.byteLength(l) + 1, 0);
  const room = range.limit - a.lines.length;
  if (room <= 0 || budget - used <= 0) return a;
  const b = await readLogRange(second, { from: range.from, limit: room, maxBytes: budget - used });
  const lines = range.from === 'tail' ? [...b.lines, ...a.lines] : [...a.lines, ...b.lines];
  const mtime = a.mtime > b.mtime ? a.mtime : b.mtime;
  return { lines, mtime, more: b.more || (range.from === 'tail' ? false : a.more) };
}

export async function readLogRange(path: string, range: LogRange): Promise<LogRead> {
  let fh: FileHandle;
  try {
    fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK | constants.O_NOCTTY);
  } catch {
    return NONE(); // no output yet, or not a file we read (a link)
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) return NONE();
    const maxBytes = Math.max(1, Math.min(range.maxBytes ?? MAX_LOG_BYTES, MAX_LOG_BYTES));
    const limit = Math.max(0, range.limit);
    const size = st.size;
    if (limit === 0 || size === 0) return { lines: [], mtime: st.mtime, more: size > 0 };
    return range.from === 'tail' ? await tail(fh, size, limit, maxBytes, st.mtime) : await head(fh, size, limit, maxBytes, st.mtime);
  } finally {
    await fh.close().catch(() => undefined);
  }
}

function countNewlines(b: Buffer): number {
  let n = 0;
  for (let i = b.indexOf(10); i >= 0; i = b.indexOf(10, i + 1)) n++;
  return n;
}

/**
 * The text of what was read, without NUL bytes: a writer that reopened the console without
 * O_APPEND (`> /proc/1/fd/1` in the sandbox) keeps its offset after a rotation and leaves a
 * hole that reads as zeros. They are never text, and JSON would send each as six bytes.
 */
function textOf(chunks: Buffer[]): string {
  return Buffer.concat(chunks).toString('utf8').replaceAll('\0', '');
}

async function tail(fh: FileHandle, size: number, limit: number, maxBytes: number, mtime: Date): Promise<LogRead> {
  const chunks: Buffer[] = [];
  let pos = size;
  let read = 0;
  let newlines = 0;
  // one newline more than lines wanted: the line before the first one returned is then complete
  while (pos > 0 && read < maxBytes && newlines <= limit) {
    const len = Math.min(CHUNK, pos, maxBytes - read);
    const buf = Buffer.allocUnsafe(len);
    const { bytesRead } = await fh.read(buf, 0, len, pos - len);
    if (bytesRead <= 0) break;
    const got = buf.subarray(0, bytesRead);
    chunks.unshift(got);
    pos -= bytesRead;
    read += bytesRead;
    newlines += countNewlines(got);
  }
  let lines = textOf(chunks).split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  // the first line is cut when the read did not reach the start of the file
  if (pos > 0 && lines.length > 1) lines.shift();
  lines = lines.filter((l) => l !== '');
  const more = pos > 0 || lines.length > limit;
  return { lines: lines.slice(-limit), mtime, more };
}

async function head(fh: FileHandle, size: number, limit: number, maxBytes: number, mtime: Date): Promise<LogRead> {
  const chunks: Buffer[] = [];
  let pos = 0;
  let newlines = 0;
  while (pos < size && pos < maxBytes && newlines < limit) {
    const len = Math.min(CHUNK, size - pos, maxBytes - pos);
    const buf = Buffer.allocUnsafe(len);
    const { bytesRead } = await fh.read(buf, 0, len, pos);
    if (bytesRead <= 0) break;
    const got = buf.subarray(0, bytesRead);
    chunks.push(got);
    pos += bytesRead;
    newlines += countNewlines(got);
  }
  let lines = textOf(chunks).split('\n');
  const complete = lines[lines.length - 1] === '';
  if (complete) lines.pop();
  // the last line is cut when the read stopped before the end of the file
  else if (pos < size && lines.length > 1) lines.pop();
  lines = lines.filter((l) => l !== '');
  const more = pos < size || lines.length > limit;
  return { lines: lines.slice(0, limit), mtime, more };
}
