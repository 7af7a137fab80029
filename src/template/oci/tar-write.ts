// Writing tar: header blocks (PAX, then ustar) for the members the importer rewrites.
import { BLOCK, padLen, paxRecord, TYPE_FLAGS, type EntryType } from './tar-format.js';

export interface NewEntry {
  name: string;
  linkname?: string;
  type: EntryType;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: number;
  uname?: string;
  gname?: string;
  devmajor?: number;
  devminor?: number;
  pax?: Map<string, Buffer>; // records carried over (path, linkpath and size are set here)
}

function octal(b: Buffer, start: number, len: number, v: number): boolean {
  const s = v.toString(8);
  if (v < 0 || s.length > len - 1) return false;
  b.write(s.padStart(len - 1, '0') + '\0', start, len, 'latin1');
  return true;
}

function header(
  name: string,
  flag: string,
  f: {
    mode: number;
    uid: number;
    gid: number;
    size: number;
    mtime: number;
    linkname?: string;
    uname?: string;
    gname?: string;
    devmajor?: number;
    devminor?: number;
  },
  over: Map<string, Buffer>,
): Buffer {
  const h = Buffer.alloc(BLOCK);
  h.write(name.slice(0, 99), 0, 100, 'latin1');
  octal(h, 100, 8, f.mode & 0o7777777);
  if (!octal(h, 108, 8, f.uid)) over.set('uid', Buffer.from(String(f.uid)));
  if (!octal(h, 116, 8, f.gid)) over.set('gid', Buffer.from(String(f.gid)));
  if (!octal(h, 124, 12, f.size)) over.set('size', Buffer.from(String(f.size)));
  if (!octal(h, 136, 12, f.mtime)) {
    octal(h, 136, 12, f.mtime < 0 ? 0 : 0o77777777777);
    if (!over.has('mtime')) over.set('mtime', Buffer.from(String(f.mtime)));
  }
  h.write(flag, 156, 1, 'latin1');
  if (f.linkname) h.write(f.linkname.slice(0, 99), 157, 100, 'latin1');
  h.write('ustar\x0000', 257, 8, 'latin1');
  if (f.uname) h.write(f.uname.slice(0, 31), 265, 32, 'latin1');
  if (f.gname) h.write(f.gname.slice(0, 31), 297, 32, 'latin1');
  octal(h, 329, 8, f.devmajor ?? 0);
  octal(h, 337, 8, f.devminor ?? 0);
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += h[i]!;
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8, 'latin1');
  return h;
}

/** Header blocks (a PAX header, then the ustar header) for one member; data is not included. */
export function encodeEntry(e: NewEntry): Buffer {
  const records = new Map<string, Buffer>();
  for (const [k, v] of e.pax ?? []) if (k !== 'path' && k !== 'linkpath' && k !== 'size') records.set(k, v);
  records.set('path', Buffer.from(e.name, 'latin1'));
  if (e.linkname) records.set('linkpath', Buffer.from(e.linkname, 'latin1'));
  const main = header(e.name, TYPE_FLAGS[e.type], e, records);
  const paxData = Buffer.concat([...records].map(([k, v]) => paxRecord(k, v)));
  const paxHeader = header('././@PaxHeader', 'x', { mode: 0o644, uid: 0, gid: 0, size: paxData.length, mtime: Math.max(0, e.mtime) }, new Map());
  return Buffer.concat([paxHeader, paxData, Buffer.alloc(padLen(paxData.length)), main]);
}

export const END_OF_ARCHIVE = Buffer.alloc(2 * BLOCK);

export function padding(size: number): Buffer {
  return Buffer.alloc(padLen(size));
}
