// Checks a build's uploaded files before they are kept: a (gzipped) tar whose every entry stays
// inside the build context. Read here as plain data (headers only, nothing written); the files
// are unpacked later inside a build sandbox, never on the host.
import { createReadStream } from 'node:fs';
import { createGunzip } from 'node:zlib';
import { insideContext } from './steps.js';

export interface TarLimits {
  maxEntries: number;
  /** The content's total size once unpacked, bytes. */
  maxBytes: number;
}

/** Why the archive is refused, or undefined when it is sound. */
export async function checkTar(file: string, limits: TarLimits): Promise<string | undefined> {
  const head = await new Promise<Buffer>((resolve, reject) => {
    const s = createReadStream(file, { start: 0, end: 1 });
    const parts: Buffer[] = [];
    s.on('data', (d) => parts.push(d as Buffer));
    s.on('end', () => resolve(Buffer.concat(parts)));
    s.on('error', reject);
  });
  const gz = head.length === 2 && head[0] === 0x1f && head[1] === 0x8b;
  const input = gz ? createReadStream(file).pipe(createGunzip()) : createReadStream(file);
  const reader = new TarReader(limits);
  try {
    for await (const chunk of input) {
      const err = reader.push(chunk as Buffer);
      if (err) {
        input.destroy();
        return err;
      }
    }
  } catch (err) {
    return `the upload is not a ${gz ? 'gzipped ' : ''}tar archive (${(err as Error).message})`;
  }
  return reader.finish();
}

/** A streaming reader of tar headers (ustar, GNU long names, pax paths). */
export class TarReader {
  private buf: Buffer = Buffer.alloc(0);
  private skip = 0; // content bytes still to pass over
  private longName: string | undefined;
  private longLink: string | undefined;
  private paxPath: string | undefined;
  private paxLink: string | undefined;
  private collect: { type: string; size: number } | undefined; // a long-name or pax record being read
  private entries = 0;
  private bytes = 0;
  private ended = false;

  constructor(private readonly limits: TarLimits) {}

  push(chunk: Buffer): string | undefined {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    for (;;) {
      if (this.ended) return undefined;
      if (this.skip > 0) {
        const n = Math.min(this.skip, this.buf.length);
        this.buf = this.buf.subarray(n);
        this.skip -= n;
        if (this.skip > 0) return undefined;
      }
      if (this.collect) {
        const padded = Math.ceil(this.collect.size / 512) * 512;
        if (this.buf.length < padded) return undefined;
        const data = this.buf.subarray(0, this.collect.size).toString('utf8');
        this.buf = this.buf.subarray(padded);
        const { type } = this.collect;
        this.collect = undefined;
        if (type === 'L') this.longName = data.replace(/\0.*$/s, '');
        else if (type === 'K') this.longLink = data.replace(/\0.*$/s, '');
        else {
          for (const rec of data.split('\n')) {
            const m = /^\d+ (path|linkpath)=(.*)$/s.exec(rec);
            if (m?.[1] === 'path') this.paxPath = m[2];
            else if (m?.[1] === 'linkpath') this.paxLink = m[2];
          }
        }
        continue;
      }
      if (this.buf.length < 512) return undefined;
      const h = this.buf.subarray(0, 512);
      this.buf = this.buf.subarray(512);
      if (h.every((b) => b === 0)) {
        this.ended = true;
        return undefined;
      }
      let sum = 0;
      for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 32 : h[i]!;
      const stored = parseInt(h.subarray(148, 156).toString('latin1').replace(/\0.*$/s, '').trim(), 8);
      if (stored !== sum) return 'the upload is not a tar archive (a header checksum is wrong)';
      const str = (off: number, len: number) =>
        h
          .subarray(off, off + len)
          .toString('utf8')
          .replace(/\0.*$/s, '');
      const size = parseInt(str(124, 12).trim() || '0', 8);
      if (!Number.isFinite(size) || size < 0) return 'the upload is not a tar archive (a header is damaged)';
      const type = String.fromCharCode(h[156] || 0x30);
      if (type === 'L' || type === 'K' || type === 'x') {
        if (size > 1024 * 1024) return 'the upload has a tar header record over 1 MiB';
        this.collect = { type, size };
        continue;
      }
      if (type === 'g') {
        this.skip = Math.ceil(size / 512) * 512;
        continue;
      }
      const prefix = str(345, 155);
      const path = this.paxPath ?? this.longName ?? (prefix ? `${prefix}/${str(0, 100)}` : str(0, 100));
      const link = this.paxLink ?? this.longLink ?? str(157, 100);
      this.paxPath = this.paxLink = this.longName = this.longLink = undefined;
      const clean = path.replace(/^(\.\/)+/, '').replace(/\/+$/, '');
      if (clean !== '' && clean !== '.' && !insideContext(clean)) return `the upload has a path outside the build context: '${path.slice(0, 200)}'`;
      if (type === '1' && !insideContext(link.replace(/^(\.\/)+/, ''))) return `the upload has a hard link outside the build context: '${path.slice(0, 200)}'`;
      if (!['0', '\0', '1', '2', '5', '7'].includes(type))
        return `the upload has an entry of a kind builds do not take (type '${type}'): '${path.slice(0, 200)}'`;
      if (++this.entries > this.limits.maxEntries) return `the upload has more than ${this.limits.maxEntries} entries`;
      this.bytes += size;
      if (this.bytes > this.limits.maxBytes) return `the upload unpacks to more than ${Math.round(this.limits.maxBytes / 1048576)} MiB`;
      this.skip = type === '0' || type === '\0' || type === '7' ? Math.ceil(size / 512) * 512 : 0;
    }
  }

  /** Undefined when the archive ended well. */
  finish(): string | undefined {
    if (this.skip > 0 || this.collect || (!this.ended && this.buf.length > 0)) return 'the upload is not a whole tar archive (it ends inside an entry)';
    if (!this.ended && this.entries === 0) return 'the upload is not a tar archive (no entries)';
    return undefined;
  }
}
