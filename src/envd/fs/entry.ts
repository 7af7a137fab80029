// EntryInfo of a path (contract section 4): lstat-based, so a symlink is reported as a symlink
// with its resolved absolute target.
import { posix } from 'node:path';
import type { MessageInitShape } from '@bufbuild/protobuf';
import { FileType, type EntryInfoSchema } from '../gen/filesystem/filesystem_pb.js';
import type { UserDb } from '../users.js';
import type { FileStat, FsOps, PathEntry } from './ops.js';
import type { UserFs } from './user-fs.js';

export type EntryInit = MessageInitShape<typeof EntryInfoSchema>;

const S_IFMT = 0o170000;
const TYPE_CHAR: Record<number, string> = {
  0o140000: 's',
  0o120000: 'l',
  0o100000: '-',
  0o060000: 'b',
  0o040000: 'd',
  0o020000: 'c',
  0o010000: 'p',
};

/** ls-style permissions, e.g. -rw-r--r--, drwxr-xr-x, -rwsr-xr-x. */
export function permissionString(mode: number): string {
  const t = TYPE_CHAR[mode & S_IFMT] ?? '?';
  const bit = (m: number, c: string) => (mode & m ? c : '-');
  const special = (x: number, s: number, set: string, unset: string) => (mode & s ? (mode & x ? set : unset) : mode & x ? 'x' : '-');
  return (
    t +
    bit(0o400, 'r') +
    bit(0o200, 'w') +
    special(0o100, 0o4000, 's', 'S') +
    bit(0o040, 'r') +
    bit(0o020, 'w') +
    special(0o010, 0o2000, 's', 'S') +
    bit(0o004, 'r') +
    bit(0o002, 'w') +
    special(0o001, 0o1000, 't', 'T')
  );
}

export function fileType(st: FileStat): FileType {
  if (st.isSymbolicLink()) return FileType.SYMLINK;
  if (st.isDirectory()) return FileType.DIRECTORY;
  if (st.isFile()) return FileType.FILE;
  return FileType.UNSPECIFIED;
}

export interface EntryDeps {
  users: UserDb;
  /** Filesystem operations with each user's credentials. */
  fs: UserFs;
}

/** EntryInfo of a path entry (its lstat and, for a symlink, the resolved target). */
export function entryFromStat(e: PathEntry, deps: EntryDeps): EntryInit {
  const { path: p, stat: st } = e;
  const type = fileType(st);
  const entry: EntryInit = {
    name: posix.basename(p) || '/',
    type,
    path: p,
    size: type === FileType.DIRECTORY ? 4096n : st.size,
    mode: Number(st.mode) & 0o777,
    permissions: permissionString(Number(st.mode)),
    owner: deps.users.userName(Number(st.uid)),
    group: deps.users.groupName(Number(st.gid)),
    modifiedTime: { seconds: st.mtimeNs / 1_000_000_000n, nanos: Number(st.mtimeNs % 1_000_000_000n) },
  };
  if (type === FileType.SYMLINK) entry.symlinkTarget = e.target ?? '';
  if (e.metadata) entry.metadata = { ...e.metadata };
  return entry;
}

export async function entryInfo(p: string, fs: FsOps, deps: EntryDeps): Promise<EntryInit> {
  return entryFromStat(await fs.entry(p), deps);
}
