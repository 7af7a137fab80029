// The tar format's building blocks as image layers use it: ustar headers, PAX records, the
// member type flags and checksums. Names are byte strings (latin1), never re-encoded.
import { invalid } from '../../util/errors.js';

export const BLOCK = 512;

export type EntryType = 'file' | 'hardlink' | 'symlink' | 'char' | 'block' | 'dir' | 'fifo';

export const TYPES: Record<string, EntryType> = {
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

export const TYPE_FLAGS: Record<EntryType, string> = { file: '0', hardlink: '1', symlink: '2', char: '3', block: '4', dir: '5', fifo: '6' };

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

export function cstr(b: Buffer, start: number, len: number): string {
  const s = b.subarray(start, start + len);
  const nul = s.indexOf(0);
  return (nul < 0 ? s : s.subarray(0, nul)).toString('latin1');
}

export function num(b: Buffer, start: number, len: number, what: string): number {
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

export function isZeroBlock(b: Buffer): boolean {
  for (let i = 0; i < BLOCK; i++) if (b[i] !== 0) return false;
  return true;
}

export function checksumOk(b: Buffer): boolean {
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

export const linkNul = (pax: Map<string, Buffer>) => (pax.get('linkpath')?.indexOf(0) ?? -1) >= 0;

export const padLen = (n: number) => (BLOCK - (n % BLOCK)) % BLOCK;

export function checkHeader(h: Buffer): void {
  if (!checksumOk(h)) throw new TarFormatError('bad tar header checksum (not a tar archive, or a damaged one)');
}

export const EXTENSION_LIMIT = 16 << 20;

/** Turns tar format problems into clear invalid-image errors. */
export function tarError(what: string, err: unknown): Error {
  if (err instanceof TarFormatError) return invalid(`${what}: ${err.message}`);
  return err instanceof Error ? err : new Error(String(err));
}
