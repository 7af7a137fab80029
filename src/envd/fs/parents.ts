// The missing parent directories of a user's write, made by envd (root) and given to the user,
// as E2B's envd does wherever the path is: `files.write('/data/x.txt')` works for `user`. Only
// directories that do not exist are made; the file itself is still written by the user's
// worker, so the kernel keeps deciding what the user may write (an existing directory the user
// cannot write stays closed to them).
import { constants as fsConstants } from 'node:fs';
import { mkdir, open, stat } from 'node:fs/promises';
import { posix } from 'node:path';

function notDirectory(p: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`a parent of the path is not a directory: ${p}`), { code: 'ENOTDIR' });
}

async function statOrMissing(p: string) {
  try {
    return await stat(p);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
}

/**
 * Makes each missing directory of the absolute path `dir`, mode 0755, owned by uid:gid; whether
 * it made any. Nothing is made where the user could not reach it: `mayEnter` (asked as the
 * user) must allow the existing directory the first new one goes into, so root's 0700 home
 * stays closed. Existing components resolve as in the user's own path (symlinks followed), but
 * nothing is changed through a link: mkdir never follows its last component, and the owner is
 * set through a descriptor opened with O_NOFOLLOW, so a directory swapped for a link in between
 * is refused, never chowned.
 */
export async function makeMissingDirs(dir: string, uid: number, gid: number, mayEnter: (existing: string) => Promise<boolean>): Promise<boolean> {
  let made = false;
  let cur = '';
  for (const part of posix.normalize(dir).split('/').filter(Boolean)) {
    const parent = cur || '/';
    cur += `/${part}`;
    const st = await statOrMissing(cur);
    if (st) {
      if (!st.isDirectory()) throw notDirectory(cur);
      continue;
    }
    if (!made && !(await mayEnter(parent))) return false;
    try {
      await mkdir(cur, 0o755);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      // made meanwhile, or a dangling link: only a directory will do
      if (!(await stat(cur)).isDirectory()) throw notDirectory(cur);
      continue;
    }
    const fh = await open(cur, fsConstants.O_RDONLY | fsConstants.O_DIRECTORY | fsConstants.O_NOFOLLOW);
    try {
      await fh.chown(uid, gid);
    } finally {
      await fh.close();
    }
    made = true;
  }
  return made;
}
