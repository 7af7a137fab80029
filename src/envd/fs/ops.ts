// The filesystem operations envd performs for a request, behind one interface so that they run
// with the credentials of the request's user: in envd itself for root (envd is root), and in a
// worker process running as the user (uid, gid and supplementary groups) for anybody else, so
// the kernel decides what the user may read, write or list (fs/user-fs.ts, fs/worker-main.ts).
// Every method is one round trip to the worker; the results are plain data (FileStat).
import { constants as fsConstants, type BigIntStats } from 'node:fs';
import { cp, lstat, mkdir, open, readdir, readlink, realpath, rename, rm, stat, statfs, type FileHandle } from 'node:fs/promises';
import { posix } from 'node:path';
import { XattrClient } from './metadata.js';
import { keepsNoXattrs, MetadataStore } from './metadata-store.js';

const S_IFMT = 0o170000;

/** The fields of a stat envd uses; serializable (bigints as decimal strings on the wire). */
export class FileStat {
  constructor(
    readonly dev: bigint,
    readonly ino: bigint,
    readonly mode: bigint,
    readonly uid: bigint,
    readonly gid: bigint,
    readonly size: bigint,
    readonly mtimeNs: bigint,
    readonly birthtimeNs: bigint,
  ) {}

  static of(st: BigIntStats): FileStat {
    return new FileStat(st.dev, st.ino, st.mode, st.uid, st.gid, st.size, st.mtimeNs, st.birthtimeNs);
  }

  static fromWire(w: string[]): FileStat {
    const b = w.map((x) => BigInt(x));
    return new FileStat(b[0]!, b[1]!, b[2]!, b[3]!, b[4]!, b[5]!, b[6]!, b[7]!);
  }

  toWire(): string[] {
    return [this.dev, this.ino, this.mode, this.uid, this.gid, this.size, this.mtimeNs, this.birthtimeNs].map(String);
  }

  private type(): number {
    return Number(this.mode) & S_IFMT;
  }
  isFile(): boolean {
    return this.type() === 0o100000;
  }
  isDirectory(): boolean {
    return this.type() === 0o040000;
  }
  isSymbolicLink(): boolean {
    return this.type() === 0o120000;
  }
  get mtime(): Date {
    return new Date(Number(this.mtimeNs / 1_000_000n));
  }
}

/** A path's lstat and, for a symlink, its resolved absolute target; for a file or directory its metadata (fs/metadata.ts). */
export interface PathEntry {
  path: string;
  stat: FileStat;
  target?: string;
  metadata?: Record<string, string>;
}

/** An error as the worker reports it: errno code and message, rebuilt into an Error with `code`. */
export interface WireError {
  code?: string;
  message: string;
}

export function errorFromWire(w: WireError): NodeJS.ErrnoException {
  const e = new Error(w.message) as NodeJS.ErrnoException;
  if (w.code) e.code = w.code;
  return e;
}

export function errorToWire(e: unknown): WireError {
  const err = e as NodeJS.ErrnoException;
  return { code: typeof err?.code === 'string' ? err.code : undefined, message: err?.message ?? String(e) };
}

export interface FsOps {
  /** Whose credentials these operations carry. */
  readonly uid: number;
  lstat(p: string): Promise<FileStat>;
  stat(p: string): Promise<FileStat>;
  /** lstat plus the symlink target. */
  entry(p: string): Promise<PathEntry>;
  readdir(p: string): Promise<string[]>;
  /** Depth-first listing in byte order (ListDir); the root must be a directory (a symlink to one lists its target). */
  list(root: string, depth: number): Promise<PathEntry[]>;
  /** mkdir -p with mode 0755; whether it created anything. */
  mkdirp(p: string): Promise<boolean>;
  /** rename (copy and remove across devices), creating the destination's parents. */
  move(src: string, dst: string): Promise<void>;
  /** rm -rf. */
  remove(p: string): Promise<void>;
  /** statfs f_type, or undefined. */
  fsType(p: string): Promise<number | undefined>;
  /** Open a regular file for reading (EISDIR for a directory, EINVAL for anything else). */
  openRead(p: string): Promise<{ h: number; stat: FileStat }>;
  /** Sets exactly this metadata on a file (the user.e2b.* attributes; never through a symlink at the path). */
  setMetadata(p: string, metadata: Record<string, string>): Promise<void>;
  /** Create or truncate a file (0644), creating its parents (EISDIR when the path is a directory). */
  openWrite(p: string): Promise<{ h: number }>;
  read(h: number, position: number, length: number): Promise<Buffer>;
  write(h: number, data: Buffer): Promise<void>;
  fstat(h: number): Promise<FileStat>;
  close(h: number): Promise<void>;
}

export async function symlinkTarget(p: string): Promise<string> {
  try {
    return await realpath(p);
  } catch {
    // Dangling: resolve the link text against its directory.
    try {
      return posix.resolve(posix.dirname(p), await readlink(p));
    } catch {
      return '';
    }
  }
}

const byBytes = (a: string, b: string) => Buffer.compare(Buffer.from(a), Buffer.from(b));

function errno(code: string, message: string): NodeJS.ErrnoException {
  const e = new Error(message) as NodeJS.ErrnoException;
  e.code = code;
  return e;
}

/** The operations with this process's own credentials. */
export class LocalFs implements FsOps {
  private readonly handles = new Map<number, FileHandle>();
  private readonly xattr: XattrClient;
  /** Where metadata lives on filesystems without extended attributes (metadata-store.ts), if this sandbox has one. */
  private readonly store = MetadataStore.active();
  /** Per device: whether its metadata lives in the store. */
  private readonly storeDevs = new Map<bigint, Promise<boolean>>();

  /** xattrHelper: envd-exec, for file metadata (none: files have no metadata). */
  constructor(
    xattrHelper: string | undefined,
    readonly uid = process.getuid?.() ?? 0,
  ) {
    this.xattr = new XattrClient(xattrHelper);
  }

  /** The store, when the path's filesystem keeps no extended attributes and this sandbox has one. */
  private async storeFor(p: string, dev: bigint): Promise<MetadataStore | undefined> {
    if (!this.store) return undefined;
    let known = this.storeDevs.get(dev);
    if (!known) this.storeDevs.set(dev, (known = keepsNoXattrs(p)));
    return (await known) ? this.store : undefined;
  }

  private async metadataOf(e: PathEntry): Promise<Record<string, string> | undefined> {
    const store = await this.storeFor(e.path, e.stat.dev);
    return store ? store.get(e.path) : this.xattr.get(e.path);
  }

  async lstat(p: string): Promise<FileStat> {
    return FileStat.of(await lstat(p, { bigint: true }));
  }

  async stat(p: string): Promise<FileStat> {
    return FileStat.of(await stat(p, { bigint: true }));
  }

  async entry(p: string): Promise<PathEntry> {
    const [e] = await this.withMetadata([await this.bareEntry(p)]);
    return e!;
  }

  /** lstat and symlink target, without metadata. */
  private async bareEntry(p: string): Promise<PathEntry> {
    const st = await this.lstat(p);
    return st.isSymbolicLink() ? { path: p, stat: st, target: await symlinkTarget(p) } : { path: p, stat: st };
  }

  /**
   * The entries with the metadata of their files and directories, asked for all at once (the
   * helper answers in order). Best effort: an entry that vanished or refuses it (EACCES) has none.
   */
  private async withMetadata(entries: PathEntry[]): Promise<PathEntry[]> {
    const metas = await Promise.all(entries.map((e) => (e.stat.isFile() || e.stat.isDirectory() ? this.metadataOf(e).catch(() => undefined) : undefined)));
    return entries.map((e, i) => (metas[i] ? { ...e, metadata: metas[i] } : e));
  }

  async setMetadata(p: string, metadata: Record<string, string>): Promise<void> {
    // a write through a symlink wrote its target: the metadata is the target's (set without following)
    const real = (await lstat(p)).isSymbolicLink() ? await realpath(p) : p;
    const store = await this.storeFor(real, (await lstat(real, { bigint: true })).dev);
    await (store ? store.set(real, metadata) : this.xattr.set(real, metadata));
  }

  async readdir(p: string): Promise<string[]> {
    return readdir(p);
  }

  async list(p: string, depth: number): Promise<PathEntry[]> {
    const st = await stat(p);
    if (!st.isDirectory()) throw errno('ENOTDIR', `path is not a directory: ${p}`);
    const root = (await lstat(p)).isSymbolicLink() ? await realpath(p) : p;
    const out: PathEntry[] = [];
    const walk = async (dir: string, level: number): Promise<void> => {
      let names: string[];
      try {
        names = await readdir(dir);
      } catch (e) {
        if (dir === root) throw e;
        return;
      }
      names.sort(byBytes);
      for (const name of names) {
        const child = posix.join(dir, name);
        let e: PathEntry;
        try {
          e = await this.bareEntry(child);
        } catch {
          continue;
        }
        out.push(e);
        if (e.stat.isDirectory() && level < depth) await walk(child, level + 1);
      }
    };
    await walk(root, 1);
    return this.withMetadata(out);
  }

  async mkdirp(p: string): Promise<boolean> {
    return (await mkdir(p, { recursive: true, mode: 0o755 })) !== undefined;
  }

  async move(src: string, dst: string): Promise<void> {
    const st = await lstat(src, { bigint: true });
    await this.mkdirp(posix.dirname(dst));
    // metadata in the store follows the file (attributes follow it by themselves)
    const store = st.isFile() || st.isDirectory() ? await this.storeFor(src, st.dev) : undefined;
    const entry = await store?.before(src).catch(() => undefined);
    await this.moveFile(src, dst);
    if (entry) await store!.moved(entry, dst).catch(() => undefined);
  }

  private async moveFile(src: string, dst: string): Promise<void> {
    try {
      await rename(src, dst);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EXDEV') throw e;
      await cp(src, dst, { recursive: true, preserveTimestamps: true, verbatimSymlinks: true, force: true });
      await rm(src, { recursive: true, force: true });
    }
  }

  async remove(p: string): Promise<void> {
    await rm(p, { recursive: true, force: true });
  }

  async fsType(p: string): Promise<number | undefined> {
    const s = await statfs(p).catch(() => undefined);
    return s ? Number(s.type) : undefined;
  }

  private add(fh: FileHandle): number {
    this.handles.set(fh.fd, fh);
    return fh.fd;
  }

  private get(h: number): FileHandle {
    const fh = this.handles.get(h);
    if (!fh) throw errno('EBADF', `no open file ${h}`);
    return fh;
  }

  async openRead(p: string): Promise<{ h: number; stat: FileStat }> {
    // O_NONBLOCK: a FIFO planted at the path must not hang the open; it is refused below.
    const fh = await open(p, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK);
    try {
      const st = FileStat.of(await fh.stat({ bigint: true }));
      if (st.isDirectory()) throw errno('EISDIR', `path is a directory: ${p}`);
      if (!st.isFile()) throw errno('EINVAL', `not a regular file: ${p}`);
      return { h: this.add(fh), stat: st };
    } catch (e) {
      await fh.close().catch(() => {});
      throw e;
    }
  }

  async openWrite(p: string): Promise<{ h: number }> {
    const st = await stat(p).catch(() => undefined);
    if (st?.isDirectory()) throw errno('EISDIR', `path is a directory: ${p}`);
    await this.mkdirp(posix.dirname(p));
    return { h: this.add(await open(p, 'w', 0o644)) };
  }

  async read(h: number, position: number, length: number): Promise<Buffer> {
    const buf = Buffer.allocUnsafe(length);
    const { bytesRead } = await this.get(h).read(buf, 0, length, position);
    return bytesRead === length ? buf : buf.subarray(0, bytesRead);
  }

  async write(h: number, data: Buffer): Promise<void> {
    const fh = this.get(h);
    let off = 0;
    while (off < data.length) off += (await fh.write(data, off, data.length - off)).bytesWritten;
  }

  async fstat(h: number): Promise<FileStat> {
    return FileStat.of(await this.get(h).stat({ bigint: true }));
  }

  async close(h: number): Promise<void> {
    const fh = this.handles.get(h);
    if (!fh) return;
    this.handles.delete(h);
    await fh.close();
  }

  /** Close every open file and the metadata helper (the worker's peer went away, or envd stops). */
  async closeAll(): Promise<void> {
    this.xattr.close();
    for (const h of [...this.handles.keys()]) await this.close(h).catch(() => {});
  }
}
