// The original destination of a connection nftables redirected to the egress proxy's tunnel
// port. Node cannot ask the socket (getsockopt SO_ORIGINAL_DST); the kernel's connection
// tracking holds the same answer in /proc/net/nf_conntrack: the entry whose reply tuple is the
// accepted socket's own (from the proxy's address and port back to the sandbox's). Chosen over
// the native helper: a helper spawned per connection to read the socket (passed as an fd) costs
// a process (~5 ms here) per connection; a long-lived one would need fd passing over Node's IPC
// protocol. This is one async read, no process, no new native code; its cost is a scan of the
// host's table (one text line per tracked connection), and the entry cannot be forged from a
// sandbox (it is the kernel's record of the connection the proxy accepted).
import { readFile } from 'node:fs/promises';

export const CONNTRACK_FILE = '/proc/net/nf_conntrack';

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

/** The original destination of an accepted, redirected connection (undefined when the kernel has no such entry). */
export async function originalDst(local: Endpoint, remote: Endpoint): Promise<Endpoint | undefined> {
  return findOriginalDst(await readFile(CONNTRACK_FILE, 'latin1'), local, remote);
}
