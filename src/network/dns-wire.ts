// The little of the DNS wire format (RFC 1035) the forwarder needs: a query's first question,
// the A records of an answer, and the answers it writes itself. Every read is bounds-checked:
// these bytes come from sandboxes and from upstream servers.

export interface Question {
  id: number;
  name: string;
  type: number;
  /** Byte offset just past the question section's first entry. */
  end: number;
}

export const TYPE_A = 1;
export const TYPE_AAAA = 28;
export const RCODE_REFUSED = 5;
export const RCODE_SERVFAIL = 2;

/** Reads a (possibly compressed) name at off; returns it and the offset past it in the original position. */
function readName(buf: Buffer, off: number): { name: string; next: number } {
  const labels: string[] = [];
  let next = -1;
  let jumps = 0;
  let total = 0;
  for (;;) {
    if (off >= buf.length) throw new Error('name past the end of the message');
    const len = buf[off]!;
    if ((len & 0xc0) === 0xc0) {
      if (off + 1 >= buf.length || ++jumps > 16) throw new Error('bad compression pointer');
      if (next < 0) next = off + 2;
      off = ((len & 0x3f) << 8) | buf[off + 1]!;
      continue;
    }
    if (len & 0xc0) throw new Error('bad label type');
    if (len === 0) {
      if (next < 0) next = off + 1;
      break;
    }
    if (off + 1 + len > buf.length) throw new Error('label past the end of the message');
    total += len + 1;
    if (total > 255) throw new Error('name too long');
    labels.push(buf.toString('latin1', off + 1, off + 1 + len));
    off += 1 + len;
  }
  return { name: labels.join('.').toLowerCase(), next };
}

/** The first question of a query; undefined if the message is not a well-formed query. */
export function parseQuery(buf: Buffer): Question | undefined {
  try {
    if (buf.length < 12) return undefined;
    const flags = buf.readUInt16BE(2);
    if (flags & 0x8000) return undefined; // a response, not a query
    if (buf.readUInt16BE(4) !== 1) return undefined; // exactly one question
    const { name, next } = readName(buf, 12);
    if (next + 4 > buf.length) return undefined;
    return { id: buf.readUInt16BE(0), name, type: buf.readUInt16BE(next), end: next + 4 };
  } catch {
    return undefined;
  }
}

/** The IPv4 addresses in an answer's answer section and their smallest TTL. */
export function answerAddresses(buf: Buffer): { addresses: string[]; ttl: number } {
  const addresses: string[] = [];
  let ttl = 3600;
  try {
    const qd = buf.readUInt16BE(4);
    const an = buf.readUInt16BE(6);
    let off = 12;
    for (let i = 0; i < qd; i++) off = readName(buf, off).next + 4;
    for (let i = 0; i < an && i < 256; i++) {
      off = readName(buf, off).next;
      if (off + 10 > buf.length) break;
      const type = buf.readUInt16BE(off);
      const rrTtl = buf.readUInt32BE(off + 4);
      const len = buf.readUInt16BE(off + 8);
      off += 10;
      if (off + len > buf.length) break;
      if (type === TYPE_A && len === 4) {
        addresses.push(`${buf[off]}.${buf[off + 1]}.${buf[off + 2]}.${buf[off + 3]}`);
        ttl = Math.min(ttl, rrTtl);
      }
      off += len;
    }
  } catch {
    /* what was read so far */
  }
  return { addresses, ttl };
}

/** An answer with no records: the query's header and question, with QR, RA and the given rcode. */
export function emptyAnswer(query: Buffer, q: Question, rcode: number): Buffer {
  const out = Buffer.from(query.subarray(0, q.end));
  const rd = query.readUInt16BE(2) & 0x0100;
  out.writeUInt16BE(0x8000 | rd | 0x0080 | (rcode & 0xf), 2);
  out.writeUInt16BE(1, 4);
  out.writeUInt16BE(0, 6);
  out.writeUInt16BE(0, 8);
  out.writeUInt16BE(0, 10);
  return out;
}

/** Whether a message is the answer to query id. */
export function answers(buf: Buffer, id: number): boolean {
  return buf.length >= 12 && buf.readUInt16BE(0) === id && (buf.readUInt16BE(2) & 0x8000) !== 0;
}
