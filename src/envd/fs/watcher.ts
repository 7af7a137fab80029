// Directory watching on top of fs.watch (inotify), one watch per directory when recursive.
// inotify's events reach node only as "rename" or "change", so each batch of events is
// classified against what is known about the entries: a new name (or a new inode) is CREATE, a
// name that vanished is REMOVE, or RENAME when its inode reappears under another name in the
// same batch, "change" is WRITE (or CHMOD when only the mode or owner changed). Directories that
// appear under a recursive watch are watched too, and entries found in them are reported as
// created (they may have been created before the watch was in place).
// inotify itself runs in envd; what the watch reads (listings, stats) is read with the user's
// credentials, and a directory the user cannot list is not watched.
import { watch, type FSWatcher } from 'node:fs';
import { posix } from 'node:path';
import { EventType } from '../gen/filesystem/filesystem_pb.js';
import { entryFromStat, type EntryDeps, type EntryInit } from './entry.js';
import type { FileStat, FsOps } from './ops.js';

export interface WatchEvent {
  name: string;
  type: EventType;
  entry?: EntryInit;
}

interface Known {
  ino: bigint;
  dir: boolean;
  mtimeNs: bigint;
  size: bigint;
  mode: bigint;
  uid: bigint;
  gid: bigint;
}

interface RawEvent {
  dir: string;
  name: string;
  kind: string;
}

const BATCH_MS = 5;

function toKnown(st: FileStat): Known {
  return { ino: st.ino, dir: st.isDirectory(), mtimeNs: st.mtimeNs, size: st.size, mode: st.mode, uid: st.uid, gid: st.gid };
}

function joinRel(dir: string, name: string): string {
  return dir ? `${dir}/${name}` : name;
}

export class DirWatcher {
  private readonly watchers = new Map<string, FSWatcher>();
  private readonly known = new Map<string, Known>();
  private pending: RawEvent[] = [];
  private timer?: NodeJS.Timeout;
  private chain: Promise<void> = Promise.resolve();
  private closed = false;

  constructor(
    readonly root: string,
    readonly recursive: boolean,
    readonly includeEntry: boolean,
    private readonly fs: FsOps,
    private readonly deps: EntryDeps,
    private readonly onEvent: (ev: WatchEvent) => void,
    private readonly onError: (err: Error) => void,
  ) {}

  /** Watch the root (throws if it cannot be watched) and, when recursive, its subdirectories. */
  async start(): Promise<void> {
    await this.addDir('', false, true);
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    for (const w of this.watchers.values()) w.close();
    this.watchers.clear();
    this.known.clear();
  }

  private abs(rel: string): string {
    return rel ? posix.join(this.root, rel) : this.root;
  }

  private async addDir(rel: string, emitCreates: boolean, isRoot = false): Promise<void> {
    if (this.closed || this.watchers.has(rel)) return;
    let w: FSWatcher;
    let readable = false;
    try {
      w = watch(this.abs(rel), { persistent: false }, (kind, filename) => {
        // Nothing of a directory is reported before the user is known to be able to list it.
        if (readable && filename !== null && filename !== undefined) this.raw(rel, kind, String(filename));
      });
    } catch (e) {
      if (isRoot) throw e;
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOSPC') this.onError(new Error('cannot watch more directories (inotify watch limit reached)'));
      return;
    }
    w.on('error', (e) => {
      this.closeDir(rel);
      if (isRoot) this.onError(e);
    });
    this.watchers.set(rel, w);
    // The user must be able to list the directory (inotify_add_watch needs read permission):
    // one the user cannot list is not watched.
    let names: string[];
    try {
      names = await this.fs.readdir(this.abs(rel));
    } catch (e) {
      this.closeDir(rel);
      if (isRoot) throw e;
      return;
    }
    readable = true;
    names.sort();
    for (const name of names) {
      if (this.closed) return;
      const childRel = joinRel(rel, name);
      if (this.known.has(childRel)) continue;
      let st: FileStat;
      try {
        st = await this.fs.lstat(this.abs(childRel));
      } catch {
        continue;
      }
      if (this.known.has(childRel)) continue;
      this.known.set(childRel, toKnown(st));
      if (emitCreates) {
        await this.emit(childRel, EventType.CREATE, st);
        if (st.isFile() && st.size > 0n) await this.emit(childRel, EventType.WRITE, st);
      }
      if (st.isDirectory() && this.recursive) await this.addDir(childRel, emitCreates);
    }
  }

  private closeDir(rel: string): void {
    for (const [r, w] of this.watchers) {
      if (r === rel || r.startsWith(rel + '/')) {
        w.close();
        this.watchers.delete(r);
      }
    }
  }

  private forget(rel: string): void {
    this.known.delete(rel);
    const prefix = rel + '/';
    for (const k of this.known.keys()) if (k.startsWith(prefix)) this.known.delete(k);
    this.closeDir(rel);
  }

  private raw(dir: string, kind: string, name: string): void {
    if (this.closed) return;
    this.pending.push({ dir, name, kind });
    if (!this.timer) {
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.chain = this.chain.then(() => this.flush()).catch((e: Error) => this.onError(e));
      }, BATCH_MS);
    }
  }

  private async emit(rel: string, type: EventType, st?: FileStat): Promise<void> {
    if (this.closed) return;
    const ev: WatchEvent = { name: rel, type };
    if (this.includeEntry && st) {
      try {
        const p = this.abs(rel);
        ev.entry = entryFromStat(await this.fs.entry(p), this.deps); // (with the symlink target or metadata)
      } catch {
        /* vanished */
      }
    }
    this.onEvent(ev);
  }

  private async flush(): Promise<void> {
    const batch = this.pending;
    this.pending = [];
    if (this.closed || batch.length === 0) return;
    const order: string[] = [];
    const kinds = new Map<string, { dir: string; name: string; renames: number; changes: number }>();
    for (const ev of batch) {
      const rel = joinRel(ev.dir, ev.name);
      let k = kinds.get(rel);
      if (!k) {
        k = { dir: ev.dir, name: ev.name, renames: 0, changes: 0 };
        kinds.set(rel, k);
        order.push(rel);
      }
      if (ev.kind === 'change') k.changes++;
      else k.renames++;
    }
    const stats = new Map<string, FileStat | null>();
    for (const rel of order) stats.set(rel, await this.fs.lstat(this.abs(rel)).catch(() => null));
    // Inodes that appeared under a new name in this batch: a vanished name with one was renamed.
    const appeared = new Set<bigint>();
    for (const rel of order) {
      const st = stats.get(rel);
      const k = this.known.get(rel);
      if (st && (!k || k.ino !== st.ino)) appeared.add(st.ino);
    }
    for (const rel of order) {
      if (this.closed) return;
      const st = stats.get(rel) ?? null;
      const k = this.known.get(rel);
      const ev = kinds.get(rel);
      if (!ev) continue;
      if (!st) {
        if (k) {
          this.forget(rel);
          await this.emit(rel, appeared.has(k.ino) ? EventType.RENAME : EventType.REMOVE);
        } else if (ev.dir && ev.name === posix.basename(ev.dir) && !(await this.fs.lstat(this.abs(ev.dir)).catch(() => null))) {
          // The watched directory itself went away; its parent reports that.
          this.closeDir(ev.dir);
        } else if (ev.dir === '' && ev.name === posix.basename(this.root) && !(await this.fs.lstat(this.root).catch(() => null))) {
          /* the watched root itself was removed */
        } else if (ev.renames >= 2) {
          await this.emit(rel, EventType.CREATE);
          await this.emit(rel, EventType.REMOVE);
        } else {
          await this.emit(rel, EventType.REMOVE);
        }
        continue;
      }
      if (!k || k.ino !== st.ino) {
        if (k) this.forget(rel);
        this.known.set(rel, toKnown(st));
        await this.emit(rel, EventType.CREATE, st);
        // Content already there when first seen was written, even if its modify event comes
        // in a later batch (which then compares equal and is not reported as a write again).
        if (st.isFile() && (ev.changes > 0 || st.size > 0n)) await this.emit(rel, EventType.WRITE, st);
        if (st.isDirectory() && this.recursive) await this.addDir(rel, true);
        continue;
      }
      if (ev.changes > 0) {
        const contentChanged = st.mtimeNs !== k.mtimeNs || st.size !== k.size;
        const attrsChanged = st.mode !== k.mode || st.uid !== k.uid || st.gid !== k.gid;
        this.known.set(rel, toKnown(st));
        await this.emit(rel, !contentChanged && attrsChanged ? EventType.CHMOD : EventType.WRITE, st);
      }
    }
  }
}
