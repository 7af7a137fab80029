// The little of the DNS wire format (RFC 1035) the forwarder needs: a query read strictly and
// rebuilt, the A records of an answer, and the answers it writes itself. Every read is bounds-checked:
// these bytes come from sandboxes and from upstream servers.

export interface Question {
  id: number;
  /** Lower case, dotted. */
  name: string;
  labels: string[];
  type: number;
  /** The header flags passed on (RD, AD, CD). */
  flags: number;
  /** The client sent an EDNS OPT record (with its DO bit). */
  edns?: { do: boolean };
  /** Byte offset just past the question. */
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

/** What of a query's header the forwarded query keeps: RD, AD (trust-ad) and CD. */
const KEPT_FLAGS = 0x0100 | 0x0020 | 0x0010;
const TYPE_OPT = 41;
const CLASS_IN = 1;
/** Zone transfers: never through the forwarder. */
const REFUSED_TYPES = new Set([251, 252]);
/** A label as host names and service names spell it: no '.', NUL or other bytes an upstream could read otherwise. */
const LABEL = /^[A-Za-z0-9_-]+$/;

export const RCODE_FORMERR = 1;
export const RCODE_NOTIMP = 4;

/**
 * One query, read strictly: an ordinary QUERY with exactly one question (uncompressed, labels
 * of letters, digits, '-' and '_', class IN), no answer or authority records, at most an EDNS
 * OPT record. Anything else is answered by the forwarder itself (`refusal`) or dropped
 * (undefined: not even a header to answer). Trailing bytes are ignored: only a query rebuilt
 * from the parsed question (buildQuery) ever leaves the host.
 */
export function readQuery(buf: Buffer): { q: Question } | { refusal: Buffer } | undefined {
  if (buf.length < 12) return undefined;
  const id = buf.readUInt16BE(0);
  const flags = buf.readUInt16BE(2);
  if (flags & 0x8000) return undefined; // a response, not a query
  const opcode = (flags >> 11) & 0xf;
  if (opcode !== 0) return { refusal: headerAnswer(id, flags, RCODE_NOTIMP) }; // UPDATE, NOTIFY, ...
  const [qd, an, ns, ar] = [4, 6, 8, 10].map((o) => buf.readUInt16BE(o)) as [number, number, number, number];
  if (qd !== 1 || an !== 0 || ns !== 0 || ar > 1) return { refusal: headerAnswer(id, flags, RCODE_FORMERR) };
  const labels: string[] = [];
  let off = 12;
  let total = 0;
  for (;;) {
    if (off >= buf.length) return undefined;
    const len = buf[off]!;
    if (len === 0) break;
    // no compression in a question (no client needs it), and no label types beyond plain ones
    if (len & 0xc0 || off + 1 + len > buf.length) return { refusal: headerAnswer(id, flags, RCODE_FORMERR) };
    const label = buf.toString('latin1', off + 1, off + 1 + len);
    total += len + 1;
    if (!LABEL.test(label) || total > 254) return { refusal: headerAnswer(id, flags, RCODE_FORMERR) };
    labels.push(label.toLowerCase());
    off += 1 + len;
  }
  off++;
  if (off + 4 > buf.length) return undefined;
  const type = buf.readUInt16BE(off);
  const qclass = buf.readUInt16BE(off + 2);
  off += 4;
  const q: Question = { id, name: labels.join('.'), labels, type, flags: flags & KEPT_FLAGS, end: off };
  if (type === TYPE_OPT) return { refusal: headerAnswer(id, flags, RCODE_FORMERR) };
  if (ar === 1) {
    // only EDNS's OPT record, at the root: its DO bit is kept, the rest rebuilt
    if (off + 11 > buf.length || buf[off] !== 0 || buf.readUInt16BE(off + 1) !== TYPE_OPT) return { refusal: emptyAnswer(buf, q, RCODE_FORMERR) };
    q.edns = { do: (buf.readUInt16BE(off + 7) & 0x8000) !== 0 };
  }
  if (qclass !== CLASS_IN || REFUSED_TYPES.has(type)) return { refusal: emptyAnswer(buf, q, RCODE_REFUSED) };
  return { q };
}

/** The query's question, when it is one the forwarder would pass on (see readQuery). */
export function parseQuery(buf: Buffer): Question | undefined {
  const r = readQuery(buf);
  return r && 'q' in r ? r.q : undefined;
}

/** The question section: the labels written again, type, class IN. */
function questionBytes(q: Question): Buffer {
  const parts = q.labels.map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l, 'latin1')]));
  const tail = Buffer.alloc(5);
  tail.writeUInt16BE(q.type, 1);
  tail.writeUInt16BE(CLASS_IN, 3);
  return Buffer.concat([...parts, tail]);
}

/** The query the forwarder sends upstream: built from the parsed question alone, under its own id. */
export function buildQuery(q: Question, id: number): Buffer {
  const head = Buffer.alloc(12);
  head.writeUInt16BE(id, 0);
  head.writeUInt16BE(q.flags, 2);
  head.writeUInt16BE(1, 4);
  head.writeUInt16BE(q.edns ? 1 : 0, 10);
  const parts = [head, questionBytes(q)];
  if (q.edns) {
    // OPT at the root: a 1232-byte UDP payload (the DNS flag day's), no options
    const opt = Buffer.alloc(11);
    opt.writeUInt16BE(TYPE_OPT, 1);
    opt.writeUInt16BE(1232, 3);
    opt.writeUInt16BE(q.edns.do ? 0x8000 : 0, 7);
    parts.push(opt);
  }
  return Buffer.concat(parts);
}

/** An answer with nothing but a header (for queries whose question is not read). */
function headerAnswer(id: number, flags: number, rcode: number): Buffer {
  const out = Buffer.alloc(12);
  out.writeUInt16BE(id, 0);
  out.writeUInt16BE(0x8000 | (flags & 0x7900) | 0x0080 | (rcode & 0xf), 2); // QR, the opcode and RD asked, RA
  return out;
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

/** An answer with no records: the query's id and question (rebuilt), with QR, RA and the given rcode. */
export function emptyAnswer(_query: Buffer, q: Question, rcode: number): Buffer {
  const head = Buffer.alloc(12);
  head.writeUInt16BE(q.id, 0);
  head.writeUInt16BE(0x8000 | (q.flags & 0x0100) | 0x0080 | (rcode & 0xf), 2);
  head.writeUInt16BE(1, 4);
  return Buffer.concat([head, questionBytes(q)]);
}

/** Whether a message is the answer to query id. */
export function answers(buf: Buffer, id: number): boolean {
  return buf.length >= 12 && buf.readUInt16BE(0) === id && (buf.readUInt16BE(2) & 0x8000) !== 0;
}
