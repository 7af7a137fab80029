// Image import: builds small images here (tar + JSON + sha256; one layer made by GNU tar),
// imports them as an OCI layout and as docker save tarballs, stacks the layer directories as
// a read-only overlay and checks that the merged tree is exactly the image's filesystem.
// Also: shared layers, corrupt blobs, path traversal, unreachable registries, aborts.
// Everything it creates (files, mounts) is removed, and that is checked.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { mountsAtOrUnder as mountsUnder } from '../../src/runtime/mountinfo.js';
import { mountRootfs, rootfsLayout, unmountRootfs } from '../../src/runtime/rootfs.js';
import { importImage, type ImportedImage } from '../../src/template/oci-import.js';
import { CubeboxError } from '../../src/util/errors.js';

let root = '';

before(async () => {
  root = await fs.mkdtemp('/var/tmp/cubebox-oci-import-test-');
});

after(async () => {
  if (!root) return;
  for (const m of mountsUnder(root)) spawnSync('umount', [m]);
  assert.deepEqual(mountsUnder(root), [], 'mounts left behind');
  await fs.rm(root, { recursive: true, force: true });
  await assert.rejects(fs.lstat(root), { code: 'ENOENT' });
});

// --- helpers ------------------------------------------------------------------------------

function sh(file: string, args: string[], input?: Buffer): Promise<{ code: number; stdout: Buffer; stderr: string }> {
  return new Promise((resolve, reject) => {
    const c = spawn(file, args, { stdio: [input ? 'pipe' : 'ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let stderr = '';
    c.stdout!.on('data', (d: Buffer) => out.push(d));
    c.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    c.on('error', reject);
    c.on('close', (code) => resolve({ code: code ?? -1, stdout: Buffer.concat(out), stderr }));
    if (input) c.stdin!.end(input);
  });
}

async function shOk(file: string, args: string[], input?: Buffer): Promise<Buffer> {
  const r = await sh(file, args, input);
  assert.equal(r.code, 0, `${file} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

const sha = (b: Buffer | string) => 'sha256:' + createHash('sha256').update(b).digest('hex');
const hex = (d: string) => d.slice(7);

// A minimal tar writer of our own (independent of the importer's), PAX when needed.
interface TE {
  name: string;
  type?: 'file' | 'dir' | 'symlink' | 'hardlink' | 'char' | 'fifo';
  mode?: number;
  uid?: number;
  gid?: number;
  mtime: number;
  data?: string;
  link?: string;
  major?: number;
  minor?: number;
  xattrs?: Record<string, string | Buffer>;
}

const FLAG = { file: '0', hardlink: '1', symlink: '2', char: '3', dir: '5', fifo: '6' };

function block(name: string, flag: string, size: number, e: Partial<TE> & { mtime: number }): Buffer {
  const h = Buffer.alloc(512);
  const oct = (off: number, len: number, v: number) => h.write(v.toString(8).padStart(len - 1, '0') + '\0', off, len, 'latin1');
  h.write(name, 0, 100, 'latin1');
  oct(100, 8, e.mode ?? 0o644);
  oct(108, 8, e.uid ?? 0);
  oct(116, 8, e.gid ?? 0);
  oct(124, 12, size);
  oct(136, 12, e.mtime);
  h.write(flag, 156, 1, 'latin1');
  h.write(e.link ?? '', 157, 100, 'latin1');
  h.write('ustar\u000000', 257, 8, 'latin1');
  oct(329, 8, e.major ?? 0);
  oct(337, 8, e.minor ?? 0);
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8, 'latin1');
  return h;
}

function pad(n: number): Buffer {
  return Buffer.alloc((512 - (n % 512)) % 512);
}

function tarOf(entries: TE[]): Buffer {
  const out: Buffer[] = [];
  for (const e of entries) {
    const type = e.type ?? 'file';
    const data = Buffer.from(e.data ?? '');
    const records: Buffer[] = [];
    const rec = (k: string, v: string | Buffer) => {
      const body = Buffer.concat([Buffer.from(` ${k}=`), Buffer.from(v), Buffer.from('\n')]);
      let len = body.length + 1;
      while (String(len).length + body.length !== len) len = String(len).length + body.length;
      records.push(Buffer.concat([Buffer.from(String(len)), body]));
    };
    if (Buffer.byteLength(e.name) > 99) rec('path', e.name);
    for (const [k, v] of Object.entries(e.xattrs ?? {})) rec(`SCHILY.xattr.${k}`, v);
    if (records.length) {
      const pax = Buffer.concat(records);
      out.push(block('PaxHeader', 'x', pax.length, { mtime: e.mtime }), pax, pad(pax.length));
    }
    out.push(block(e.name.slice(0, 99), FLAG[type], type === 'file' ? data.length : 0, e));
    if (type === 'file') out.push(data, pad(data.length));
  }
  out.push(Buffer.alloc(1024));
  return Buffer.concat(out);
}

interface Layer {
  tar: Buffer; // uncompressed
  blob: Buffer; // as stored in the OCI layout
  mediaType: string;
  diffId: string;
  digest: string;
}

function layer(tar: Buffer, compression: 'gzip' | 'zstd' | 'none'): Layer {
  let blob = tar;
  if (compression === 'gzip') blob = gzipSync(tar);
  if (compression === 'zstd') {
    const r = spawnSync('zstd', ['-q', '-c'], { input: tar, maxBuffer: 1 << 30 });
    assert.equal(r.status, 0, String(r.stderr));
    blob = r.stdout;
  }
  const suffix = compression === 'none' ? '' : `+${compression}`;
  return { tar, blob, mediaType: `application/vnd.oci.image.layer.v1.tar${suffix}`, diffId: sha(tar), digest: sha(blob) };
}

const ARCH = ({ x64: 'amd64', arm64: 'arm64' } as Record<string, string>)[process.arch] ?? process.arch;

const IMAGE_CONFIG = {
  Env: ['PATH=/usr/local/bin:/usr/bin:/bin', 'GREETING=hello=world'],
  User: '1000:1000',
  WorkingDir: '/home/user',
  Cmd: ['/bin/sh', '-c', 'echo hi'],
  Entrypoint: ['/usr/bin/env'],
};

function configFor(layers: Layer[], over: Record<string, unknown> = {}): Buffer {
  return Buffer.from(
    JSON.stringify({
      architecture: ARCH,
      os: 'linux',
      config: IMAGE_CONFIG,
      rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId) },
      history: layers.map(() => ({ created_by: 'test' })),
      ...over,
    }),
  );
}

interface OciImage {
  tag?: string;
  layers: Layer[];
  config?: Buffer;
}

/** Writes an OCI image layout; returns the manifest digests in order. */
async function writeOci(dir: string, images: OciImage[]): Promise<string[]> {
  await fs.mkdir(path.join(dir, 'blobs/sha256'), { recursive: true });
  const put = async (b: Buffer) => {
    const d = sha(b);
    await fs.writeFile(path.join(dir, 'blobs/sha256', hex(d)), b);
    return d;
  };
  const descs = [];
  for (const img of images) {
    const config = img.config ?? configFor(img.layers);
    const configDigest = await put(config);
    for (const l of img.layers) await put(l.blob);
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: configDigest, size: config.length },
        layers: img.layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.blob.length })),
      }),
    );
    const md = await put(manifest);
    descs.push({
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      digest: md,
      size: manifest.length,
      ...(img.tag ? { annotations: { 'org.opencontainers.image.ref.name': img.tag } } : {}),
    });
  }
  await fs.writeFile(path.join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  await fs.writeFile(
    path.join(dir, 'index.json'),
    JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: descs }),
  );
  return descs.map((d) => d.digest);
}

/**
 * Writes a `docker save` tarball. legacy: <id>/layer.tar and <hex>.json (Docker < 25);
 * otherwise blobs/sha256/<hex> with the old names as symbolic links (Docker >= 25).
 */
async function writeDockerSave(file: string, images: { tags: string[]; layers: Layer[] }[], legacy: boolean): Promise<void> {
  const stage = file + '.stage';
  await fs.mkdir(stage);
  const manifest = [];
  const repositories: Record<string, Record<string, string>> = {};
  for (const img of images) {
    const config = configFor(img.layers);
    const cd = sha(config);
    const layerPaths: string[] = [];
    let parent = '';
    for (const l of img.layers) {
      const id = hex(sha(parent + l.diffId));
      parent = id;
      await fs.mkdir(path.join(stage, id), { recursive: true });
      await fs.writeFile(path.join(stage, id, 'VERSION'), '1.0');
      if (legacy) {
        await fs.writeFile(path.join(stage, id, 'layer.tar'), l.tar);
        layerPaths.push(`${id}/layer.tar`);
      } else {
        await fs.mkdir(path.join(stage, 'blobs/sha256'), { recursive: true });
        await fs.writeFile(path.join(stage, 'blobs/sha256', hex(l.diffId)), l.tar);
        await fs.symlink(`../blobs/sha256/${hex(l.diffId)}`, path.join(stage, id, 'layer.tar')).catch(() => {});
        // Docker names the blobs; the first layer goes through the old name's symbolic link.
        layerPaths.push(layerPaths.length === 0 ? `${id}/layer.tar` : `blobs/sha256/${hex(l.diffId)}`);
      }
    }
    if (legacy) {
      await fs.writeFile(path.join(stage, `${hex(cd)}.json`), config);
    } else {
      await fs.writeFile(path.join(stage, 'blobs/sha256', hex(cd)), config);
    }
    manifest.push({ Config: legacy ? `${hex(cd)}.json` : `blobs/sha256/${hex(cd)}`, RepoTags: img.tags, Layers: layerPaths });
    for (const t of img.tags) {
      const [repo, tag] = t.split(':') as [string, string];
      (repositories[repo] ??= {})[tag] = parent;
    }
  }
  await fs.writeFile(path.join(stage, 'manifest.json'), JSON.stringify(manifest));
  await fs.writeFile(path.join(stage, 'repositories'), JSON.stringify(repositories));
  await shOk('tar', ['-c', '-f', file, '--sort=name', '-C', stage, '.']);
  await fs.rm(stage, { recursive: true });
}

// --- the test image -----------------------------------------------------------------------

const T1 = 1700000000;
const T2 = 1700001000;
const T3 = 1700002000;
// vfs_cap_data revision 2, effective, permitted = CAP_NET_RAW (13).
const CAP_NET_RAW = Buffer.from([1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
const LONG = 'a-directory-name-long-enough-that-the-path-does-not-fit-the-hundred-bytes-of-a-plain-ustar-name-field';

function layer1(): Buffer {
  const m = T1;
  return tarOf([
    { name: './', type: 'dir', mode: 0o755, mtime: m },
    { name: 'etc/', type: 'dir', mode: 0o755, mtime: m },
    { name: 'etc/passwd', data: 'root:x:0:0:root:/root:/bin/sh\n', mtime: m },
    { name: 'etc/hostname', data: 'one\n', mtime: m },
    { name: 'bin/', type: 'dir', mode: 0o755, mtime: m },
    { name: 'bin/tool', mode: 0o4755, data: '#!/bin/sh\necho v1\n', mtime: m },
    { name: 'bin/ping', mode: 0o755, data: 'ping\n', mtime: m, xattrs: { 'security.capability': CAP_NET_RAW } },
    { name: 'home/', type: 'dir', mode: 0o755, mtime: m },
    { name: 'home/user/', type: 'dir', mode: 0o700, uid: 1000, gid: 1000, mtime: m },
    { name: 'home/user/.profile', uid: 1000, gid: 1000, data: 'export A=1\n', mtime: m },
    { name: 'data/', type: 'dir', mode: 0o775, gid: 100, mtime: m },
    { name: 'data/a', data: 'a1\n', mtime: m },
    { name: 'data/b', mode: 0o600, uid: 1000, gid: 1000, data: 'b1\n', mtime: m },
    { name: 'data/sub/', type: 'dir', mode: 0o755, mtime: m },
    { name: 'data/sub/c', data: 'c1\n', mtime: m },
    { name: 'dev/', type: 'dir', mode: 0o755, mtime: m },
    { name: 'dev/null', type: 'char', mode: 0o666, major: 1, minor: 3, mtime: m },
    { name: 'dev/fifo', type: 'fifo', mode: 0o644, mtime: m },
    { name: 'opt/', type: 'dir', mode: 0o755, mtime: m },
    { name: 'opt/keep', mode: 0o444, data: 'keep\n', mtime: m },
    { name: 'var/', type: 'dir', mode: 0o755, mtime: m },
    { name: 'var/lib/', type: 'dir', mode: 0o755, mtime: m },
    { name: 'var/lib/state', data: 's\n', mtime: m },
    { name: 'var/old', data: 'old\n', mtime: m },
    { name: 'tmp/', type: 'dir', mode: 0o1777, mtime: m },
  ]);
}

function layer2(): Buffer {
  const m = T2;
  return tarOf([
    { name: 'etc/', type: 'dir', mode: 0o755, mtime: m },
    { name: 'etc/.wh.hostname', mtime: m },
    { name: 'etc/passwd', mode: 0o600, data: 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n', mtime: m },
    { name: 'data/', type: 'dir', mode: 0o755, mtime: m },
    { name: 'data/.wh..wh..opq', mtime: m },
    { name: 'data/new', data: 'new\n', mtime: m },
    { name: 'data/sub/', type: 'dir', mode: 0o700, uid: 1000, gid: 1000, mtime: m },
    { name: 'data/sub/d', data: 'd2\n', mtime: m },
    { name: 'usr/', type: 'dir', mode: 0o755, mtime: m },
    { name: 'usr/bin/', type: 'dir', mode: 0o755, mtime: m },
    { name: 'usr/bin/tool', type: 'symlink', link: '../../bin/tool', mode: 0o777, mtime: m },
    { name: 'usr/bin/abs', type: 'symlink', link: '/bin/tool', mode: 0o777, uid: 1000, gid: 1000, mtime: m },
    // A layer must not forge overlayfs metadata: this would hide opt/keep if it were applied.
    { name: 'opt/', type: 'dir', mode: 0o755, mtime: m, xattrs: { 'trusted.overlay.opaque': 'y' } },
    { name: 'opt/hard1', mode: 0o640, uid: 1000, gid: 1000, data: 'hard\n', mtime: m, xattrs: { 'user.note': 'hello' } },
    { name: 'opt/hard2', type: 'hardlink', link: 'opt/hard1', mtime: m },
  ]);
}

/** Layer 3 is made by GNU tar from a directory (GNU format: long names as 'L' members). */
async function layer3(): Promise<Buffer> {
  const s = path.join(root, 'layer3-stage');
  const w = async (p: string, data: string, mode = 0o644) => {
    await fs.mkdir(path.dirname(path.join(s, p)), { recursive: true });
    await fs.writeFile(path.join(s, p), data);
    await fs.chmod(path.join(s, p), mode);
  };
  await fs.mkdir(s);
  await w('bin/tool', '#!/bin/sh\necho v3\n', 0o755);
  await w('home/user/.wh..profile', '');
  await w('data/.wh.new', '');
  await w('var/.wh.lib', '');
  await w('var/lib/fresh', 'fresh\n');
  await w('etc/.wh.passwd', '');
  await w('etc/passwd', 'final\n');
  await w(`deep/${LONG}/file.txt`, 'deep\n');
  await fs.mkdir(path.join(s, 'srv'));
  await fs.symlink('../opt/hard2', path.join(s, 'srv/link3'));
  await fs.chmod(path.join(s, 'home/user'), 0o700);
  await fs.chown(path.join(s, 'home/user'), 1000, 1000);
  await fs.chmod(s, 0o755);
  await shOk('find', [s, '-exec', 'touch', '-h', '-d', `@${T3}`, '{}', '+']);
  await shOk('tar', ['-c', '-f', path.join(root, 'layer3.tar'), '--format=gnu', '--numeric-owner', '--sort=name', '-C', s, '.']);
  const tar = await fs.readFile(path.join(root, 'layer3.tar'));
  await fs.rm(s, { recursive: true });
  await fs.rm(path.join(root, 'layer3.tar'));
  assert.ok(tar.includes('././@LongLink'), 'layer 3 uses GNU long names');
  return tar;
}

// The image's final filesystem: [path, type, mode, uid, gid, mtime, content|target|rdev].
type Row = [string, string, number, number, number, number, string?];
const EXPECTED: Row[] = [
  ['.', 'dir', 0o755, 0, 0, T3],
  ['bin', 'dir', 0o755, 0, 0, T3],
  ['bin/ping', 'file', 0o755, 0, 0, T1, 'ping\n'],
  ['bin/tool', 'file', 0o755, 0, 0, T3, '#!/bin/sh\necho v3\n'],
  ['data', 'dir', 0o755, 0, 0, T3],
  ['data/sub', 'dir', 0o700, 1000, 1000, T2],
  ['data/sub/d', 'file', 0o644, 0, 0, T2, 'd2\n'],
  ['deep', 'dir', 0o755, 0, 0, T3],
  [`deep/${LONG}`, 'dir', 0o755, 0, 0, T3],
  [`deep/${LONG}/file.txt`, 'file', 0o644, 0, 0, T3, 'deep\n'],
  ['dev', 'dir', 0o755, 0, 0, T1],
  ['dev/fifo', 'fifo', 0o644, 0, 0, T1],
  ['dev/null', 'char', 0o666, 0, 0, T1, '1:3'],
  ['etc', 'dir', 0o755, 0, 0, T3],
  ['etc/passwd', 'file', 0o644, 0, 0, T3, 'final\n'],
  ['home', 'dir', 0o755, 0, 0, T3],
  ['home/user', 'dir', 0o700, 1000, 1000, T3],
  ['opt', 'dir', 0o755, 0, 0, T2],
  ['opt/hard1', 'file', 0o640, 1000, 1000, T2, 'hard\n'],
  ['opt/hard2', 'file', 0o640, 1000, 1000, T2, 'hard\n'],
  ['opt/keep', 'file', 0o444, 0, 0, T1, 'keep\n'],
  ['srv', 'dir', 0o755, 0, 0, T3],
  ['srv/link3', 'symlink', 0o777, 0, 0, T3, '../opt/hard2'],
  ['tmp', 'dir', 0o1777, 0, 0, T1],
  ['usr', 'dir', 0o755, 0, 0, T2],
  ['usr/bin', 'dir', 0o755, 0, 0, T2],
  ['usr/bin/abs', 'symlink', 0o777, 1000, 1000, T2, '/bin/tool'],
  ['usr/bin/tool', 'symlink', 0o777, 0, 0, T2, '../../bin/tool'],
  ['var', 'dir', 0o755, 0, 0, T3],
  ['var/lib', 'dir', 0o755, 0, 0, T3],
  ['var/lib/fresh', 'file', 0o644, 0, 0, T3, 'fresh\n'],
  ['var/old', 'file', 0o644, 0, 0, T1, 'old\n'],
];

async function walk(dir: string, opts: { mtimes?: boolean } = {}): Promise<Row[]> {
  const rows: Row[] = [];
  const visit = async (rel: string): Promise<void> => {
    const full = rel === '.' ? dir : path.join(dir, rel);
    const st = await fs.lstat(full);
    const type = st.isDirectory()
      ? 'dir'
      : st.isFile()
        ? 'file'
        : st.isSymbolicLink()
          ? 'symlink'
          : st.isCharacterDevice()
            ? 'char'
            : st.isFIFO()
              ? 'fifo'
              : st.isBlockDevice()
                ? 'block'
                : 'other';
    let extra: string | undefined;
    if (type === 'file') extra = await fs.readFile(full, 'utf8');
    if (type === 'symlink') extra = await fs.readlink(full);
    if (type === 'char' || type === 'block') extra = `${Math.floor(st.rdev / 256)}:${st.rdev % 256}`;
    rows.push([
      rel,
      type,
      st.mode & 0o7777,
      st.uid,
      st.gid,
      opts.mtimes === false ? 0 : Math.floor(st.mtimeMs / 1000),
      ...(extra !== undefined ? [extra] : []),
    ] as Row);
    if (type === 'dir') for (const n of (await fs.readdir(full)).sort()) await visit(rel === '.' ? n : `${rel}/${n}`);
  };
  await visit('.');
  return rows.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
}

/** Mounts the layers (topmost first) as a read-only overlay, runs fn, and unmounts. */
async function withOverlay<T>(layersDir: string, ids: string[], fn: (merged: string) => Promise<T>): Promise<T> {
  const merged = await fs.mkdtemp(path.join(root, 'merged-'));
  const lower = ids.map((id) => path.join(layersDir, id)).join(':');
  await shOk('mount', ['-t', 'overlay', 'overlay', '-o', `ro,lowerdir=${lower}`, merged]);
  try {
    return await fn(merged);
  } finally {
    await shOk('umount', [merged]);
    assert.deepEqual(mountsUnder(merged), []);
    await fs.rmdir(merged);
  }
}

async function tempsIn(dir: string): Promise<string[]> {
  return (await fs.readdir(dir)).filter((n) => n.startsWith('.tmp'));
}

async function xattrsOf(dir: string, rel: string): Promise<string> {
  const out = await shOk('tar', ['--xattrs', '--xattrs-include=*', '--no-recursion', '-c', '-f', '-', '-C', dir, rel]);
  return out.toString('latin1');
}

const sharedLayers = () => path.join(root, 'layers');

interface TestImages {
  /** The three layers of image v1 (gzip, zstd, uncompressed). */
  L: Layer[];
  /** An OCI layout with v1 and base (v1's first layer alone). */
  ociDir: string;
  /** Manifest digests of v1 and base. */
  ociDigests: string[];
}

let imagesMade: Promise<TestImages> | undefined;

/** The test images (made once, by whichever test needs them first): the OCI layout and docker save tarballs. */
function images(): Promise<TestImages> {
  return (imagesMade ??= (async () => {
    const L = [layer(layer1(), 'gzip'), layer(layer2(), 'zstd'), layer(await layer3(), 'none')];
    const ociDir = path.join(root, 'oci');
    const ociDigests = await writeOci(ociDir, [
      { tag: 'v1', layers: L },
      { tag: 'base', layers: [L[0]!] },
    ]);
    await writeDockerSave(path.join(root, 'legacy.tar'), [{ tags: ['test/image:v1'], layers: L }], true);
    await writeDockerSave(path.join(root, 'current.tar'), [{ tags: ['test/image:v1'], layers: L }], false);
    await writeDockerSave(
      path.join(root, 'two.tar'),
      [
        { tags: ['test/image:v1'], layers: L },
        { tags: ['test/base:latest'], layers: [L[0]!] },
      ],
      true,
    );
    return { L, ociDir, ociDigests };
  })());
}

interface FirstImport {
  img: ImportedImage;
  /** Progress lines of the import. */
  lines: string[];
  ms: number;
  /** The shared layers directory's entries right after the import. */
  entries: string[];
}

let firstMade: Promise<FirstImport> | undefined;

/** v1 imported from the OCI layout into the shared layers directory (once, into an empty directory). */
function firstImport(): Promise<FirstImport> {
  return (firstMade ??= (async () => {
    const { ociDir } = await images();
    const lines: string[] = [];
    const t0 = process.hrtime.bigint();
    const img = await importImage(ociDir, sharedLayers(), { ref: 'v1', onProgress: (l) => lines.push(l) });
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    return { img, lines, ms, entries: (await fs.readdir(sharedLayers())).sort() };
  })());
}

// --- tests --------------------------------------------------------------------------------

test('an OCI layout imports to exactly the final filesystem', async () => {
  const { L, ociDigests } = await images();
  const { img, lines, ms, entries } = await firstImport();
  console.log(`import of the 3-layer test image (OCI layout): ${ms.toFixed(0)} ms`);
  assert.deepEqual(
    img.layerIds,
    [...L].reverse().map((l) => `sha256-${hex(l.diffId)}`),
  );
  assert.equal(img.digest, ociDigests[0]);
  assert.deepEqual(img.config, {
    env: { PATH: '/usr/local/bin:/usr/bin:/bin', GREETING: 'hello=world' },
    user: '1000:1000',
    workdir: '/home/user',
    cmd: ['/bin/sh', '-c', 'echo hi'],
    entrypoint: ['/usr/bin/env'],
  });
  assert.ok(
    lines.some((l) => /layer 3\/3 .*extracted/.test(l)),
    lines.join('\n'),
  );
  assert.deepEqual(entries, [...img.layerIds].sort(), 'only the layer directories remain');

  const [top, mid] = img.layerIds.map((id) => path.join(sharedLayers(), id)) as [string, string, string];
  const wh = await fs.lstat(path.join(mid, 'etc/hostname'));
  assert.ok(wh.isCharacterDevice() && wh.rdev === 0 && wh.uid === 0 && wh.gid === 0, 'whiteout is a 0/0 character device');
  await assert.rejects(fs.lstat(path.join(mid, 'etc/.wh.hostname')), { code: 'ENOENT' });
  await assert.rejects(fs.lstat(path.join(mid, 'data/.wh..wh..opq')), { code: 'ENOENT' });
  assert.match(await xattrsOf(mid, 'data'), /SCHILY\.xattr\.trusted\.overlay\.opaque=y/);
  assert.doesNotMatch(await xattrsOf(mid, 'opt'), /trusted\.overlay/, 'a forged overlay xattr is dropped');
  assert.match(await xattrsOf(top, 'var/lib'), /SCHILY\.xattr\.trusted\.overlay\.opaque=y/, 'whiteout + directory in one layer = opaque');
  await assert.rejects(fs.lstat(path.join(top, 'var/.wh.lib')), { code: 'ENOENT' });
  assert.ok((await fs.lstat(path.join(top, 'home/user/.profile'))).isCharacterDevice());
  assert.ok((await fs.lstat(path.join(top, 'etc/passwd'))).isFile(), 'a file next to its own whiteout stays');
  assert.equal((await fs.stat(path.join(top, 'etc/passwd'))).nlink, 1);

  await withOverlay(sharedLayers(), img.layerIds, async (merged) => {
    assert.deepEqual(await walk(merged), EXPECTED);
    const h1 = await fs.lstat(path.join(merged, 'opt/hard1'));
    const h2 = await fs.lstat(path.join(merged, 'opt/hard2'));
    assert.equal(h1.ino, h2.ino, 'hard link kept');
    assert.equal(h1.nlink, 2);
    assert.match(await xattrsOf(merged, 'opt/hard1'), /SCHILY\.xattr\.user\.note=hello/);
    const caps = await xattrsOf(merged, 'bin/ping');
    assert.ok(caps.includes('SCHILY.xattr.security.capability=' + CAP_NET_RAW.toString('latin1')), 'file capability kept');
    const setuid = await fs.lstat(path.join(sharedLayers(), img.layerIds[2]!, 'bin/tool'));
    assert.equal(setuid.mode & 0o7777, 0o4755, 'setuid bit kept in the lower layer');
  });
});

test("through the runtime's idmapped layer views, a sandbox root sees the same tree", async () => {
  const first = (await firstImport()).img;
  // As src/runtime/rootfs.ts mounts a sandbox: each layer through an idmapped bind mount
  // (image uid 0 -> host HOST), a writable upper layer on top.
  const HOST = 300000;
  const dir = path.join(root, 'sandbox');
  await fs.mkdir(dir); // the manager makes a sandbox's directory before its root
  const layout = rootfsLayout(dir, 'cubebox-ocitest', first.layerIds.length);
  await mountRootfs(
    layout,
    first.layerIds.map((id) => path.join(sharedLayers(), id)),
    { hostId: HOST, size: 65536 },
  );
  try {
    const shifted = EXPECTED.map(([p, t, m, u, g, ...rest]) => [p, t, m, u + HOST, g + HOST, ...rest] as Row);
    const seen = await walk(layout.target);
    // The merged root is the upper layer's own directory (owned by the sandbox's root).
    assert.deepEqual(seen.slice(1), shifted.slice(1));
    assert.deepEqual(seen[0]!.slice(1, 5), ['dir', 0o755, HOST, HOST]);
    // Writes land in the upper layer; whiteouts the sandbox makes leave the layers alone.
    await fs.rm(path.join(layout.target, 'opt/keep'));
    await fs.writeFile(path.join(layout.target, 'data/new'), 'mine\n');
    assert.deepEqual((await fs.readdir(path.join(layout.target, 'opt'))).sort(), ['hard1', 'hard2']);
    assert.equal(await fs.readFile(path.join(layout.target, 'data/new'), 'utf8'), 'mine\n');
    assert.equal(await fs.readFile(path.join(sharedLayers(), first.layerIds[2]!, 'opt/keep'), 'utf8'), 'keep\n');
  } finally {
    await unmountRootfs([layout.target, ...layout.views]);
  }
  assert.deepEqual(mountsUnder(dir), []);
  await fs.rm(dir, { recursive: true });
});

test('umoci, unpacking the same image, gives the same tree', async () => {
  const { L } = await images();
  const first = (await firstImport()).img;
  // umoci 0.4 reads no zstd layers: the same image with the second layer gzip-compressed.
  const gz = path.join(root, 'oci-gzip');
  const same = [L[0]!, layer(L[1]!.tar, 'gzip'), L[2]!];
  await writeOci(gz, [{ tag: 'v1', layers: same }]);
  const img = await importImage(gz, sharedLayers());
  assert.deepEqual(img.layerIds, first.layerIds, 'same diff IDs, same layers');
  const bundle = path.join(root, 'umoci-bundle');
  const r = await sh('umoci', ['unpack', '--image', `${gz}:v1`, bundle]);
  assert.equal(r.code, 0, r.stderr);
  try {
    const theirs = await walk(path.join(bundle, 'rootfs'), { mtimes: false });
    await withOverlay(sharedLayers(), first.layerIds, async (merged) => {
      assert.deepEqual(await walk(merged, { mtimes: false }), theirs);
    });
  } finally {
    await fs.rm(bundle, { recursive: true, force: true });
    await fs.rm(gz, { recursive: true, force: true });
  }
});

test('docker save tarballs (legacy and current layouts) import to the same, shared layers', async () => {
  const { L, ociDir } = await images();
  const first = (await firstImport()).img;
  const inodes = await Promise.all(first.layerIds.map(async (id) => (await fs.stat(path.join(sharedLayers(), id))).ino));
  for (const name of ['legacy.tar', 'current.tar']) {
    const lines: string[] = [];
    const t0 = Date.now();
    const img = await importImage(path.join(root, name), sharedLayers(), { onProgress: (l) => lines.push(l) });
    console.log(`import of ${name} with every layer shared: ${Date.now() - t0} ms`);
    assert.deepEqual(img.layerIds, first.layerIds);
    assert.deepEqual(img.config, first.config);
    assert.equal(img.digest, sha(configFor(L)), 'a docker save image is named by its config digest');
    assert.equal(lines.filter((l) => /already present, shared/.test(l)).length, 3, lines.join('\n'));
    const now = await Promise.all(img.layerIds.map(async (id) => (await fs.stat(path.join(sharedLayers(), id))).ino));
    assert.deepEqual(now, inodes, 'the same directories are reused');
  }
  assert.deepEqual(await tempsIn(sharedLayers()), []);

  // Compressed tarballs, and an OCI layout as a tarball (oci-archive).
  const gz = path.join(root, 'legacy.tar.gz');
  await fs.writeFile(gz, gzipSync(await fs.readFile(path.join(root, 'legacy.tar'))));
  const ociTar = path.join(root, 'oci.tar');
  await shOk('tar', ['-c', '-f', ociTar, '-C', ociDir, '.']);
  for (const [src, ref] of [
    [gz, undefined],
    [ociTar, 'v1'],
  ] as const) {
    const img = await importImage(src, sharedLayers(), { ref });
    assert.deepEqual(img.layerIds, first.layerIds, src);
  }
  await fs.rm(gz);
  await fs.rm(ociTar);
  assert.deepEqual(await tempsIn(sharedLayers()), []);

  // The same tarball imported fresh extracts the uncompressed layers itself.
  const fresh = path.join(root, 'layers-docker');
  const t0 = Date.now();
  const img = await importImage(path.join(root, 'legacy.tar'), fresh);
  console.log(`import of the 3-layer test image (docker save, fresh): ${Date.now() - t0} ms`);
  assert.deepEqual(img.layerIds, first.layerIds);
  await withOverlay(fresh, img.layerIds, async (merged) => assert.deepEqual(await walk(merged), EXPECTED));
  await fs.rm(fresh, { recursive: true });
});

test('choosing an image by tag or digest; ambiguity and unknown names are clear errors', async () => {
  const { L, ociDir, ociDigests } = await images();
  const first = (await firstImport()).img;
  await assert.rejects(
    importImage(ociDir, sharedLayers()),
    (e: unknown) => e instanceof CubeboxError && e.kind === 'invalid_argument' && /contains 2 images.*v1, base/.test(e.message),
  );
  await assert.rejects(
    importImage(ociDir, sharedLayers(), { ref: 'nope' }),
    (e: unknown) => e instanceof CubeboxError && e.kind === 'not_found' && /no image tagged 'nope' \(it has: v1, base\)/.test(e.message),
  );
  const base = await importImage(`${ociDir}:base`, sharedLayers());
  assert.deepEqual(base.layerIds, [`sha256-${hex(L[0]!.diffId)}`]);
  const byDigest = await importImage(`${ociDir}@${ociDigests[0]}`, sharedLayers());
  assert.deepEqual(byDigest.layerIds, first.layerIds);
  const two = path.join(root, 'two.tar');
  await assert.rejects(
    importImage(two, sharedLayers()),
    (e: unknown) => e instanceof CubeboxError && e.kind === 'invalid_argument' && /2 images.*test\/image:v1, test\/base:latest/.test(e.message),
  );
  assert.deepEqual((await importImage(two, sharedLayers(), { ref: 'test/base' })).layerIds, base.layerIds);
  assert.deepEqual((await importImage(two, sharedLayers(), { ref: 'test/image:v1' })).layerIds, first.layerIds);
  // A multi-platform image index: this host's platform is chosen.
  const multi = path.join(root, 'oci-multi');
  await shOk('cp', ['-a', ociDir, multi]);
  const size = async (d: string) => (await fs.stat(path.join(multi, 'blobs/sha256', hex(d)))).size;
  const mt = 'application/vnd.oci.image.manifest.v1+json';
  const other = ARCH === 'arm64' ? 'amd64' : 'arm64';
  const index = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: [
        { mediaType: mt, digest: ociDigests[1], size: await size(ociDigests[1]!), platform: { os: 'linux', architecture: other } },
        { mediaType: mt, digest: ociDigests[0], size: await size(ociDigests[0]!), platform: { os: 'linux', architecture: ARCH } },
      ],
    }),
  );
  await fs.writeFile(path.join(multi, 'blobs/sha256', hex(sha(index))), index);
  await fs.writeFile(
    path.join(multi, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [
        {
          mediaType: 'application/vnd.oci.image.index.v1+json',
          digest: sha(index),
          size: index.length,
          annotations: { 'org.opencontainers.image.ref.name': 'multi' },
        },
      ],
    }),
  );
  const lines: string[] = [];
  const chosen = await importImage(multi, sharedLayers(), { onProgress: (l) => lines.push(l) });
  assert.deepEqual(chosen.layerIds, first.layerIds);
  assert.equal(chosen.digest, ociDigests[0]);
  assert.ok(
    lines.some((l) => l.includes(`using linux/${ARCH} manifest`)),
    lines.join('\n'),
  );
  await fs.rm(multi, { recursive: true });

  await assert.rejects(
    importImage(path.join(root, 'missing'), sharedLayers()),
    (e: unknown) => e instanceof CubeboxError && e.kind === 'invalid_argument' && /does not exist/.test(e.message),
  );
  await assert.rejects(importImage(path.join(root, 'layers'), sharedLayers()), (e: unknown) => e instanceof CubeboxError && /is not an image/.test(e.message));
  assert.deepEqual(await tempsIn(sharedLayers()), []);
});

test('corrupt layers are refused and leave nothing behind', async () => {
  const { L, ociDir } = await images();
  const dir = path.join(root, 'layers-corrupt');
  // A flipped byte in the middle of the second layer's blob.
  const bad = path.join(root, 'oci-corrupt');
  await shOk('cp', ['-a', ociDir, bad]);
  const blob = path.join(bad, 'blobs/sha256', hex(L[1]!.digest));
  const b = await fs.readFile(blob);
  b[b.length >> 1] = b[b.length >> 1]! ^ 0xff;
  await fs.writeFile(blob, b);
  await assert.rejects(importImage(bad, dir, { ref: 'v1' }), (e: unknown) => {
    assert.ok(e instanceof CubeboxError && e.kind === 'invalid_argument', String(e));
    assert.match(e.message, new RegExp(`layer 2/3 \\(${L[1]!.digest}\\) does not match its digest`));
    return true;
  });
  assert.deepEqual(await tempsIn(dir), []);
  // Layers imported alongside it are complete (and kept for later imports); the bad one is not there.
  assert.ok(!(await fs.readdir(dir)).includes(`sha256-${hex(L[1]!.diffId)}`));

  // Blobs intact, but the config's diff ID is not the uncompressed content's.
  const lie = path.join(root, 'oci-lie');
  const wrong = { ...L[2]!, diffId: sha('something else') };
  await writeOci(lie, [{ layers: [L[0]!, L[1]!, L[2]!], config: configFor([L[0]!, L[1]!, wrong]) }]);
  await assert.rejects(
    importImage(lie, dir),
    (e: unknown) => e instanceof CubeboxError && e.kind === 'invalid_argument' && /layer 3\/3 .*does not match the image config's diff ID/.test(e.message),
  );
  assert.deepEqual(await tempsIn(dir), []);
  assert.ok(!(await fs.readdir(dir)).includes(`sha256-${hex(wrong.diffId)}`));

  await fs.rm(dir, { recursive: true });

  // A docker save layer that is not what its config says. (Into an empty directory: a layer
  // directory that exists already was verified when it was made and is used as it is.)
  const save = path.join(root, 'bad-save.tar');
  const swapped = { ...L[1]!, tar: L[2]!.tar };
  await writeDockerSave(save, [{ tags: ['x:y'], layers: [L[0]!, swapped] }], true);
  await assert.rejects(
    importImage(save, dir),
    (e: unknown) => e instanceof CubeboxError && /layer 2\/2 .*does not match the image config's diff ID/.test(e.message),
  );
  assert.deepEqual(await tempsIn(dir), []);
  assert.ok(!(await fs.readdir(dir)).includes(`sha256-${hex(L[1]!.diffId)}`));
  await fs.rm(dir, { recursive: true });
  await fs.rm(bad, { recursive: true });
  await fs.rm(lie, { recursive: true });
  await fs.rm(save);
});

test('members that would write outside the layer are refused', async () => {
  const dir = path.join(root, 'layers-evil');
  const m = T1;
  const cases: [string, TE[], RegExp][] = [
    [
      'dot-dot',
      [
        { name: 'ok', data: 'x', mtime: m },
        { name: '../escape', data: 'pwned', mtime: m },
      ],
      /member '\.\.\/escape' contains '\.\.'/,
    ],
    ['nested dot-dot', [{ name: 'a/../../escape', data: 'pwned', mtime: m }], /contains '\.\.'/],
    ['absolute', [{ name: '/escape', data: 'pwned', mtime: m }], /member '\/escape' has an absolute path/],
    [
      'through a symlink',
      [
        { name: 'link', type: 'symlink', link: path.join(root, 'victim'), mtime: m },
        { name: 'link/escape', data: 'pwned', mtime: m },
      ],
      /member 'link\/escape' goes through the symbolic link 'link'/,
    ],
    [
      'through a relative symlink',
      [
        { name: 'up', type: 'symlink', link: '..', mtime: m },
        { name: 'up/escape', data: 'pwned', mtime: m },
      ],
      /goes through the symbolic link 'up'/,
    ],
    ['hard link out', [{ name: 'h', type: 'hardlink', link: '../../etc/passwd', mtime: m }], /contains '\.\.'/],
    ['hard link to a missing file', [{ name: 'h', type: 'hardlink', link: 'etc/shadow', mtime: m }], /does not contain/],
    ['whiteout of a parent', [{ name: '.wh...', mtime: m }], /whiteout of nothing|contains '\.\.'/],
  ];
  await fs.mkdir(path.join(root, 'victim'));
  for (const [what, entries, re] of cases) {
    const l = layer(tarOf(entries), 'gzip');
    const d = path.join(root, `oci-evil`);
    await writeOci(d, [{ layers: [l] }]);
    await assert.rejects(importImage(d, dir), (e: unknown) => {
      assert.ok(e instanceof CubeboxError && e.kind === 'invalid_argument', `${what}: ${String(e)}`);
      assert.match(e.message, re, what);
      assert.match(e.message, /refusing the image|contains|absolute/, what);
      return true;
    });
    assert.deepEqual(await fs.readdir(dir), [], `${what}: nothing in the layers directory`);
    await fs.rm(d, { recursive: true });
  }
  assert.deepEqual(await fs.readdir(path.join(root, 'victim')), []);
  await assert.rejects(fs.lstat(path.join(root, 'escape')), { code: 'ENOENT' });
  await assert.rejects(fs.lstat('/escape'), { code: 'ENOENT' });
  await fs.rm(path.join(root, 'victim'), { recursive: true });
  await fs.rm(dir, { recursive: true });
});

test('a layer that makes its root opaque hides the layers below it, also when shared', async () => {
  const dir = path.join(root, 'layers-rootopq');
  const a = layer(tarOf([{ name: 'old', data: 'old\n', mtime: T1 }]), 'gzip');
  const b = layer(
    tarOf([
      { name: '.wh..wh..opq', mtime: T2 },
      { name: 'new', data: 'new\n', mtime: T2 },
    ]),
    'gzip',
  );
  const c = layer(tarOf([{ name: 'top', data: 'top\n', mtime: T3 }]), 'gzip');
  const d = path.join(root, 'oci-rootopq');
  await writeOci(d, [{ layers: [a, b, c] }]);
  for (let i = 0; i < 2; i++) {
    const img = await importImage(d, dir);
    assert.deepEqual(
      img.layerIds,
      [c, b].map((l) => `sha256-${hex(l.diffId)}`),
      `import ${i + 1}`,
    );
  }
  const img = await importImage(d, dir);
  await withOverlay(dir, img.layerIds, async (merged) => assert.deepEqual((await fs.readdir(merged)).sort(), ['new', 'top']));
  await fs.rm(d, { recursive: true });

  // A layer listed twice is stacked once, at its topmost place; an empty layer is a layer.
  const empty = layer(Buffer.alloc(0), 'none');
  const twice = path.join(root, 'oci-twice');
  await writeOci(twice, [{ layers: [a, c, a, empty] }]);
  const t = await importImage(twice, dir);
  assert.deepEqual(
    t.layerIds,
    [empty, a, c].map((l) => `sha256-${hex(l.diffId)}`),
  );
  assert.deepEqual(await fs.readdir(path.join(dir, t.layerIds[0]!)), []);
  await withOverlay(dir, t.layerIds, async (merged) => assert.deepEqual((await fs.readdir(merged)).sort(), ['old', 'top']));
  await fs.rm(twice, { recursive: true });
  await fs.rm(dir, { recursive: true });
});

test('concurrent imports of the same image share the layers and collide nowhere', async () => {
  const { ociDir } = await images();
  const first = (await firstImport()).img;
  const dir = path.join(root, 'layers-concurrent');
  const results = await Promise.all([
    importImage(ociDir, dir, { ref: 'v1' }),
    importImage(path.join(root, 'current.tar'), dir),
    importImage(ociDir, dir, { ref: 'v1' }),
  ]);
  for (const r of results) assert.deepEqual(r.layerIds, first.layerIds);
  assert.deepEqual((await fs.readdir(dir)).sort(), [...first.layerIds].sort());
  await withOverlay(dir, first.layerIds, async (merged) => assert.deepEqual(await walk(merged), EXPECTED));
  await fs.rm(dir, { recursive: true });
});

test('an aborted import leaves nothing behind', async () => {
  const dir = path.join(root, 'layers-abort');
  // A layer big enough to be caught mid-way.
  const big = Array.from({ length: 2000 }, (_, i) => ({ name: `f${i}`, data: createHash('sha512').update(String(i)).digest('hex').repeat(64), mtime: T1 }));
  const l = layer(tarOf(big), 'gzip');
  const d = path.join(root, 'oci-big');
  await writeOci(d, [{ layers: [l] }]);
  const ac = new AbortController();
  const p = importImage(d, dir, { signal: ac.signal, onProgress: () => {} });
  setTimeout(() => ac.abort(new Error('stop now')), 30);
  await assert.rejects(p, /stop now/);
  assert.deepEqual(await fs.readdir(dir), []);
  // And uninterrupted, it works.
  const t0 = Date.now();
  const img = await importImage(d, dir);
  console.log(`import of a 2000-file layer (${(l.tar.length / 1e6).toFixed(1)} MB, ${(l.blob.length / 1e6).toFixed(1)} MB gzip): ${Date.now() - t0} ms`);
  assert.equal((await fs.readdir(path.join(dir, img.layerIds[0]!))).length, 2000);
  await fs.rm(d, { recursive: true });
  await fs.rm(dir, { recursive: true });
});

test('an unreachable registry is a clear error, quickly', async () => {
  const dir = path.join(root, 'layers-registry');
  const t0 = Date.now();
  await assert.rejects(importImage('docker://127.0.0.1:1/nothing/here:latest', dir, { timeoutMs: 20_000 }), (e: unknown) => {
    assert.ok(e instanceof CubeboxError, String(e));
    assert.equal(e.kind, 'unavailable');
    assert.match(e.message, /cannot reach registry 127\.0\.0\.1:1/);
    return true;
  });
  assert.ok(Date.now() - t0 < 20_000, `took ${Date.now() - t0} ms`);
  assert.deepEqual(await fs.readdir(dir), []);
  await fs.rm(dir, { recursive: true });
});
