// The one reader of /proc/self/mountinfo: cgroup mode detection, overlay and disk unmounts, leak
// checks and safe tree removal all ask it.
import { readFileSync } from 'node:fs';
import { realpath } from 'node:fs/promises';
import { resolve } from 'node:path';

export interface MountEntry {
  mountPoint: string;
  /** The mount source (a device, an overlay's name such as cubebox-<inst>-<sbx>, or "none"). */
  source: string;
  fsType: string;
  /** Per-superblock options (for cgroup v1 mounts: the controllers). */
  superOptions: string;
}

/** mountinfo escapes space, tab, newline and backslash as \ooo octal. */
export function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** One line of mountinfo: fields before " - " (the 5th is the mount point), then fstype, source, super options. */
export function parseMountinfoLine(line: string): MountEntry {
  const [pre, post] = line.split(' - ');
  const f = pre!.split(' ');
  const p = (post ?? '').split(' ');
  return { mountPoint: unescapeMount(f[4] ?? ''), fsType: p[0] ?? '', source: unescapeMount(p[1] ?? ''), superOptions: p[2] ?? '' };
}

/** This process's mount table (its mount namespace), in mount order. */
export function mountTable(): MountEntry[] {
  return readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter(Boolean).map(parseMountinfoLine);
}

export function mountPoints(): string[] {
  return mountTable().map((m) => m.mountPoint);
}

/** Mount points at dir or below it (deepest first, so they can be unmounted in order); dir is taken as written. */
export function mountsAtOrUnder(dir: string): string[] {
  const prefix = dir.endsWith('/') ? dir : dir + '/';
  return mountPoints()
    .filter((m) => m === dir || m.startsWith(prefix))
    .sort((a, b) => b.length - a.length);
}

/** Mount points strictly below dir (deepest first), after resolving links in dir (the kernel lists real paths). */
export async function mountsBelow(dir: string): Promise<string[]> {
  let real: string;
  try {
    real = await realpath(dir);
  } catch {
    real = resolve(dir);
  }
  return mountsAtOrUnder(real).filter((m) => m !== real);
}
