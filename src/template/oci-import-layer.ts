// One image layer -> one read-only layer directory in overlayfs's own format.
//
// Two passes over the blob. The first verifies its digests and reads the whole member list,
// refusing anything that could write outside the layer directory, and plans the conversion
// of OCI whiteouts. The second re-encodes every member (names exactly as validated, whiteouts
// as 0/0 character devices, opaque directories with trusted.overlay.opaque=y, only the
// extended attributes a layer may carry) and feeds the result to GNU tar, which restores
// ownership, modes, times, links, devices and xattrs. The digests are checked again on the
// way, and the directory is renamed into place only when everything succeeded.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import { join } from 'node:path';
import { Duplex, Readable, Transform, addAbortSignal, pipeline } from 'node:stream';
import { pipeline as pipelinePromise } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { CubeboxError, invalid } from '../util/errors.js';
import { ByteReader, END_OF_ARCHIVE, encodeEntry, padding, parseTar, tarError, TarFormatError, type EntryType, type NewEntry, type TarEntry } from './oci-import-tar.js';

/** Where a layer's (possibly compressed) bytes come from. */
export interface BlobSource {
  what: string; // for messages: "layer 2/5 (sha256:ab12...)"
  size: number;
  open(start?: number, end?: number): Readable; // byte range, end inclusive
}

export interface LayerExpect {
  diffId: string; // sha256:<hex> of the uncompressed tar
  digest?: string; // sha256:<hex> of the blob as stored, when the image names it
  size?: number;
}

export interface LayerResult {
  id: string; // directory name under the layers directory
  reused: boolean;
  rootOpaque: boolean; // the layer hides everything below it
  entries?: number;
}

const HEX64 = /^sha256:([0-9a-f]{64})$/;

export function layerIdFor(diffId: string): string {
  const m = HEX64.exec(diffId);
  if (!m) throw invalid(`unsupported layer diff ID '${diffId}' (expected sha256:<64 hex digits>)`);
  return `sha256-${m[1]}`;
}

type Compression = 'gzip' | 'zstd' | 'none';

async function sniff(src: BlobSource): Promise<Compression> {
  if (src.size === 0) return 'none'; // an empty tar stream: a layer without files
  const chunks: Buffer[] = [];
  for await (const c of src.open(0, Math.min(src.size, 512) - 1)) chunks.push(c as Buffer);
  const b = Buffer.concat(chunks);
  if (b[0] === 0x1f && b[1] === 0x8b) return 'gzip';
  if (b.length >= 4 && (b.readUInt32LE(0) === 0xfd2fb528 || (b.readUInt32LE(0) & 0xfffffff0) === 0x184d2a50)) return 'zstd';
  if (b[0] === 0x42 && b[1] === 0x5a && b[2] === 0x68) throw invalid(`${src.what} is bzip2-compressed, which image layers may not be`);
  if (b.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) throw invalid(`${src.what} is xz-compressed, which image layers may not be`);
  return 'none';
}

interface Digests {
  compressed: string;
  compressedSize: number;
  diffId: string;
}

/** The blob's uncompressed bytes, with both digests computed on the way. */
function openLayer(src: BlobSource, compression: Compression, signal?: AbortSignal): { reader: ByteReader; finish: () => Promise<Digests>; destroy: () => void } {
  const hc = createHash('sha256');
  const hu = createHash('sha256');
  let nc = 0;
  const tapC = new Transform({
    transform(chunk: Buffer, _e, cb) {
      hc.update(chunk);
      nc += chunk.length;
      cb(null, chunk);
    },
  });
  const tapU = new Transform({
    transform(chunk: Buffer, _e, cb) {
      hu.update(chunk);
      cb(null, chunk);
    },
  });
  const input = src.open();
  if (signal) addAbortSignal(signal, input);
  let child: ReturnType<typeof spawn> | undefined;
  let childDone: Promise<void> = Promise.resolve();
  const stages: NodeJS.ReadWriteStream[] = [tapC];
  if (compression === 'gzip') stages.push(createGunzip());
  if (compression === 'zstd') {
    const c = spawn('zstd', ['-d', '-c', '-q'], { stdio: ['pipe', 'pipe', 'pipe'], signal });
    child = c;
    let stderr = '';
    c.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-2000)));
    childDone = new Promise((resolve, reject) => {
      c.on('error', (e) => reject(new CubeboxError('unavailable', `cannot run zstd to decompress ${src.what}: ${e.message}`)));
      c.on('close', (code, sig) => {
        if (code === 0) resolve();
        else reject(invalid(`${src.what} is not valid zstd data: ${stderr.trim() || `zstd exit ${code ?? sig}`}`));
      });
    });
    childDone.catch(() => {});
    stages.push(Duplex.from({ writable: c.stdin!, readable: c.stdout! }));
  }
  stages.push(tapU);
  let pipeErr: Error | undefined;
  const done = new Promise<void>((resolve) => {
    const last = (pipeline as unknown as (...a: unknown[]) => NodeJS.ReadableStream)(input, ...stages, (err: Error | null) => {
      if (err) pipeErr = err;
      resolve();
    });
    void last;
  });
  const reader = new ByteReader(tapU as AsyncIterable<Buffer>);
  const finish = async (): Promise<Digests> => {
    await reader.drain();
    await done;
    try {
      await childDone;
    } catch (e) {
      if (!signal?.aborted) throw e;
    }
    if (pipeErr) throw decodeError(src, pipeErr, signal);
    return { compressed: 'sha256:' + hc.digest('hex'), compressedSize: nc, diffId: 'sha256:' + hu.digest('hex') };
  };
  const destroy = (): void => {
    input.destroy();
    tapU.destroy();
    child?.kill('SIGKILL');
  };
  return { reader, finish, destroy };
}

function decodeError(src: BlobSource, err: unknown, signal?: AbortSignal): Error {
  if (signal?.aborted) return abortError(signal);
  if (err instanceof CubeboxError) return err;
  if (err instanceof TarFormatError) return invalid(`${src.what}: ${err.message}`);
  const e = err as NodeJS.ErrnoException;
  if (e?.code?.startsWith?.('Z_')) return invalid(`${src.what} is not valid gzip data: ${e.message}`);
  return err instanceof Error ? err : new Error(String(err));
}

export function abortError(signal: AbortSignal): Error {
  const r: unknown = signal.reason;
  return r instanceof Error ? r : new CubeboxError('unavailable', 'image import aborted');
}

/** Checks the stored blob alone (when its content could not even be read). */
async function verifyBlob(src: BlobSource, expect: LayerExpect): Promise<void> {
  if (!expect.digest && expect.size === undefined) return;
  const h = createHash('sha256');
  let n = 0;
  try {
    for await (const c of src.open()) {
      h.update(c as Buffer);
      n += (c as Buffer).length;
    }
  } catch {
    return;
  }
  checkDigests(src, { ...expect, diffId: '' }, { compressed: 'sha256:' + h.digest('hex'), compressedSize: n, diffId: '' });
}

function checkDigests(src: BlobSource, expect: LayerExpect, got: Digests): void {
  if (expect.size !== undefined && got.compressedSize !== expect.size) {
    throw invalid(`${src.what} is ${got.compressedSize} bytes but the manifest says ${expect.size}: the image is corrupt`);
  }
  if (expect.digest && got.compressed !== expect.digest) {
    throw invalid(`${src.what} does not match its digest: expected ${expect.digest}, got ${got.compressed}: the image is corrupt`);
  }
  if (got.diffId !== expect.diffId) {
    throw invalid(`${src.what} does not match the image config's diff ID: expected ${expect.diffId}, uncompressed content is ${got.diffId}: the image is corrupt`);
  }
}

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

interface Plan {
  synthetic: Set<string>; // directories the layer implies but does not list
  opaque: Set<string>;
  whiteouts: Set<string>; // paths that become 0/0 character devices
  rootEntry: boolean; // the layer lists its root directory
  rootOpaque: boolean;
  firstMtime: number;
  entries: number;
}

type Kind = EntryType;

class Planner {
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

async function* rewrite(reader: ByteReader, plan: Plan, what: string, finish: () => Promise<Digests>, check: (d: Digests) => void): AsyncGenerator<Buffer> {
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
async function* coalesce(gen: AsyncGenerator<Buffer>, size = 1 << 20): AsyncGenerator<Buffer> {
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

// --- extraction ---------------------------------------------------------------------------

async function exists(p: string): Promise<boolean> {
  try {
    await fs.lstat(p);
    return true;
  } catch {
    return false;
  }
}

/** Whether an existing layer directory hides everything below it (its root is opaque). */
async function probeRootOpaque(dir: string): Promise<boolean> {
  const out = await new Promise<Buffer>((resolve, reject) => {
    const c = spawn('tar', ['--xattrs', '--xattrs-include=trusted.overlay.opaque', '--no-recursion', '-c', '-f', '-', '-C', dir, '.'], { stdio: ['ignore', 'pipe', 'ignore'] });
    const chunks: Buffer[] = [];
    c.stdout.on('data', (d: Buffer) => chunks.push(d));
    c.on('error', reject);
    c.on('close', () => resolve(Buffer.concat(chunks)));
  });
  return out.includes('SCHILY.xattr.trusted.overlay.opaque=y');
}

function tarArgs(dir: string): string[] {
  return [
    '-x',
    '-f',
    '-',
    '-C',
    dir,
    '--numeric-owner',
    '--same-owner',
    '--same-permissions',
    '--xattrs',
    '--xattrs-include=*',
    '--delay-directory-restore',
    '--warning=no-unknown-keyword',
    '--warning=no-timestamp',
  ];
}

/**
 * Imports one layer blob into layersDir/sha256-<diffID hex>, or reuses that directory when
 * an earlier import made it. Nothing is left behind on failure.
 */
export async function importLayer(
  src: BlobSource,
  expect: LayerExpect,
  layersDir: string,
  opts: { signal?: AbortSignal; onProgress?: (line: string) => void } = {},
): Promise<LayerResult> {
  const id = layerIdFor(expect.diffId);
  const final = join(layersDir, id);
  if (await exists(final)) return { id, reused: true, rootOpaque: await probeRootOpaque(final) };
  const { signal } = opts;
  if (signal?.aborted) throw abortError(signal);
  const compression = await sniff(src);

  // Pass 1: digests and the member list; nothing is written.
  const planner = new Planner(src.what);
  const first = openLayer(src, compression, signal);
  try {
    try {
      for await (const { entry } of parseTar(first.reader)) planner.add(entry);
      checkDigests(src, expect, await first.finish());
    } catch (err) {
      // A digest mismatch explains a garbled stream better than the garbling does.
      if (!signal?.aborted) await verifyBlob(src, expect);
      throw decodeError(src, tarError(src.what, err), signal);
    }
  } finally {
    first.destroy();
  }
  const plan = planner.plan();

  // Pass 2: extraction into a private temporary directory, renamed into place at the end.
  const tmp = await fs.mkdtemp(join(layersDir, `.tmp-layer-${id.slice(7, 19)}-`));
  let cleanup = (): void => {};
  try {
    await fs.chmod(tmp, 0o755);
    const second = openLayer(src, compression, signal);
    cleanup = second.destroy;
    const gen = coalesce(rewrite(second.reader, plan, src.what, second.finish, (d) => checkDigests(src, expect, d)));
    const tar = spawn('tar', tarArgs(tmp), { stdio: ['pipe', 'ignore', 'pipe'], signal, env: { ...process.env, LC_ALL: 'C.UTF-8' } });
    let stderr = '';
    tar.stderr.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-4000)));
    const exit = new Promise<{ code: number | null; sig: NodeJS.Signals | null }>((resolve, reject) => {
      tar.on('error', (e) => reject(signal?.aborted ? abortError(signal) : new CubeboxError('unavailable', `cannot run tar: ${e.message}`)));
      tar.on('close', (code, sig) => resolve({ code, sig }));
    });
    exit.catch(() => {}); // awaited below, after the input is fed
    let feedErr: unknown;
    await pipelinePromise(Readable.from(gen, { objectMode: false }), tar.stdin).catch((e: unknown) => {
      feedErr = e;
      tar.kill('SIGKILL');
    });
    const { code, sig } = await exit;
    if (signal?.aborted) throw abortError(signal);
    if (feedErr !== undefined && !(feedErr as NodeJS.ErrnoException).code?.startsWith('EPIPE')) throw decodeError(src, feedErr, signal);
    if (code !== 0) throw invalid(`${src.what}: extraction failed: ${stderr.trim().split('\n').slice(-3).join(' ') || `tar exit ${code ?? sig}`}`);
    if (feedErr !== undefined) throw decodeError(src, feedErr, signal);
    try {
      await fs.rename(tmp, final);
    } catch (err) {
      const c = (err as NodeJS.ErrnoException).code;
      if ((c === 'ENOTEMPTY' || c === 'EEXIST') && (await exists(final))) {
        // Another import of the same layer finished first: its directory is as good as ours.
        await fs.rm(tmp, { recursive: true, force: true });
        return { id, reused: true, rootOpaque: plan.rootOpaque, entries: plan.entries };
      }
      throw err;
    }
    return { id, reused: false, rootOpaque: plan.rootOpaque, entries: plan.entries };
  } catch (err) {
    cleanup();
    await fs.rm(tmp, { recursive: true, force: true });
    throw err;
  }
}
