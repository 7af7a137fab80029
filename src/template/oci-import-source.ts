// Where the files of an image come from: a directory (an OCI image layout, or an unpacked
// `docker save`) or a tar archive of one, read in place through an index of its members.
import { createReadStream, type Stats } from 'node:fs';
import fs from 'node:fs/promises';
import { join, posix } from 'node:path';
import { Readable } from 'node:stream';
import { invalid } from '../util/errors.js';
import type { BlobSource } from './oci-import-layer.js';
import { printable } from './oci-import-layer.js';
import { indexTarFile, TarFormatError, type TarEntry } from './oci-import-tar.js';

export interface ImageFiles {
  what: string;
  has(path: string): Promise<boolean>;
  read(path: string, limit: number): Promise<Buffer>;
  blob(path: string, what: string): Promise<BlobSource>;
}

/** A relative path inside the image; names from image metadata must not leave it. */
function inside(path: string, what: string): string {
  if (path.startsWith('/')) throw invalid(`${what}: path '${printable(path)}' is absolute`);
  const n = posix.normalize(path);
  if (n === '..' || n.startsWith('../')) throw invalid(`${what}: path '${printable(path)}' leaves the image`);
  return n.replace(/^\.\/?/, '').replace(/\/+$/, '');
}

function rangeStream(file: string, base: number, size: number, start = 0, end = size - 1): Readable {
  if (size === 0 || end < start) return Readable.from([]);
  return createReadStream(file, { start: base + start, end: base + Math.min(end, size - 1), highWaterMark: 1 << 20 });
}

async function readAll(r: Readable, limit: number, what: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of r) {
    n += (c as Buffer).length;
    if (n > limit) {
      r.destroy();
      throw invalid(`${what} is larger than ${limit} bytes`);
    }
    chunks.push(c as Buffer);
  }
  return Buffer.concat(chunks);
}

export class DirFiles implements ImageFiles {
  private realRoot?: string;
  constructor(
    private readonly root: string,
    readonly what: string,
  ) {}

  private async resolve(path: string): Promise<{ full: string; st: Stats } | undefined> {
    const rel = inside(path, this.what);
    this.realRoot ??= await fs.realpath(this.root);
    let real: string;
    try {
      real = await fs.realpath(join(this.root, rel));
    } catch {
      return undefined;
    }
    if (real !== this.realRoot && !real.startsWith(this.realRoot + '/')) throw invalid(`${this.what}: '${printable(path)}' leaves the image directory`);
    const st = await fs.stat(real);
    return { full: real, st };
  }

  async has(path: string): Promise<boolean> {
    const r = await this.resolve(path);
    return !!r && r.st.isFile();
  }

  private async file(path: string, what: string): Promise<{ full: string; st: Stats }> {
    const r = await this.resolve(path);
    if (!r) throw invalid(`${this.what}: ${what} '${printable(path)}' is missing`);
    if (!r.st.isFile()) throw invalid(`${this.what}: ${what} '${printable(path)}' is not a regular file`);
    return r;
  }

  async read(path: string, limit: number): Promise<Buffer> {
    const { full } = await this.file(path, 'file');
    return readAll(createReadStream(full), limit, `${this.what}: ${path}`);
  }

  async blob(path: string, what: string): Promise<BlobSource> {
    const { full, st } = await this.file(path, what);
    return { what, size: st.size, open: (s, e) => rangeStream(full, 0, st.size, s, e) };
  }
}

export class TarFiles implements ImageFiles {
  private members = new Map<string, TarEntry>();

  constructor(
    private readonly file: string,
    readonly what: string,
  ) {
    let entries: TarEntry[];
    try {
      entries = indexTarFile(file);
    } catch (err) {
      if (err instanceof TarFormatError) throw invalid(`${what} is not a usable tar archive: ${err.message}`);
      throw err;
    }
    for (const e of entries) {
      if (e.name.startsWith('/')) continue;
      const n = posix.normalize(e.name).replace(/^\.\/?/, '');
      if (n === '..' || n.startsWith('../')) continue;
      this.members.set(n, e);
    }
  }

  /** Follows symbolic and hard links inside the archive (never out of it). */
  private resolve(path: string): TarEntry | undefined {
    let p = inside(path, this.what);
    for (let hops = 0; hops < 32; hops++) {
      const e = this.members.get(p);
      if (!e) return undefined;
      if (e.type === 'file') return e;
      if (e.type !== 'symlink' && e.type !== 'hardlink') return e;
      const target = e.type === 'symlink' && !e.linkname.startsWith('/') ? posix.join(posix.dirname(p), e.linkname) : e.linkname;
      p = inside(target.replace(/^\/+/, ''), this.what);
    }
    throw invalid(`${this.what}: too many links resolving '${printable(path)}'`);
  }

  has(path: string): Promise<boolean> {
    return Promise.resolve(this.resolve(path)?.type === 'file');
  }

  private member(path: string, what: string): TarEntry {
    const e = this.resolve(path);
    if (!e) throw invalid(`${this.what}: ${what} '${printable(path)}' is missing`);
    if (e.type !== 'file') throw invalid(`${this.what}: ${what} '${printable(path)}' is not a regular file`);
    return e;
  }

  read(path: string, limit: number): Promise<Buffer> {
    const e = this.member(path, 'file');
    if (e.size > limit) throw invalid(`${this.what}: ${path} is larger than ${limit} bytes`);
    return readAll(rangeStream(this.file, e.dataOffset, e.size), limit, `${this.what}: ${path}`);
  }

  blob(path: string, what: string): Promise<BlobSource> {
    const e = this.member(path, what);
    return Promise.resolve({ what, size: e.size, open: (s?: number, en?: number) => rangeStream(this.file, e.dataOffset, e.size, s, en) });
  }
}
