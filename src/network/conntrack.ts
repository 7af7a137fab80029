// The original destination of a connection nftables redirected to the egress proxy's tunnel
// port. Node cannot ask the socket (getsockopt SO_ORIGINAL_DST); the kernel's connection
// tracking holds the same answer in /proc/net/nf_conntrack: the entry whose reply tuple is the
// accepted socket's own (from the proxy's address and port back to the sandbox's). Chosen over
// the native helper: a helper spawned per connection to read the socket (passed as an fd) costs
// a process (~5 ms here) per connection; a long-lived one would need fd passing over Node's IPC
// protocol. This is one async read, no process, no new native code; its cost is a scan of the
// host's table (one text line per tracked connection), and the entry cannot be forged from a
// sandbox (it is the kernel's record of the connection the proxy accepted).
import { open } from 'node:fs/promises';

export const CONNTRACK_FILE = '/proc/net/nf_conntrack';
/**
 * How much of the table one lookup reads at most: sandboxes grow the host's table (each up to its
 * flow cap), so a lookup stops at the entry it wants and never reads past this.
 */
export const MAX_TABLE_BYTES = 64 << 20;
const CHUNK = 1 << 20;

export interface Endpoint {
  address: string;
  port: number;
}

const TUPLE = / src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+)/g;

/** In the table's text: the original destination of the connection whose reply goes from `local` to `remote`. */
export function findOriginalDst(table: string, local: Endpoint, remote: Endpoint): Endpoint | undefined {
  const needle = ` src=${local.address} dst=${remote.address} sport=${local.port} dport=${remote.port} `;
  for (let at = table.indexOf(needle); at >= 0; at = table.indexOf(needle, at + 1)) {
    const start = table.lastIndexOf('\n', at) + 1;
    const end = table.indexOf('\n', at);
    const line = `${table.slice(start, end < 0 ? undefined : end)} `;
    if (!/^ipv4\s+\d+\s+tcp\s/.test(line)) continue;
    const t = [...line.matchAll(TUPLE)];
    // the reply tuple is the second; the first must be from the same sandbox port
    if (t.length < 2 || t[1]!.index !== at - start || t[0]![1] !== remote.address || Number(t[0]![3]) !== remote.port) continue;
    return { address: t[0]![2]!, port: Number(t[0]![4]) };
  }
  return undefined;
}

/**
 * The original destination of an accepted, redirected connection (undefined when the kernel has
 * no such entry, or not within the first MAX_TABLE_BYTES): read a chunk at a time, whole lines only.
 */
export async function originalDst(local: Endpoint, remote: Endpoint, file = CONNTRACK_FILE, max = MAX_TABLE_BYTES): Promise<Endpoint | undefined> {
  const fh = await open(file, 'r');
  try {
    const buf = Buffer.alloc(CHUNK);
    let carry = '';
    for (let read = 0; read < max;) {
      const { bytesRead } = await fh.read(buf, 0, Math.min(CHUNK, max - read), null);
      if (bytesRead === 0) return findOriginalDst(carry, local, remote);
      read += bytesRead;
      const text = carry + buf.toString('latin1', 0, bytesRead);
      const cut = text.lastIndexOf('\n') + 1;
      const found = findOriginalDst(text.slice(0, cut), local, remote);
      if (found) return found;
      carry = text.slice(cut);
    }
    return undefined;
  } finally {
    await fh.close();
  }
}
