// What the egress proxy reads of a connection before deciding where it goes: the server name
// of a TLS ClientHello (SNI), or the Host of an HTTP request head. Bounded, hostile input. Pure.

/** undefined: more bytes needed; null: not readable (refused); else the name (lower case, maybe ''). */
export type Peek = string | null | undefined;

export const MAX_PEEK = 16 * 1024;

/** The extensions of a TLS ClientHello at the start of `b`, by type (empty when it has none). */
function extensionsOf(b: Buffer): Map<number, Buffer> | null | undefined {
  if (b.length < 5) return undefined;
  if (b[0] !== 0x16 || b[1] !== 3) return null;
  const recLen = b.readUInt16BE(3);
  if (b.length < 5 + recLen) return b.length >= MAX_PEEK ? null : undefined;
  const h = b.subarray(5, 5 + recLen);
  // one handshake message, a ClientHello, wholly in this record (what clients send)
  if (h.length < 4 || h[0] !== 1) return null;
  const len = h.readUIntBE(1, 3);
  if (len + 4 > h.length) return null;
  const hello = h.subarray(4, 4 + len);
  const out = new Map<number, Buffer>();
  let o = 2 + 32; // version, random
  if (o >= hello.length) return null;
  o += 1 + hello[o]!; // session id
  if (o + 2 > hello.length) return null;
  o += 2 + hello.readUInt16BE(o); // cipher suites
  if (o >= hello.length) return null;
  o += 1 + hello[o]!; // compression methods
  if (o + 2 > hello.length) return out;
  const end = Math.min(hello.length, o + 2 + hello.readUInt16BE(o));
  o += 2;
  while (o + 4 <= end) {
    const type = hello.readUInt16BE(o);
    const extLen = hello.readUInt16BE(o + 2);
    o += 4;
    if (o + extLen > end) return null;
    if (!out.has(type)) out.set(type, hello.subarray(o, o + extLen));
    o += extLen;
  }
  return out;
}

/** The SNI host name of a TLS ClientHello at the start of `b` ('' when it has none). */
export function sniOf(b: Buffer): Peek {
  const ext = extensionsOf(b);
  if (!ext) return ext;
  const list = ext.get(0);
  if (!list) return '';
  // server_name list: the first host_name entry
  let p = 2;
  while (p + 3 <= list.length) {
    const nameType = list[p]!;
    const nameLen = list.readUInt16BE(p + 1);
    p += 3;
    if (p + nameLen > list.length) return null;
    if (nameType === 0) return hostName(list.toString('latin1', p, p + nameLen));
    p += nameLen;
  }
  return null;
}

/** Whether a TLS ClientHello at the start of `b` offers HTTP/2 (ALPN 'h2'). */
export function offersH2(b: Buffer): boolean {
  const alpn = extensionsOf(b)?.get(16);
  // a 2-byte list length, then names each after a 1-byte length
  for (let p = 2; alpn && p < alpn.length; p += 1 + alpn[p]!) if (alpn.toString('latin1', p + 1, p + 1 + alpn[p]!) === 'h2') return true;
  return false;
}

/** The Host of an HTTP/1.x request head at the start of `b` (without its port). */
export function hostOf(b: Buffer): Peek {
  const end = b.indexOf('\r\n\r\n');
  if (end < 0) return b.length >= MAX_PEEK ? null : undefined;
  const lines = b.toString('latin1', 0, end).split('\r\n');
  if (!/^[A-Z]+ \S+ HTTP\/1\.[01]$/.test(lines[0] ?? '')) return null;
  const hosts = lines.slice(1).filter((l) => /^host:/i.test(l));
  if (hosts.length !== 1) return null; // none, or several that could be read two ways
  return hostName(
    hosts[0]!
      .slice(5)
      .trim()
      .replace(/:\d{1,5}$/, ''),
  );
}

const NAME = /^([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

function hostName(raw: string): string | null {
  const n = raw.toLowerCase().replace(/\.$/, '');
  return n.length <= 253 && NAME.test(n) ? n : null;
}
