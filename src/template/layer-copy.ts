import { chmodSync, lchownSync, lstatSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { runOk } from '../util/exec.js';

/**
 * Copies a writable layer into a template layer: everything but cubebox's own mount
 * points, with ownership shifted back from the sandbox's host id range to plain ids, and
 * overlay whiteouts and opaque-directory xattrs kept (cp -a), so that the layer stacks
 * like any other.
 */
export async function copyLayerUnshifted(upper: string, dest: string, hostBase: number, idBlock: number): Promise<void> {
  const entries = readdirSync(upper).filter((e) => e !== '.cubebox');
  if (entries.length) await runOk('cp', ['-a', '--reflink=auto', ...entries.map((e) => join(upper, e)), dest + '/']);
  if (!hostBase) return;
  const shift = (p: string) => {
    const st = lstatSync(p);
    const uid = st.uid >= hostBase && st.uid < hostBase + idBlock ? st.uid - hostBase : st.uid;
    const gid = st.gid >= hostBase && st.gid < hostBase + idBlock ? st.gid - hostBase : st.gid;
    if (uid !== st.uid || gid !== st.gid) {
      lchownSync(p, uid, gid);
      if (!st.isSymbolicLink() && st.mode & 0o6000) chmodSync(p, st.mode & 0o7777); // chown clears setuid/setgid
    }
    if (st.isDirectory()) for (const e of readdirSync(p)) shift(join(p, e));
  };
  for (const e of readdirSync(dest)) shift(join(dest, e));
}
