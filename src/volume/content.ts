// File operations inside one volume, for the volume content API.
//
// A volume is mounted in sandboxes while the host serves these requests, so everything in it
// is hostile: any directory may be swapped for a symlink (to /etc/shadow, to /) between two
// calls. Node has no openat2(RESOLVE_BENEATH), so the walk is done by hand, anchored on file
// descriptors: the volume's root is opened, then each component is opened *relative to the
// directory fd before it*, through /proc/self/fd/<fd>/<name> (the kernel resolves that magic
// link to exactly the inode the fd holds, never by path again), with O_NOFOLLOW|O_DIRECTORY,
// and checked by fstat to be a directory on the volume's own disk. Every final operation
// (lstat, open, mkdir, rename, unlink, rmdir) acts on one name inside such a pinned directory
// and never follows that name. So a swap can only make a request fail, never reach outside.
// Symlinks can be listed and removed, never traversed; `..` is resolved lexically and may
// not climb above the root. Files are opened O_NONBLOCK and checked to be regular files, so
// a planted FIFO cannot hang the host. (A helper process chrooted to the volume would do as
// well, at a process per request; these fds cost nothing.)
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import {
  chmodSync,
  chownSync,
  closeSync,
  createReadStream,
  createWriteStream,
  fchmodSync,
  fchownSync,
  fstatSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readlinkSync,
  renameSync,
  rmdirSync,
  unlinkSync,
  type ReadStream,
  type Stats,
} from 'node:fs';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { at, ContentError, MAX_DEPTH, MAX_LIST, namesIn, pathParts, show, toEntry, type Attrs, type EntryStat } from './entries.js';

export { checkAttrs, ContentError, type Attrs, type EntryStat } from './entries.js';

const O_WRONLY = 0o1;
const O_CREAT = 0o100;
const O_EXCL = 0o200;
const O_NONBLOCK = 0o4000;
const O_DIRECTORY = 0o200000;
const O_NOFOLLOW = 0o400000;
const O_CLOEXEC = 0o2000000;
const O_PATH = 0o10000000;

/** The operations on one volume, rooted at its data directory on its own disk (device `dev`). */
export class VolumeFs {
  constructor(
    private readonly root: string,
    private readonly dev: number,
  ) {}

  private checkDir(fd: number, where: string): void {
    const st = fstatSync(fd);
    if (!st.isDirectory() || st.dev !== this.dev) throw new ContentError(400, `'${where}' is not a directory of this volume`);
  }

  /** An O_PATH fd of the directory at parts (made, with its missing parents, when create is set). */
  private openDir(parts: string[], create?: Attrs): number {
    let fd = openSync(this.root, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    try {
      this.checkDir(fd, '/');
      for (const [i, c] of parts.entries()) {
        const here = show(parts.slice(0, i + 1));
        let next: number;
        try {
          next = openSync(at(fd, c), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        } catch (err) {
          const code = (err as NodeJS.ErrnoException).code;
          if (code === 'ENOENT' && create) {
            this.makeDir(fd, c, create);
            next = openSync(at(fd, c), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
          } else if (code === 'ENOENT') throw new ContentError(404, `'${here}' does not exist`);
          else if (code === 'ENOTDIR' || code === 'ELOOP') {
            const link = lstatSync(at(fd, c)).isSymbolicLink();
            throw new ContentError(400, link ? `'${here}' is a symbolic link: the volume API does not follow links` : `'${here}' is not a directory`);
          } else throw err;
        }
        closeSync(fd);
        fd = next;
        this.checkDir(fd, here);
      }
      return fd;
    } catch (err) {
      closeSync(fd);
      throw err;
    }
  }

  private withDir<T>(parts: string[], fn: (fd: number) => T, create?: Attrs): T {
    const fd = this.openDir(parts, create);
    try {
      return fn(fd);
    } finally {
      closeSync(fd);
    }
  }

  /** mkdir of one name in a pinned directory; owner defaults to the parent's. */
  private makeDir(dirFd: number, name: string, a: Attrs): void {
    const parent = fstatSync(dirFd);
    mkdirSync(at(dirFd, name), { mode: 0o700 });
    this.setAttrs(dirFd, name, { uid: a.uid ?? parent.uid, gid: a.gid ?? parent.gid, mode: a.mode ?? 0o755 });
  }

  /** chown/chmod of a name in a pinned directory, through an O_PATH fd of it: never a symlink. */
  private setAttrs(dirFd: number, name: string, a: Attrs): void {
    const fd = openSync(at(dirFd, name), O_PATH | O_NOFOLLOW | O_CLOEXEC);
    try {
      const st = fstatSync(fd);
      if (st.isSymbolicLink()) throw new ContentError(400, `'${name}' is a symbolic link: its owner and mode cannot be set`);
      if (a.uid !== undefined || a.gid !== undefined) chownSync(at(fd), a.uid ?? st.uid, a.gid ?? st.gid);
      if (a.mode !== undefined) chmodSync(at(fd), a.mode);
    } finally {
      closeSync(fd);
    }
  }

  private entry(dirFd: number, name: string, parts: string[]): EntryStat {
    const st = lstatSync(at(dirFd, name));
    return toEntry(st, name, parts, st.isSymbolicLink() ? readlinkSync(at(dirFd, name)) : undefined);
  }

  stat(path: string | undefined): EntryStat {
    const parts = pathParts(path);
    if (!parts.length) return this.withDir([], (fd) => toEntry(fstatSync(fd), '', []));
    return this.withDir(parts.slice(0, -1), (fd) => this.entry(fd, parts[parts.length - 1]!, parts));
  }

  /** The entries below a directory, depth levels deep (1: its children). */
  list(path: string | undefined, depth = 1): EntryStat[] {
    if (!Number.isInteger(depth) || depth < 1 || depth > MAX_DEPTH) throw new ContentError(400, `depth must be an integer from 1 to ${MAX_DEPTH}`);
    const out: EntryStat[] = [];
    const walk = (dirFd: number, parts: string[], level: number) => {
      for (const name of namesIn(dirFd, MAX_LIST - out.length)) {
        const e = this.entry(dirFd, name, [...parts, name]);
        out.push(e);
        if (e.type !== 'directory' || level >= depth) continue;
        let sub: number;
        try {
          sub = openSync(at(dirFd, name), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        } catch {
          continue; // swapped meanwhile: skipped, never followed
        }
        try {
          if (fstatSync(sub).dev === this.dev) walk(sub, [...parts, name], level + 1);
        } finally {
          closeSync(sub);
        }
      }
    };
    const parts = pathParts(path);
    this.withDir(parts, (fd) => walk(fd, parts, 1));
    return out;
  }

  /** mkdir; force: its missing parents too, and an existing directory is fine. */
  mkdir(path: string | undefined, a: Attrs, force: boolean): EntryStat {
    const parts = pathParts(path);
    if (!parts.length) throw new ContentError(409, "'/' exists");
    const name = parts[parts.length - 1]!;
    return this.withDir(
      parts.slice(0, -1),
      (fd) => {
        try {
          this.makeDir(fd, name, a);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
          const st = lstatSync(at(fd, name));
          if (!force || !st.isDirectory()) throw new ContentError(409, `'${show(parts)}' exists`);
        }
        return this.entry(fd, name, parts);
      },
      force ? a : undefined,
    );
  }

  /** Opens a regular file for reading: its size and a stream of exactly that many bytes. */
  read(path: string | undefined): { size: number; stream: ReadStream | undefined } {
    const parts = pathParts(path);
    if (!parts.length) throw new ContentError(400, "'/' is a directory");
    const name = parts[parts.length - 1]!;
    return this.withDir(parts.slice(0, -1), (dirFd) => {
      const fd = this.openFinal(dirFd, name, 0, parts);
      const st = fstatSync(fd);
      if (!st.isFile() || st.dev !== this.dev) {
        closeSync(fd);
        throw new ContentError(400, `'${show(parts)}' is not a regular file`);
      }
      if (st.size === 0) {
        closeSync(fd);
        return { size: 0, stream: undefined };
      }
      return { size: st.size, stream: createReadStream('', { fd, start: 0, end: st.size - 1 }) };
    });
  }

  private openFinal(dirFd: number, name: string, flags: number, parts: string[], mode?: number): number {
    try {
      return openSync(at(dirFd, name), flags | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, mode);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ELOOP') throw new ContentError(400, `'${show(parts)}' is a symbolic link: the volume API does not follow links`);
      if (code === 'ENOENT') throw new ContentError(404, `'${show(parts)}' does not exist`);
      throw err;
    }
  }

  /**
   * Streams a body into a new file next to the target, then renames it over the target:
   * never more than maxBytes (the volume's size), never held in memory, and an interrupted
   * upload leaves the old file as it was. force: missing parent directories are made.
   */
  async write(path: string | undefined, body: Readable, maxBytes: number, a: Attrs, force: boolean): Promise<EntryStat> {
    const parts = pathParts(path);
    if (!parts.length) throw new ContentError(400, "'/' is a directory");
    const name = parts[parts.length - 1]!;
    const dirFd = this.openDir(parts.slice(0, -1), force ? {} : undefined);
    const tmp = `.cubebox-upload-${randomBytes(8).toString('hex')}`;
    try {
      const parent = fstatSync(dirFd);
      const fd = this.openFinal(dirFd, tmp, O_WRONLY | O_CREAT | O_EXCL, parts, 0o600);
      // owner and mode through the new file's own fd: whatever a sandbox does to the name meanwhile
      try {
        fchownSync(fd, a.uid ?? parent.uid, a.gid ?? parent.gid);
        fchmodSync(fd, a.mode ?? 0o644);
      } catch (err) {
        closeSync(fd);
        throw err;
      }
      let n = 0;
      const bound = new Transform({
        transform(chunk: Buffer, _enc, done) {
          n += chunk.length;
          if (n > maxBytes) done(new ContentError(413, `the upload is larger than the volume (${maxBytes} bytes)`));
          else done(null, chunk);
        },
      });
      // the stream owns the fd and closes it however the upload ends
      const out = createWriteStream('', { fd });
      try {
        await pipeline(body, bound, out);
      } finally {
        if (!out.closed) await once(out, 'close');
      }
      renameSync(at(dirFd, tmp), at(dirFd, name)); // replaces a file or a link itself, never what a link points to
      return this.entry(dirFd, name, parts);
    } catch (err) {
      try {
        unlinkSync(at(dirFd, tmp));
      } catch {
        /* not made */
      }
      throw err;
    } finally {
      closeSync(dirFd);
    }
  }

  /** Sets owner and mode of an entry (not of a symlink). */
  setattr(path: string | undefined, a: Attrs): EntryStat {
    const parts = pathParts(path);
    if (!parts.length) throw new ContentError(400, "the volume's root cannot be changed");
    const name = parts[parts.length - 1]!;
    return this.withDir(parts.slice(0, -1), (fd) => {
      try {
        this.setAttrs(fd, name, a);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new ContentError(404, `'${show(parts)}' does not exist`);
        throw err;
      }
      return this.entry(fd, name, parts);
    });
  }

  /** Removes a file, a link (not its target) or a directory with everything in it. */
  remove(path: string | undefined): void {
    const parts = pathParts(path);
    if (!parts.length) throw new ContentError(400, "the volume's root cannot be removed");
    this.withDir(parts.slice(0, -1), (fd) => this.removeAt(fd, parts[parts.length - 1]!, parts, 0));
  }

  private removeAt(dirFd: number, name: string, parts: string[], level: number): void {
    let st: Stats;
    try {
      st = lstatSync(at(dirFd, name));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new ContentError(404, `'${show(parts)}' does not exist`);
      throw err;
    }
    if (!st.isDirectory()) return unlinkSync(at(dirFd, name));
    if (level > 256) throw new ContentError(400, 'directories nested too deep to remove');
    const sub = openSync(at(dirFd, name), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    try {
      this.checkDir(sub, show(parts));
      for (const child of readdirSync(at(sub))) {
        try {
          this.removeAt(sub, child, [...parts, child], level + 1);
        } catch (err) {
          if (!(err instanceof ContentError && err.status === 404)) throw err; // gone meanwhile
        }
      }
    } finally {
      closeSync(sub);
    }
    rmdirSync(at(dirFd, name));
  }
}
