// Connect implementation of filesystem.Filesystem.
import { randomUUID } from 'node:crypto';
import { chown, cp, lstat, mkdir, readdir, realpath, rename, rm, stat, statfs } from 'node:fs/promises';
import type { BigIntStats } from 'node:fs';
import { posix } from 'node:path';
import type { HandlerContext, ServiceImpl } from '@connectrpc/connect';
import { Code, ConnectError } from '@connectrpc/connect';
import type { MessageInitShape } from '@bufbuild/protobuf';
import { Filesystem, type FilesystemEventSchema, type WatchDirResponseSchema } from '../gen/filesystem/filesystem_pb.js';
import { rpcUser } from '../auth.js';
import { resolvePath } from '../paths.js';
import { EventQueue, keepaliveMs } from '../queue.js';
import type { EnvdState } from '../state.js';
import type { UserInfo } from '../users.js';
import { entryFromStat, entryInfo, type EntryDeps, type EntryInit } from './entry.js';
import { DirWatcher, type WatchEvent } from './watcher.js';

type FsEventInit = MessageInitShape<typeof FilesystemEventSchema>;

const MAX_POLLED_EVENTS = 10_000;
const MAX_STREAM_BACKLOG = 100_000;

// statfs f_type of network filesystems, refused by watches unless allowed.
const NETWORK_FS = new Set([0x6969, 0x517b, 0xff534d42, 0xfe534d42, 0x5346414f, 0x73757245, 0x00c36400]);

export function errnoToConnect(e: unknown, path: string): ConnectError {
  if (e instanceof ConnectError) return e;
  const err = e as NodeJS.ErrnoException;
  switch (err.code) {
    case 'ENOENT':
      return new ConnectError(`no such file or directory: ${path}`, Code.NotFound);
    case 'ENOTDIR':
      return new ConnectError(`not a directory: ${path}`, Code.InvalidArgument);
    case 'EISDIR':
      return new ConnectError(`is a directory: ${path}`, Code.InvalidArgument);
    case 'EEXIST':
    case 'ENOTEMPTY':
      return new ConnectError(`already exists: ${path}`, Code.AlreadyExists);
    case 'EACCES':
    case 'EPERM':
      return new ConnectError(`permission denied: ${path}`, Code.PermissionDenied);
    case 'ENOSPC':
      return new ConnectError(`no space left on device: ${path}`, Code.ResourceExhausted);
    case 'EINVAL':
      return new ConnectError(`${err.message}`, Code.InvalidArgument);
    default:
      return new ConnectError(`${err.message ?? String(e)}`, Code.Internal);
  }
}

/** mkdir -p, giving every directory it creates to the user. Returns whether it created any. */
export async function makeDirs(dir: string, user: UserInfo): Promise<boolean> {
  const first = await mkdir(dir, { recursive: true, mode: 0o755 });
  if (first === undefined) return false;
  let p = dir;
  const created: string[] = [];
  while (true) {
    created.push(p);
    if (p === first || p === '/') break;
    p = posix.dirname(p);
  }
  for (const c of created) await chown(c, user.uid, user.gid).catch(() => {});
  return true;
}

function toFsEvent(ev: WatchEvent): FsEventInit {
  return { name: ev.name, type: ev.type, ...(ev.entry ? { entry: ev.entry } : {}) };
}

async function prepareWatch(state: EnvdState, ctx: HandlerContext, path: string, allowNetworkMounts: boolean): Promise<string> {
  const user = rpcUser(state, ctx.requestHeader);
  const p = resolvePath(path, user.home);
  let st;
  try {
    st = await stat(p);
  } catch (e) {
    throw errnoToConnect(e, p);
  }
  if (!st.isDirectory()) throw new ConnectError(`path is not a directory: ${p}`, Code.InvalidArgument);
  if (!allowNetworkMounts) {
    const fsStat = await statfs(p).catch(() => undefined);
    if (fsStat && NETWORK_FS.has(Number(fsStat.type))) {
      throw new ConnectError(`path ${p} is on a network mount: set allowNetworkMounts to watch it`, Code.InvalidArgument);
    }
  }
  return p;
}

export function filesystemService(state: EnvdState, deps: EntryDeps): Partial<ServiceImpl<typeof Filesystem>> {
  const polled = new Map<string, { watcher: DirWatcher; events: FsEventInit[]; error?: Error }>();

  return {
    async stat(req, ctx) {
      const user = rpcUser(state, ctx.requestHeader);
      const p = resolvePath(req.path, user.home);
      try {
        return { entry: await entryInfo(p, deps) };
      } catch (e) {
        throw errnoToConnect(e, p);
      }
    },

    async makeDir(req, ctx) {
      const user = rpcUser(state, ctx.requestHeader);
      const p = resolvePath(req.path, user.home);
      try {
        const st = await stat(p).catch(() => undefined);
        if (st) {
          if (st.isDirectory()) throw new ConnectError(`directory already exists: ${p}`, Code.AlreadyExists);
          throw new ConnectError(`path already exists and is not a directory: ${p}`, Code.InvalidArgument);
        }
        await makeDirs(p, user);
        return { entry: await entryInfo(p, deps) };
      } catch (e) {
        throw errnoToConnect(e, p);
      }
    },

    async move(req, ctx) {
      const user = rpcUser(state, ctx.requestHeader);
      const src = resolvePath(req.source, user.home);
      const dst = resolvePath(req.destination, user.home);
      try {
        await lstat(src);
      } catch (e) {
        throw errnoToConnect(e, src);
      }
      try {
        await makeDirs(posix.dirname(dst), user);
        try {
          await rename(src, dst);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'EXDEV') throw e;
          await cp(src, dst, { recursive: true, preserveTimestamps: true, verbatimSymlinks: true, force: true });
          await rm(src, { recursive: true, force: true });
        }
        return { entry: await entryInfo(dst, deps) };
      } catch (e) {
        throw errnoToConnect(e, dst);
      }
    },

    async listDir(req, ctx) {
      const user = rpcUser(state, ctx.requestHeader);
      const p = resolvePath(req.path, user.home);
      if (req.depth < 1) throw new ConnectError('depth should be at least one', Code.InvalidArgument);
      let root: string;
      try {
        const st = await stat(p);
        if (!st.isDirectory()) throw new ConnectError(`path is not a directory: ${p}`, Code.InvalidArgument);
        // A symlink to a directory lists the directory it points to.
        root = (await lstat(p)).isSymbolicLink() ? await realpath(p) : p;
      } catch (e) {
        throw errnoToConnect(e, p);
      }
      const entries: EntryInit[] = [];
      const walk = async (dir: string, depth: number): Promise<void> => {
        let names: string[];
        try {
          names = await readdir(dir);
        } catch (e) {
          if (dir === root) throw errnoToConnect(e, dir);
          return;
        }
        names.sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
        for (const name of names) {
          const child = posix.join(dir, name);
          let st: BigIntStats;
          try {
            st = await lstat(child, { bigint: true });
          } catch {
            continue;
          }
          entries.push(await entryFromStat(child, st, deps));
          if (st.isDirectory() && depth < req.depth) await walk(child, depth + 1);
        }
      };
      await walk(root, 1);
      return { entries };
    },

    async remove(req, ctx) {
      const user = rpcUser(state, ctx.requestHeader);
      const p = resolvePath(req.path, user.home);
      try {
        await rm(p, { recursive: true, force: true });
      } catch (e) {
        throw errnoToConnect(e, p);
      }
      return {};
    },

    async *watchDir(req, ctx): AsyncGenerator<MessageInitShape<typeof WatchDirResponseSchema>> {
      const p = await prepareWatch(state, ctx, req.path, req.allowNetworkMounts);
      const queue = new EventQueue<FsEventInit | Error>();
      const watcher = new DirWatcher(
        p,
        req.recursive,
        req.includeEntry,
        deps,
        (ev) => {
          // A client that does not keep up with a flood of events loses the watch, not envd.
          if (queue.buffered >= MAX_STREAM_BACKLOG) {
            queue.push(new Error('too many undelivered events'));
            queue.close();
            watcher.close();
            return;
          }
          queue.push(toFsEvent(ev), 1);
        },
        (err) => {
          queue.push(err);
          queue.close();
        },
      );
      try {
        try {
          await watcher.start();
        } catch (e) {
          throw errnoToConnect(e, p);
        }
        yield { event: { case: 'start', value: {} } };
        for await (const ev of queue.iterate(ctx.signal, keepaliveMs(ctx.requestHeader))) {
          if (ev === null) yield { event: { case: 'keepalive', value: {} } };
          else if (ev instanceof Error) throw new ConnectError(`watch failed: ${ev.message}`, Code.Internal);
          else yield { event: { case: 'filesystem', value: ev } };
        }
      } finally {
        watcher.close();
      }
    },

    async createWatcher(req, ctx) {
      const p = await prepareWatch(state, ctx, req.path, req.allowNetworkMounts);
      const id = randomUUID();
      const rec: { watcher: DirWatcher; events: FsEventInit[]; error?: Error } = { watcher: undefined as unknown as DirWatcher, events: [] };
      rec.watcher = new DirWatcher(
        p,
        req.recursive,
        req.includeEntry,
        deps,
        (ev) => {
          if (rec.events.length < MAX_POLLED_EVENTS) rec.events.push(toFsEvent(ev));
        },
        (err) => {
          rec.error = err;
        },
      );
      try {
        await rec.watcher.start();
      } catch (e) {
        rec.watcher.close();
        throw errnoToConnect(e, p);
      }
      polled.set(id, rec);
      return { watcherId: id };
    },

    getWatcherEvents(req) {
      const rec = polled.get(req.watcherId);
      if (!rec) throw new ConnectError(`watcher ${req.watcherId} not found`, Code.NotFound);
      if (rec.error) {
        polled.delete(req.watcherId);
        rec.watcher.close();
        throw new ConnectError(`watch failed: ${rec.error.message}`, Code.Internal);
      }
      const events = rec.events;
      rec.events = [];
      return { events };
    },

    removeWatcher(req) {
      const rec = polled.get(req.watcherId);
      if (!rec) throw new ConnectError(`watcher ${req.watcherId} not found`, Code.NotFound);
      rec.watcher.close();
      polled.delete(req.watcherId);
      return {};
    },
  };
}
