// Connect implementation of filesystem.Filesystem.
import { randomUUID } from 'node:crypto';
import type { HandlerContext, ServiceImpl } from '@connectrpc/connect';
import { Code, ConnectError } from '@connectrpc/connect';
import type { MessageInitShape } from '@bufbuild/protobuf';
import { Filesystem, type FilesystemEventSchema, type WatchDirResponseSchema } from '../gen/filesystem/filesystem_pb.js';
import { rpcUser } from '../rpc-user.js';
import { resolvePath } from '../paths.js';
import { EventQueue, keepaliveMs } from '../queue.js';
import type { EnvdState } from '../state.js';
import { entryFromStat, entryInfo, type EntryDeps } from './entry.js';
import type { FsOps } from './ops.js';
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
    case 'EAGAIN':
      return new ConnectError(`the sandbox reached its process limit (pids limit): ${err.message}`, Code.ResourceExhausted);
    case 'EINVAL':
      return new ConnectError(`${err.message}`, Code.InvalidArgument);
    default:
      return new ConnectError(`${err.message ?? String(e)}`, Code.Internal);
  }
}

function toFsEvent(ev: WatchEvent): FsEventInit {
  return { name: ev.name, type: ev.type, ...(ev.entry ? { entry: ev.entry } : {}) };
}

/** The user's FsOps; a user without them (no worker can start) gets an error, not root's. */
function opsFor(deps: EntryDeps, state: EnvdState, ctx: HandlerContext): FsOps {
  const user = rpcUser(state, ctx.requestHeader);
  try {
    return deps.fs.for(user);
  } catch (e) {
    throw errnoToConnect(e, user.name);
  }
}

async function prepareWatch(
  state: EnvdState,
  deps: EntryDeps,
  ctx: HandlerContext,
  path: string,
  allowNetworkMounts: boolean,
): Promise<{ p: string; fs: FsOps }> {
  const user = rpcUser(state, ctx.requestHeader);
  const fs = opsFor(deps, state, ctx);
  const p = resolvePath(path, user.home);
  let st;
  try {
    st = await fs.stat(p);
    // inotify needs read permission on the directory: check it as the user.
    if (st.isDirectory()) await fs.readdir(p);
  } catch (e) {
    throw errnoToConnect(e, p);
  }
  if (!st.isDirectory()) throw new ConnectError(`path is not a directory: ${p}`, Code.InvalidArgument);
  if (!allowNetworkMounts) {
    const type = await fs.fsType(p);
    if (type !== undefined && NETWORK_FS.has(type)) {
      throw new ConnectError(`path ${p} is on a network mount: set allowNetworkMounts to watch it`, Code.InvalidArgument);
    }
  }
  return { p, fs };
}

export function filesystemService(state: EnvdState, deps: EntryDeps): Partial<ServiceImpl<typeof Filesystem>> {
  const polled = new Map<string, { watcher: DirWatcher; events: FsEventInit[]; error?: Error }>();

  return {
    async stat(req, ctx) {
      const user = rpcUser(state, ctx.requestHeader);
      const fs = opsFor(deps, state, ctx);
      const p = resolvePath(req.path, user.home);
      try {
        return { entry: await entryInfo(p, fs, deps) };
      } catch (e) {
        throw errnoToConnect(e, p);
      }
    },

    async makeDir(req, ctx) {
      const user = rpcUser(state, ctx.requestHeader);
      const fs = opsFor(deps, state, ctx);
      const p = resolvePath(req.path, user.home);
      try {
        const st = await fs.stat(p).catch((e: NodeJS.ErrnoException) => {
          if (e.code === 'ENOENT') return undefined;
          throw e;
        });
        if (st) {
          if (st.isDirectory()) throw new ConnectError(`directory already exists: ${p}`, Code.AlreadyExists);
          throw new ConnectError(`path already exists and is not a directory: ${p}`, Code.InvalidArgument);
        }
        await fs.mkdirp(p);
        return { entry: await entryInfo(p, fs, deps) };
      } catch (e) {
        throw errnoToConnect(e, p);
      }
    },

    async move(req, ctx) {
      const user = rpcUser(state, ctx.requestHeader);
      const fs = opsFor(deps, state, ctx);
      const src = resolvePath(req.source, user.home);
      const dst = resolvePath(req.destination, user.home);
      try {
        await fs.lstat(src);
      } catch (e) {
        throw errnoToConnect(e, src);
      }
      try {
        await fs.move(src, dst);
        return { entry: await entryInfo(dst, fs, deps) };
      } catch (e) {
        throw errnoToConnect(e, dst);
      }
    },

    async listDir(req, ctx) {
      const user = rpcUser(state, ctx.requestHeader);
      const fs = opsFor(deps, state, ctx);
      const p = resolvePath(req.path, user.home);
      if (req.depth < 1) throw new ConnectError('depth should be at least one', Code.InvalidArgument);
      try {
        return { entries: (await fs.list(p, req.depth)).map((e) => entryFromStat(e, deps)) };
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOTDIR') throw new ConnectError(`path is not a directory: ${p}`, Code.InvalidArgument);
        throw errnoToConnect(e, p);
      }
    },

    async remove(req, ctx) {
      const user = rpcUser(state, ctx.requestHeader);
      const fs = opsFor(deps, state, ctx);
      const p = resolvePath(req.path, user.home);
      try {
        await fs.remove(p);
      } catch (e) {
        throw errnoToConnect(e, p);
      }
      return {};
    },

    async *watchDir(req, ctx): AsyncGenerator<MessageInitShape<typeof WatchDirResponseSchema>> {
      const { p, fs } = await prepareWatch(state, deps, ctx, req.path, req.allowNetworkMounts);
      const queue = new EventQueue<FsEventInit | Error>();
      const watcher = new DirWatcher(
        p,
        req.recursive,
        req.includeEntry,
        fs,
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
      const { p, fs } = await prepareWatch(state, deps, ctx, req.path, req.allowNetworkMounts);
      const id = randomUUID();
      const rec: { watcher: DirWatcher; events: FsEventInit[]; error?: Error } = { watcher: undefined as unknown as DirWatcher, events: [] };
      rec.watcher = new DirWatcher(
        p,
        req.recursive,
        req.includeEntry,
        fs,
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
