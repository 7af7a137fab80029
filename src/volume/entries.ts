// What the volume content API speaks: E2B's entry stat, owner and mode, paths as the SDK
// sends them (checked and split, never resolved against the disk: volume/content.ts walks
// them), and the refusals with their HTTP status.
import { opendirSync, type Stats } from 'node:fs';
import { CubeboxError } from '../util/errors.js';

const MAX_PATH = 4096;
export const MAX_LIST = 10_000;
export const MAX_DEPTH = 64;
const MAX_ID = 65535; // canonical ids: one sandbox id block

/** A refusal with the HTTP status the content API answers it with. */
export class ContentError extends CubeboxError {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(status === 404 ? 'not_found' : status === 409 ? 'conflict' : status >= 500 ? 'internal' : 'invalid_argument', message);
  }
}

/** E2B's VolumeEntryStat. */
export interface EntryStat {
  name: string;
  path: string;
  type: 'file' | 'directory' | 'symlink' | 'unknown';
  size: number;
  mode: number;
  uid: number;
  gid: number;
  atime: string;
  mtime: string;
  ctime: string;
  target?: string;
}

/** Owner and permissions given with a request (each optional). */
export interface Attrs {
  uid?: number;
  gid?: number;
  mode?: number;
}

/** A path as the SDK sends it, to its components inside the volume ('' and '.' dropped, '..' resolved lexically). */
export function pathParts(raw: string | undefined): string[] {
  if (raw === undefined || raw === '') throw new ContentError(400, 'path is required');
  if (raw.length > MAX_PATH || raw.includes('\0')) throw new ContentError(400, 'path is too long or contains a NUL byte');
  const out: string[] = [];
  for (const c of raw.split('/')) {
    if (c === '' || c === '.') continue;
    if (c === '..') {
      if (!out.length) throw new ContentError(400, `path '${raw}' escapes the volume: refused`);
      out.pop();
    } else if (Buffer.byteLength(c) > 255) throw new ContentError(400, 'a path component is longer than 255 bytes');
    else out.push(c);
  }
  return out;
}

export function checkAttrs(a: Attrs): Attrs {
  for (const k of ['uid', 'gid'] as const) {
    const v = a[k];
    if (v !== undefined && !(Number.isInteger(v) && v >= 0 && v <= MAX_ID)) throw new ContentError(400, `${k} must be an integer from 0 to ${MAX_ID}`);
  }
  if (a.mode !== undefined && !(Number.isInteger(a.mode) && a.mode >= 0 && a.mode <= 0o7777))
    throw new ContentError(400, 'mode must be an integer from 0 to 0o7777');
  return a;
}

/** A name inside the directory an fd holds, resolved by the kernel from that fd (never by path again). */
export const at = (fd: number, name?: string) => (name === undefined ? `/proc/self/fd/${fd}` : `/proc/self/fd/${fd}/${name}`);
export const show = (parts: string[]) => '/' + parts.join('/');

function typeOf(st: Stats): EntryStat['type'] {
  return st.isFile() ? 'file' : st.isDirectory() ? 'directory' : st.isSymbolicLink() ? 'symlink' : 'unknown';
}

/** The names in a directory (of an fd), sorted; refused past `room` of them, read no further than that. */
export function namesIn(dirFd: number, room: number): string[] {
  const dir = opendirSync(at(dirFd));
  const names: string[] = [];
  try {
    for (let e = dir.readSync(); e; e = dir.readSync()) {
      if (names.length >= room) throw new ContentError(400, `more than ${MAX_LIST} entries: list a smaller depth or a deeper directory`);
      names.push(e.name);
    }
  } finally {
    dir.closeSync();
  }
  return names.sort();
}

export function toEntry(st: Stats, name: string, parts: string[], target?: string): EntryStat {
  return {
    name,
    path: show(parts),
    type: typeOf(st),
    size: st.size,
    mode: st.mode & 0o7777,
    uid: st.uid,
    gid: st.gid,
    atime: st.atime.toISOString(),
    mtime: st.mtime.toISOString(),
    ctime: st.ctime.toISOString(),
    ...(target !== undefined ? { target } : {}),
  };
}
