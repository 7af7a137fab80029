// File metadata on a filesystem that keeps no extended attributes: gVisor's file proxy (a 9P
// filesystem inside the sandbox) refuses user.* attributes on the sandbox's root. There the
// metadata of a file is one small JSON file in a store directory on that same root, named for
// the file's real path: it goes with the root into pauses and snapshots and follows envd's own
// moves. An entry names the file it was written for by its inode number and exact modification
// time within one boot, and by that time within 2 s after a new boot (gVisor numbers inodes anew
// at each boot, reuses a number at once, knows no birth time, and its cached times differ from
// the host's by milliseconds): a
// file changed other than through envd (a shell's append or `mv`) loses its metadata rather
// than a file made later at the path showing it. The store is sticky and writable by all but
// listable by root only, like a drop box: each user's entries are theirs (0600), and an entry
// counts only when root or the file's owner wrote it. `getfattr`/`setfattr` inside do not see it.
import { createHash, randomBytes } from 'node:crypto';
import { constants, mkdirSync, chmodSync, lstatSync, readFileSync, statfsSync } from 'node:fs';
import { access, lstat, open, realpath, rename, rm, statfs, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

/** Where the store lives on the sandbox's root. */
export const METADATA_STORE = '/var/lib/envd/metadata';
/** statfs f_type of a 9P filesystem: gVisor's file proxy, which keeps no user.* attributes. */
const V9FS_MAGIC = 0x01021997;
/** What one entry may hold (metadata within METADATA_LIMITS, its path, JSON): more is not ours. */
const MAX_ENTRY = 64 * 1024;

interface Entry {
  path: string;
  /** The boot it was written in, and the file's inode number then. */
  boot: string;
  ino: string;
  mtimeNs: string;
  meta: Record<string, string>;
}

/** How far a file's modification time may be from an entry's: gVisor's cached times and the host's differ by milliseconds. */
const MTIME_SLACK_MS = 2000;

let bootId: string | undefined;
function currentBoot(): string {
  try {
    bootId ??= readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    bootId = '';
  }
  return bootId;
}

interface Place {
  file: string;
  real: string;
  ino: string;
  mtimeNs: string;
  uid: number;
}

function sameFile(e: Entry, at: Place): boolean {
  if (e.boot === currentBoot()) return e.ino === at.ino && e.mtimeNs === at.mtimeNs;
  return Math.abs(Number((BigInt(e.mtimeNs) - BigInt(at.mtimeNs)) / 1_000_000n)) < MTIME_SLACK_MS;
}

/**
 * Makes the store at envd's start when the root keeps no extended attributes (envd is root);
 * returns whether it did. Elsewhere nothing is made and metadata stays in the files' attributes.
 */
export function prepareMetadataStore(dir = METADATA_STORE): boolean {
  if (statfsSync('/').type !== V9FS_MAGIC) return false;
  mkdirSync(dir, { recursive: true, mode: 0o1733 });
  if (!lstatSync(dir).isDirectory()) return false;
  chmodSync(dir, 0o1733); // whatever the umask left
  return true;
}

/** Whether a path is on a filesystem whose metadata lives in the store. */
export async function keepsNoXattrs(p: string): Promise<boolean> {
  const s = await statfs(p).catch(() => undefined);
  return s !== undefined && Number(s.type) === V9FS_MAGIC;
}

export class MetadataStore {
  constructor(private readonly dir = METADATA_STORE) {}

  /** The store of this sandbox, if envd made one (see prepareMetadataStore). */
  static active(dir = METADATA_STORE): MetadataStore | undefined {
    try {
      return lstatSync(dir).isDirectory() ? new MetadataStore(dir) : undefined;
    } catch {
      return undefined;
    }
  }

  private async locate(p: string): Promise<Place> {
    const real = await realpath(p);
    const st = await lstat(real, { bigint: true });
    const file = join(this.dir, createHash('sha256').update(real).digest('hex'));
    return { file, real, ino: String(st.ino), mtimeNs: String(st.mtimeNs), uid: Number(st.uid) };
  }

  private entryFor(at: Place, meta: Record<string, string>): Entry {
    return { path: at.real, boot: currentBoot(), ino: at.ino, mtimeNs: at.mtimeNs, meta };
  }

  /** The file's metadata, undefined when it has none (or the caller may not read the file). */
  async get(p: string): Promise<Record<string, string> | undefined> {
    const at = await this.locate(p);
    await access(at.real, constants.R_OK);
    const e = await this.read(at.file, at.uid);
    if (!e || e.path !== at.real || !sameFile(e, at)) return undefined;
    return Object.keys(e.meta).length ? e.meta : undefined;
  }

  /** Sets exactly this metadata (none: the entry goes). The caller must be able to write the file. */
  async set(p: string, meta: Record<string, string>): Promise<void> {
    const at = await this.locate(p);
    await access(at.real, constants.W_OK);
    if (!Object.keys(meta).length) return rm(at.file, { force: true });
    await this.write(at.file, this.entryFor(at, meta));
  }

  /** Where a file's entry is before a move, to carry it after (undefined: none to carry). */
  async before(p: string): Promise<{ file: string; entry: Entry } | undefined> {
    const at = await this.locate(p);
    const e = await this.read(at.file, at.uid);
    return e && sameFile(e, at) ? { file: at.file, entry: e } : undefined;
  }

  /** Carries an entry to the file's new path (after envd moved it). */
  async moved(from: { file: string; entry: Entry }, p: string): Promise<void> {
    const at = await this.locate(p);
    if (from.entry.boot === currentBoot() && at.ino !== from.entry.ino) return; // copied across devices: a new file
    await this.write(at.file, this.entryFor(at, from.entry.meta));
    await rm(from.file, { force: true });
  }

  private async write(file: string, e: Entry): Promise<void> {
    const tmp = `${file}.${randomBytes(6).toString('hex')}`;
    await writeFile(tmp, JSON.stringify(e), { mode: 0o600, flag: 'wx' });
    await rename(tmp, file).catch(async (err: unknown) => {
      await rm(tmp, { force: true });
      throw err;
    });
  }

  /** An entry, if it is a bounded regular file written by root or by the file's owner. */
  private async read(file: string, ownerUid: number): Promise<Entry | undefined> {
    const fh = await open(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK).catch(() => undefined);
    if (!fh) return undefined;
    try {
      const st = await fh.stat();
      if (!st.isFile() || st.size > MAX_ENTRY || (st.uid !== 0 && st.uid !== ownerUid)) return undefined;
      const buf = Buffer.alloc(st.size);
      const { bytesRead } = await fh.read(buf, 0, st.size, 0);
      const e = JSON.parse(buf.subarray(0, bytesRead).toString('utf8')) as Entry;
      const meta = e?.meta;
      if (
        typeof e.path !== 'string' ||
        typeof e.mtimeNs !== 'string' ||
        !/^\d{1,24}$/.test(e.mtimeNs) ||
        typeof meta !== 'object' ||
        meta === null ||
        Object.values(meta).some((v) => typeof v !== 'string')
      )
        return undefined;
      return e;
    } catch {
      return undefined;
    } finally {
      await fh.close();
    }
  }
}
