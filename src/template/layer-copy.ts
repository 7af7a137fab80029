import { chmodSync, linkSync, lchownSync, lstatSync, mkdirSync, readdirSync, type BigIntStats } from 'node:fs';
import { dirname, join } from 'node:path';
import { runOk } from '../util/exec.js';

/** A layer made earlier from the same writable layer, and when that writable layer was frozen for it (ms epoch). */
export interface EarlierCopy {
  layer: string;
  takenAt: number;
}

/**
 * Copies a writable layer into a template layer: everything but cubebox's own mount
 * points, with ownership shifted back from the sandbox's host id range to plain ids, and
 * overlay whiteouts and opaque-directory xattrs kept (cp -a), so that the layer stacks
 * like any other.
 *
 * Files unchanged since an earlier copy of the same writable layer are hard links to that
 * copy's files instead of new copies (layers are never written once made, so sharing an
 * inode is safe): repeated snapshots of a sandbox cost only what changed in between.
 */
export async function copyLayerUnshifted(upper: string, dest: string, hostBase: number, idBlock: number, earlier?: EarlierCopy): Promise<void> {
  const entries = readdirSync(upper).filter((e) => e !== '.cubebox');
  const unshift = (id: number) => (hostBase && id >= hostBase && id < hostBase + idBlock ? id - hostBase : id);
  if (earlier) {
    for (const rel of unchangedFiles(upper, earlier, entries, unshift)) {
      mkdirSync(dirname(join(dest, rel)), { recursive: true }); // cp -a gives it its owner, mode and xattrs
      try {
        linkSync(join(earlier.layer, rel), join(dest, rel));
      } catch {
        /* (too many links, say) cp copies it */
      }
    }
  }
  // -n: the files linked above stay as they are; directories that exist get their attributes all the same
  if (entries.length) await runOk('cp', ['-a', '-n', '--reflink=auto', ...entries.map((e) => join(upper, e)), dest + '/']);
  if (!hostBase) return;
  const shift = (p: string) => {
    const st = lstatSync(p);
    const uid = unshift(st.uid);
    const gid = unshift(st.gid);
    if (uid !== st.uid || gid !== st.gid) {
      lchownSync(p, uid, gid);
      if (!st.isSymbolicLink() && st.mode & 0o6000) chmodSync(p, st.mode & 0o7777); // chown clears setuid/setgid
    }
    if (st.isDirectory()) for (const e of readdirSync(p)) shift(join(p, e));
  };
  for (const e of readdirSync(dest)) shift(join(dest, e));
}

/**
 * Regular files of the writable layer whose inode has not changed since the earlier copy
 * was taken (ctime, which no file operation can set back, is older than that), found at the
 * same path in that copy with the same size, mtime, mode and (unshifted) owner. Walks both
 * trees together through real directories only: never a path through a symlink.
 */
function unchangedFiles(upper: string, earlier: EarlierCopy, entries: string[], unshift: (id: number) => number): string[] {
  const takenAtNs = BigInt(earlier.takenAt) * 1_000_000n;
  const out: string[] = [];
  const walk = (rel: string, names: string[]) => {
    for (const name of names) {
      const r = rel ? `${rel}/${name}` : name;
      const a = lstatSync(join(upper, r), { bigint: true });
      let b: BigIntStats | undefined;
      try {
        b = lstatSync(join(earlier.layer, r), { bigint: true });
      } catch {
        continue; // not in the earlier copy
      }
      if (a.isDirectory()) {
        if (b.isDirectory()) walk(r, readdirSync(join(upper, r)));
      } else if (a.isFile() && b.isFile() && a.ctimeNs < takenAtNs && same(a, b, unshift)) out.push(r);
    }
  };
  walk('', entries);
  return out;
}

function same(a: BigIntStats, b: BigIntStats, unshift: (id: number) => number): boolean {
  return (
    a.size === b.size && a.mtimeNs === b.mtimeNs && a.mode === b.mode && unshift(Number(a.uid)) === Number(b.uid) && unshift(Number(a.gid)) === Number(b.gid)
  );
}
