// The tar format as image layers use it: ustar, GNU long names and PAX extended headers.
// Reading is streaming (layers can be large); writing covers only the entries the importer
// rewrites. Names are kept as byte strings (latin1) so that no name is ever re-encoded.
import { openSync, readSync, closeSync, fstatSync } from 'node:fs';
import { invalid } from '../util/errors.js';

export const BLOCK = 512;

export type EntryType = 'file' | 'hardlink' | 'symlink' | 'char' | 'block' | 'dir' | 'fifo';

const TYPES: Record<string, EntryType> = {
  '0': 'file',
  '\0': 'file',
  '7': 'file',
  '1': 'hardlink',
  '2': 'symlink',
  '3': 'char',
  '4': 'block',
  '5': 'dir',
  '6': 'fifo',
};

const TYPE_FLAGS: Record<EntryType, string> = { file: '0', hardlink: '1', symlink: '2', char: '3', block: '4', dir: '5', fifo: '6' };

/** One member of an archive, with every extension already applied. */
export interface TarEntry {
  name: string; // as stored (latin1 byte string), trailing slashes stripped
  linkname: string;
  type: EntryType;
  mode: number;
  uid: number;
  gid: number;
  size: number; // bytes of data that follow the headers
  mtime: number; // whole seconds from the header (PAX mtime, if any, is in pax)
  uname: string;
  gname: string;
  devmajor: number;
  devminor: number;
  pax: Map<string, Buffer>; // local PAX records (values are raw bytes)
  headerOffset: number; // offset of the first of those blocks in the stream
  dataOffset: number;
}

export class TarFormatError extends Error {}

function cstr(b: Buffer, start: number, len: number): string {
  const s = b.subarray(start, start + len);
  const nul = s.indexOf(0);
  return (nul < 0 ? s : s.subarray(0, nul)).toString('latin1');
}

function num(b: Buffer, start: number, len: number, what: string): number {
  const f = b.subarray(start, start + len);
  if (f[0]! & 0x80) {
    // GNU base-256: big-endian two's complement, the top bit of the first byte set.
    if (f[0] === 0xff) throw new TarFormatError(`negative ${what} in a tar header`);
    let v = f[0]! & 0x7f;
    for (let i = 1; i < f.length; i++) v = v * 256 + f[i]!;
    if (!Number.isSafeInteger(v)) throw new TarFormatError(`${what} too large in a tar header`);
    return v;
  }
  const s = f.toString('latin1').replace(/\0.*$/s, '').trim();
  if (s === '') return 0;
  if (!/^[0-7]+$/.test(s)) throw new TarFormatError(`bad ${what} field ${JSON.stringify(s)} in a tar header`);
  return parseInt(s, 8);
}

function isZeroBlock(b: Buffer): boolean {
  for (let i = 0; i < BLOCK; i++) if (b[i] !== 0) return false;
  return true;
}

function checksumOk(b: Buffer): boolean {
  const stored = num(b, 148, 8, 'checksum');
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const v = i >= 148 && i < 156 ? 32 : b[i]!;
    unsigned += v;
    signed += v > 127 ? v - 256 : v;
  }
  return stored === unsigned || stored === signed;
}

/** Parses PAX records: `<len> <key>=<value>\n`, len counting the whole record. */
export function parsePax(data: Buffer): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  let i = 0;
  while (i < data.length) {
    if (data[i] === 0) break; // padding
    const sp = data.indexOf(0x20, i);
    if (sp < 0) throw new TarFormatError('bad PAX record (no length)');
    const lenStr = data.subarray(i, sp).toString('latin1');
    if (!/^[0-9]+$/.test(lenStr)) throw new TarFormatError(`bad PAX record length ${JSON.stringify(lenStr)}`);
    const len = parseInt(lenStr, 10);
    const end = i + len;
    if (len <= sp - i + 1 || end > data.length || data[end - 1] !== 0x0a) throw new TarFormatError('bad PAX record');
    const rec = data.subarray(sp + 1, end - 1);
    const eq = rec.indexOf(0x3d);
    if (eq <= 0) throw new TarFormatError('bad PAX record (no key)');
    out.set(rec.subarray(0, eq).toString('latin1'), Buffer.from(rec.subarray(eq + 1)));
    i = end;
  }
  return out;
}

export function paxRecord(key: string, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`, 'latin1'), value, Buffer.from('\n')]);
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len = String(len).length + body.length;
  return Buffer.concat([Buffer.from(String(len), 'latin1'), body]);
}

const linkNul = (pax: Map<string, Buffer>) => (pax.get('linkpath')?.indexOf(0) ?? -1) >= 0;

const padLen = (n: number) => (BLOCK - (n % BLOCK)) % BLOCK;

/**
 * Accumulates the header blocks of one member (extensions first) and produces the entry
 * once its main header arrives. Shared by the stream parser and the archive indexer.
 */
class HeaderState {
  private longName?: string;
  private longLink?: string;
  private pax?: Map<string, Buffer>;
  pending = false; // extension headers read, main header not yet
  start = -1;

  reset(): void {
    this.longName = this.longLink = this.pax = undefined;
    this.pending = false;
    this.start = -1;
  }

  /** What the data following this header is: an extension to read, or the member itself. */
  static kind(h: Buffer): 'pax' | 'global' | 'longname' | 'longlink' | 'entry' {
    const t = String.fromCharCode(h[156]!);
    if (t === 'x') return 'pax';
    if (t === 'g') return 'global';
    if (t === 'L') return 'longname';
    if (t === 'K') return 'longlink';
    return 'entry';
  }

  extension(kind: 'pax' | 'global' | 'longname' | 'longlink', data: Buffer): void {
    if (kind === 'pax') {
      this.pax = parsePax(data);
    } else if (kind === 'global') {
      // Global records would apply to every later member; those that change extraction
      // are refused rather than half-honoured (no image tool writes them).
      for (const key of parsePax(data).keys()) {
        if (key !== 'comment') throw new TarFormatError(`global PAX header record '${key}' is not supported`);
      }
    } else {
      const s = cstr(data, 0, data.length);
      if (kind === 'longname') this.longName = s;
      else this.longLink = s;
    }
  }

  entry(h: Buffer, dataOffset: number): TarEntry {
    const flag = String.fromCharCode(h[156]!);
    let type = TYPES[flag];
    if (!type) {
      if (flag === 'S') throw new TarFormatError('sparse files are not supported');
      throw new TarFormatError(`unsupported tar member type '${flag.replace(/[^\x20-\x7e]/g, '?')}'`);
    }
    const pax = this.pax ?? new Map<string, Buffer>();
    for (const k of pax.keys()) if (k.startsWith('GNU.sparse.')) throw new TarFormatError('sparse files are not supported');
    const ustar = h.subarray(257, 263).toString('latin1') === 'ustar\0';
    let name = cstr(h, 0, 100);
    if (ustar) {
      const prefix = cstr(h, 345, 155);
      if (prefix) name = `${prefix}/${name}`;
    }
    if (this.longName !== undefined) name = this.longName;
    const paxPath = pax.get('path');
    if (paxPath) name = paxPath.toString('latin1');
    if (name.includes('\0') || linkNul(pax)) throw new TarFormatError('NUL byte in a member name');
    let linkname = this.longLink ?? cstr(h, 157, 100);
    const paxLink = pax.get('linkpath');
    if (paxLink) linkname = paxLink.toString('latin1');
    // A regular-file member whose name ends with '/' is a directory (as GNU tar reads it).
    const trailing = /\/+$/.test(name) && name.replace(/\/+$/, '') !== '';
    if (trailing) name = name.replace(/\/+$/, '');
    if (trailing && type === 'file' && flag !== '7') type = 'dir';
    const paxNum = (key: string, fallback: number): number => {
      const v = pax.get(key);
      if (!v) return fallback;
      const s = v.toString('latin1');
      if (!/^[0-9]+$/.test(s)) throw new TarFormatError(`bad PAX ${key} ${JSON.stringify(s)}`);
      const n = Number(s);
      if (!Number.isSafeInteger(n)) throw new TarFormatError(`PAX ${key} too large`);
      return n;
    };
    const size = paxNum('size', num(h, 124, 12, 'size'));
    const entry: TarEntry = {
      name,
      linkname,
      type,
      mode: num(h, 100, 8, 'mode'),
      uid: paxNum('uid', num(h, 108, 8, 'uid')),
      gid: paxNum('gid', num(h, 116, 8, 'gid')),
      size,
      mtime: num(h, 136, 12, 'mtime'),
      uname: pax.get('uname')?.toString('latin1') ?? cstr(h, 265, 32),
      gname: pax.get('gname')?.toString('latin1') ?? cstr(h, 297, 32),
      devmajor: type === 'char' || type === 'block' ? num(h, 329, 8, 'devmajor') : 0,
      devminor: type === 'char' || type === 'block' ? num(h, 337, 8, 'devminor') : 0,
      pax,
      headerOffset: this.start,
      dataOffset,
    };
    this.reset();
    return entry;
  }
}

function checkHeader(h: Buffer): void {
  if (!checksumOk(h)) throw new TarFormatError('bad tar header checksum (not a tar archive, or a damaged one)');
}

const EXTENSION_LIMIT = 16 << 20;

/** Buffered reader over an async stream of chunks that knows its position. */
export class ByteReader {
  private chunks: Buffer[] = [];
  private have = 0;
  private it: AsyncIterator<Buffer>;
  private done = false;
  position = 0;

  constructor(source: AsyncIterable<Buffer>) {
    this.it = source[Symbol.asyncIterator]();
  }

  private async fill(n: number): Promise<boolean> {
    while (this.have < n && !this.done) {
      const r = await this.it.next();
      if (r.done) this.done = true;
      else if (r.value.length) {
        this.chunks.push(r.value);
        this.have += r.value.length;
      }
    }
    return this.have >= n;
  }

  /** Exactly n bytes, or null at a clean end of the stream (nothing left). */
  async read(n: number): Promise<Buffer | null> {
    if (n === 0) return Buffer.alloc(0);
    if (this.have < n && !(await this.fill(n))) {
      if (this.have === 0) return null;
      throw new TarFormatError('unexpected end of the tar stream');
    }
    this.have -= n;
    this.position += n;
    const c = this.chunks[0]!;
    if (c.length >= n) {
      // The common case: no copy.
      if (c.length === n) this.chunks.shift();
      else this.chunks[0] = c.subarray(n);
      return c.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let off = 0;
    while (off < n) {
      const d = this.chunks[0]!;
      const take = Math.min(d.length, n - off);
      d.copy(out, off, 0, take);
      off += take;
      if (take === d.length) this.chunks.shift();
      else this.chunks[0] = d.subarray(take);
    }
    return out;
  }

  /** Streams the next n bytes as they arrive. */
  async *stream(n: number): AsyncGenerator<Buffer> {
    let left = n;
    while (left > 0) {
      if (!this.chunks.length && !(await this.fill(1))) throw new TarFormatError('unexpected end of the tar stream');
      yield this.take(left);
      left -= Math.min(left, this.lastTake);
    }
  }

  private lastTake = 0;

  /** Up to n bytes from the first buffered chunk. */
  private take(n: number): Buffer {
    const c = this.chunks[0]!;
    const take = Math.min(c.length, n);
    if (take === c.length) this.chunks.shift();
    else this.chunks[0] = c.subarray(take);
    this.have -= take;
    this.position += take;
    this.lastTake = take;
    return take === c.length ? c : c.subarray(0, take);
  }

  async skip(n: number): Promise<void> {
    let left = n;
    while (left > 0) {
      if (!this.chunks.length && !(await this.fill(1))) throw new TarFormatError('unexpected end of the tar stream');
      this.take(left);
      left -= this.lastTake;
    }
  }

  /** Consumes everything left (so that a digest over the stream covers all of it). */
  async drain(): Promise<number> {
    let n = this.have;
    this.position += this.have;
    this.chunks = [];
    this.have = 0;
    for (;;) {
      const r = await this.it.next();
      if (r.done) break;
      n += r.value.length;
      this.position += r.value.length;
    }
    this.done = true;
    return n;
  }
}

/**
 * The members of a tar stream. The consumer may read an entry's data through `data()`
 * before asking for the next entry; whatever it leaves unread is skipped. Stops at the
 * first zero block, as GNU tar does.
 */
export async function* parseTar(reader: ByteReader): AsyncGenerator<{ entry: TarEntry; data: () => AsyncGenerator<Buffer> }> {
  const state = new HeaderState();
  for (;;) {
    const start = reader.position;
    const h = await reader.read(BLOCK);
    if (!h) {
      if (state.pending) throw new TarFormatError('tar stream ends inside a member header');
      return; // no end-of-archive blocks: tolerated, like GNU tar
    }
    if (isZeroBlock(h)) {
      if (state.pending) throw new TarFormatError('tar stream ends inside a member header');
      return;
    }
    checkHeader(h);
    if (state.start < 0) state.start = start;
    const kind = HeaderState.kind(h);
    if (kind !== 'entry') {
      const size = num(h, 124, 12, 'size');
      if (size > EXTENSION_LIMIT) throw new TarFormatError('tar extension header too large');
      const data = await reader.read(size + padLen(size));
      if (!data) throw new TarFormatError('tar stream ends inside a member header');
      state.pending = true;
      state.extension(kind, data.subarray(0, size));
      continue;
    }
    const entry = state.entry(h, reader.position);
    let consumed = false;
    const data = async function* (): AsyncGenerator<Buffer> {
      if (consumed) throw new Error('tar entry data read twice');
      consumed = true;
      yield* reader.stream(entry.size);
      await reader.skip(padLen(entry.size));
    };
    yield { entry, data };
    if (!consumed) {
      consumed = true;
      await reader.skip(entry.size + padLen(entry.size));
    }
  }
}

/** The members of a tar file with the offsets of their data, read without reading the data. */
export function indexTarFile(path: string): TarEntry[] {
  const fd = openSync(path, 'r');
  try {
    const fileSize = fstatSync(fd).size;
    const read = (pos: number, len: number): Buffer => {
      const b = Buffer.alloc(len);
      let got = 0;
      while (got < len) {
        const n = readSync(fd, b, got, len - got, pos + got);
        if (n === 0) throw new TarFormatError('unexpected end of the tar file');
        got += n;
      }
      return b;
    };
    const out: TarEntry[] = [];
    const state = new HeaderState();
    let pos = 0;
    while (pos + BLOCK <= fileSize) {
      const h = read(pos, BLOCK);
      if (isZeroBlock(h)) break;
      checkHeader(h);
      if (state.start < 0) state.start = pos;
      pos += BLOCK;
      const kind = HeaderState.kind(h);
      if (kind !== 'entry') {
        const size = num(h, 124, 12, 'size');
        if (size > EXTENSION_LIMIT) throw new TarFormatError('tar extension header too large');
        const data = read(pos, size);
        pos += size + padLen(size);
        state.pending = true;
        state.extension(kind, data);
        continue;
      }
      const entry = state.entry(h, pos);
      pos += entry.size + padLen(entry.size);
      if (pos > fileSize) throw new TarFormatError(`tar member ${entry.name} is truncated`);
      out.push(entry);
    }
    return out;
  } finally {
    closeSync(fd);
  }
}

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

function header(name: string, flag: string, f: { mode: number; uid: number; gid: number; size: number; mtime: number; linkname?: string; uname?: string; gname?: string; devmajor?: number; devminor?: number }, over: Map<string, Buffer>): Buffer {
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

/** Turns tar format problems into clear invalid-image errors. */
export function tarError(what: string, err: unknown): Error {
  if (err instanceof TarFormatError) return invalid(`${what}: ${err.message}`);
  return err instanceof Error ? err : new Error(String(err));
}
