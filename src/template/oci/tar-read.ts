// Reading tar: streaming (layers can be large) with ByteReader and parseTar, or indexing a
// tar file's members and data offsets without reading the data (indexTarFile).
import { openSync, readSync, closeSync, fstatSync } from 'node:fs';
import { BLOCK, checkHeader, cstr, EXTENSION_LIMIT, isZeroBlock, linkNul, num, padLen, parsePax, TarFormatError, TYPES, type TarEntry } from './tar-format.js';

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
