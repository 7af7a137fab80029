// The conversion of a layer's members to overlayfs's format. The Planner validates every
// member (nothing may write outside the layer) and classifies OCI whiteouts; rewrite
// re-encodes the members (whiteouts as 0/0 character devices, opaque directories with
// trusted.overlay.opaque=y, only the extended attributes a layer may carry) for GNU tar.
import { invalid } from '../../util/errors.js';
import type { Digests } from './layer-blob.js';
import type { EntryType, TarEntry } from './tar-format.js';
import { parseTar, type ByteReader } from './tar-read.js';
import { END_OF_ARCHIVE, encodeEntry, padding, type NewEntry } from './tar-write.js';

// --- validation and conversion plan -------------------------------------------------------

const WH = '.wh.';
const OPAQUE = '.wh..wh..opq';

/** A member name as path components; refuses anything that would leave the layer. */
function components(name: string, what: string, member: string): string[] {
  if (name.startsWith('/')) throw invalid(`${what}: member '${printable(member)}' has an absolute path`);
  const parts = name.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) throw invalid(`${what}: member '${printable(member)}' contains '..'`);
  return parts;
}

export function printable(s: string): string {
  const t = s.replace(/[^\x20-\x7e]/g, '?');
  return t.length > 200 ? t.slice(0, 200) + '...' : t;
}

export interface Plan {
  synthetic: Set<string>; // directories the layer implies but does not list
  opaque: Set<string>;
  whiteouts: Set<string>; // paths that become 0/0 character devices
  rootEntry: boolean; // the layer lists its root directory
  rootOpaque: boolean;
  firstMtime: number;
  entries: number;
}

type Kind = EntryType;

export class Planner {
  kinds = new Map<string, Kind>();
  explicitDirs = new Set<string>();
  implied = new Set<string>();
  opaqueMarks = new Set<string>();
  whiteoutTargets = new Set<string>();
  rootEntry = false;
  firstMtime = -1;
  entries = 0;

  constructor(private readonly what: string) {}

  private refuse(member: string, why: string): never {
    throw invalid(`${this.what}: member '${printable(member)}' ${why}; refusing the image`);
  }

  /** Walks the parents of a path: each must be a directory of this layer (or become one). */
  private parents(parts: string[], member: string, create: boolean): void {
    for (let i = 1; i < parts.length; i++) {
      const p = parts.slice(0, i).join('/');
      const k = this.kinds.get(p);
      if (k === undefined) {
        if (!create) this.refuse(member, `refers to '${printable(p)}', which this layer does not contain`);
        this.kinds.set(p, 'dir');
        this.implied.add(p);
      } else if (k === 'symlink') {
        this.refuse(member, `goes through the symbolic link '${printable(p)}'`);
      } else if (k !== 'dir') {
        this.refuse(member, `goes through '${printable(p)}', which is not a directory`);
      }
    }
  }

  /** Classifies a member; returns its path, or null when it is not extracted as such. */
  add(e: TarEntry): { path: string; whiteout?: string; opaqueMark?: boolean } | null {
    if (this.firstMtime < 0) this.firstMtime = e.mtime;
    this.entries++;
    const parts = components(e.name, this.what, e.name);
    const path = parts.join('/');
    if (parts.length === 0) {
      if (e.type !== 'dir') this.refuse(e.name, 'names the layer root but is not a directory');
      this.rootEntry = true;
      return { path };
    }
    const base = parts[parts.length - 1]!;
    const metaDir = parts.slice(0, -1).findIndex((p) => p.startsWith(WH));
    if (metaDir >= 0) {
      // Inside AUFS metadata (.wh..wh.plnk and the like): not part of the filesystem.
      if (parts[metaDir]!.startsWith(WH + WH)) return null;
      this.refuse(e.name, 'is inside a whiteout');
    }
    if (base.startsWith(WH)) {
      if (e.type === 'dir' && !base.startsWith(WH + WH)) this.refuse(e.name, 'is a whiteout but a directory');
      if (e.type === 'hardlink') this.refuse(e.name, 'is a whiteout but a hard link');
      this.parents(parts, e.name, true);
      const dir = parts.slice(0, -1).join('/');
      if (base === OPAQUE) {
        this.opaqueMarks.add(dir);
        return { path, opaqueMark: true };
      }
      if (base.startsWith(WH + WH)) return null; // other AUFS metadata
      const target = base.slice(WH.length);
      if (target === '' || target === '.' || target === '..') this.refuse(e.name, 'is a whiteout of nothing');
      const t = dir ? `${dir}/${target}` : target;
      this.whiteoutTargets.add(t);
      return { path, whiteout: t };
    }
    this.parents(parts, e.name, true);
    if (e.type === 'hardlink') {
      const tparts = components(e.linkname, this.what, e.name);
      const target = tparts.join('/');
      if (tparts.length === 0) this.refuse(e.name, 'is a hard link to the layer root');
      this.parents(tparts, e.name, false);
      const k = this.kinds.get(target);
      if (k === undefined) this.refuse(e.name, `is a hard link to '${printable(e.linkname)}', which this layer does not contain (before it)`);
      if (k === 'dir') this.refuse(e.name, `is a hard link to the directory '${printable(e.linkname)}'`);
      if (tparts.some((p) => p.startsWith(WH))) this.refuse(e.name, 'is a hard link to a whiteout');
    }
    this.kinds.set(path, e.type === 'hardlink' ? (this.kinds.get(components(e.linkname, this.what, e.name).join('/')) ?? 'file') : e.type);
    if (e.type === 'dir') this.explicitDirs.add(path);
    return { path };
  }

  plan(): Plan {
    const opaque = new Set<string>();
    let rootOpaque = false;
    for (const d of this.opaqueMarks) {
      if (d === '') rootOpaque = true;
      else if (this.kinds.get(d) === 'dir') opaque.add(d);
    }
    const whiteouts = new Set<string>();
    for (const t of this.whiteoutTargets) {
      const k = this.kinds.get(t);
      // A whiteout hides the name in lower layers only. If this layer has the name too, its
      // entry already hides the lower one; a directory must then not merge with the lower
      // directory either, so it becomes opaque.
      if (k === undefined) whiteouts.add(t);
      else if (k === 'dir') opaque.add(t);
    }
    const synthetic = new Set([...this.implied].filter((d) => !this.explicitDirs.has(d)));
    return { synthetic, opaque, whiteouts, rootEntry: this.rootEntry, rootOpaque, firstMtime: Math.max(0, this.firstMtime), entries: this.entries };
  }
}

// Extended attributes a layer may set. trusted.* belongs to overlayfs (a layer must not
// forge whiteouts, redirects or metacopy), and security labels belong to the host.
function keepXattr(name: string): boolean {
  return name.startsWith('user.') || name === 'security.capability' || name === 'system.posix_acl_access' || name === 'system.posix_acl_default';
}

function carriedRecords(pax: Map<string, Buffer>): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  for (const [k, v] of pax) {
    if (k.startsWith('SCHILY.xattr.')) {
      if (keepXattr(k.slice('SCHILY.xattr.'.length))) out.set(k, v);
    } else if (k.startsWith('LIBARCHIVE.xattr.')) {
      let name: string;
      try {
        name = decodeURIComponent(k.slice('LIBARCHIVE.xattr.'.length));
      } catch {
        continue;
      }
      if (keepXattr(name)) out.set(`SCHILY.xattr.${name}`, Buffer.from(v.toString('latin1'), 'base64'));
    } else if (k.startsWith('SCHILY.acl.') || k === 'RHT.security.selinux' || k.startsWith('GNU.')) {
      // not restored (tar runs without --acls/--selinux); ACLs arrive as xattrs above
    } else {
      out.set(k, v);
    }
  }
  return out;
}

const OPAQUE_XATTR = 'SCHILY.xattr.trusted.overlay.opaque';

export async function* rewrite(
  reader: ByteReader,
  plan: Plan,
  what: string,
  finish: () => Promise<Digests>,
  check: (d: Digests) => void,
): AsyncGenerator<Buffer> {
  const planner = new Planner(what); // re-derives each member's classification identically
  const emitted = new Set<string>();
  const dirEntry = (path: string, mtime: number): Buffer => {
    const pax = new Map<string, Buffer>();
    if (plan.opaque.has(path) || (path === '' && plan.rootOpaque)) pax.set(OPAQUE_XATTR, Buffer.from('y'));
    return encodeEntry({ name: path || '.', type: 'dir', mode: 0o755, uid: 0, gid: 0, size: 0, mtime, pax });
  };
  if (!plan.rootEntry) yield dirEntry('', plan.firstMtime);
  for await (const { entry: e, data } of parseTar(reader)) {
    const r = planner.add(e);
    if (!r) continue;
    const parts = r.path ? r.path.split('/') : [];
    for (let i = 1; i < parts.length; i++) {
      const p = parts.slice(0, i).join('/');
      if (plan.synthetic.has(p) && !emitted.has(p)) {
        emitted.add(p);
        yield dirEntry(p, e.mtime);
      }
    }
    if (r.opaqueMark) continue;
    if (r.whiteout !== undefined) {
      if (plan.whiteouts.has(r.whiteout) && !emitted.has(r.whiteout)) {
        emitted.add(r.whiteout);
        const pax = new Map<string, Buffer>();
        const mt = e.pax.get('mtime');
        if (mt) pax.set('mtime', mt);
        yield encodeEntry({ name: r.whiteout, type: 'char', mode: 0, uid: 0, gid: 0, size: 0, mtime: e.mtime, devmajor: 0, devminor: 0, pax });
      }
      continue;
    }
    const pax = carriedRecords(e.pax);
    const isRoot = r.path === '';
    if (e.type === 'dir' && (plan.opaque.has(r.path) || (isRoot && plan.rootOpaque))) pax.set(OPAQUE_XATTR, Buffer.from('y'));
    const linkname = e.type === 'hardlink' ? components(e.linkname, what, e.name).join('/') : e.type === 'symlink' ? e.linkname : undefined;
    const dataSize = e.type === 'file' ? e.size : 0;
    const out: NewEntry = {
      name: isRoot ? '.' : r.path,
      linkname,
      type: e.type,
      mode: e.mode,
      uid: e.uid,
      gid: e.gid,
      size: dataSize,
      mtime: e.mtime,
      uname: e.uname,
      gname: e.gname,
      devmajor: e.devmajor,
      devminor: e.devminor,
      pax,
    };
    yield encodeEntry(out);
    if (dataSize > 0) {
      yield* data();
      yield padding(dataSize);
    }
  }
  check(await finish());
  yield END_OF_ARCHIVE;
}

/** Fewer, larger writes to tar: headers are 512 bytes each. */
export async function* coalesce(gen: AsyncGenerator<Buffer>, size = 1 << 20): AsyncGenerator<Buffer> {
  let parts: Buffer[] = [];
  let n = 0;
  for await (const b of gen) {
    parts.push(b);
    n += b.length;
    if (n >= size) {
      yield parts.length === 1 ? parts[0]! : Buffer.concat(parts, n);
      parts = [];
      n = 0;
    }
  }
  if (n) yield Buffer.concat(parts, n);
}
