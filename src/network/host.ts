// The host commands networking is made of: `ip` (namespaces, veth links, addresses, routes),
// `nft` (the policy) and `conntrack` (flow entries of a released address). Never through a
// shell; every call bounded in time.
import { spawnChild as spawn } from '../util/exec.js';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';

const CALL_TIMEOUT_MS = 20_000;

/** Runs a command with `input` on its stdin; rejects with its stderr on a non-zero exit. */
export function runWithInput(file: string, args: string[], input: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), CALL_TIMEOUT_MS);
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d.length + out.length < 64 << 20 ? d : ''));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += err.length < 65536 ? d : ''));
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve(out);
      else reject(new Error(`${file.split('/').pop()} ${args.join(' ')}: ${err.trim() || `exit ${code ?? signal}`}`));
    });
    child.stdin.on('error', () => undefined);
    child.stdin.end(input);
  });
}

export const nft = (script: string) => runWithInput('nft', ['-f', '-'], script);
export const nftJson = async (what: string): Promise<unknown> => JSON.parse(await runWithInput('nft', ['-j', ...what.split(' ')], '')) as unknown;
export const ipBatch = (lines: string[], netns?: string) => runWithInput('ip', [...(netns ? ['-n', netns] : []), '-batch', '-'], lines.join('\n') + '\n');

/** Network namespaces by name (the files `ip netns add` makes under /run/netns). */
export function listNetns(): string[] {
  try {
    return readdirSync('/run/netns');
  } catch {
    return [];
  }
}

export function netnsPath(name: string): string {
  return `/run/netns/${name}`;
}

export function netnsExists(name: string): boolean {
  return existsSync(netnsPath(name));
}

/** Interface names in the host's namespace. */
export function listLinks(): string[] {
  try {
    return readdirSync('/sys/class/net');
  } catch {
    return [];
  }
}

/** Removes a namespace (its end of the veth pair goes with it, and the host's end with that). */
export async function deleteNetns(name: string): Promise<void> {
  if (netnsExists(name)) await runWithInput('ip', ['netns', 'del', name], '');
}

export async function deleteLink(name: string): Promise<void> {
  if (listLinks().includes(name))
    await runWithInput('ip', ['link', 'del', name], '').catch((e: Error) => {
      if (listLinks().includes(name)) throw e;
    });
}

/** Drops the host's flow entries of an address (so a reused address starts with none). Needs conntrack(8); without it, entries time out. */
export async function flushConntrack(address: string): Promise<void> {
  if (!hasConntrack()) return;
  // exit 1 = no entries
  await Promise.all(['-s', '-d'].map((dir) => runWithInput('conntrack', ['-D', dir, address], '').catch(() => undefined)));
}

let conntrackPresent: boolean | undefined;
export function hasConntrack(): boolean {
  conntrackPresent ??= ['/usr/sbin/conntrack', '/sbin/conntrack', '/usr/bin/conntrack'].some((p) => existsSync(p));
  return conntrackPresent;
}

/** IPv4 forwarding must be on for sandboxes to reach anything past the host. */
export function ensureForwarding(): boolean {
  const f = '/proc/sys/net/ipv4/ip_forward';
  if (readFileSync(f, 'utf8').trim() === '1') return false;
  writeFileSync(f, '1\n');
  return true;
}

/** The host's IPv4 routes' destinations (for choosing a subnet that collides with none). */
export async function hostRoutes(): Promise<{ dst: string; dev: string }[]> {
  const out = await runWithInput('ip', ['-j', '-4', 'route', 'show', 'table', 'all'], '');
  return (JSON.parse(out) as { dst?: string; dev?: string }[])
    .map((r) => ({ dst: r.dst ?? '', dev: r.dev ?? '' }))
    .filter((r) => r.dst && r.dst !== 'default' && /^\d/.test(r.dst));
}
