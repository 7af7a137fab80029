// A layer directory (overlayfs's format) -> an OCI layer tar, the reverse of layer-rewrite.ts:
// GNU tar reads the directory (owners, modes, times, links, devices, xattrs; sorted, without
// access and change times, so the same directory gives the same bytes), and each member is
// re-encoded: a whiteout (0/0 character device) becomes `.wh.<name>`, an opaque directory
// (trusted.overlay.opaque=y) gets `<dir>/.wh..wh..opq`, and no trusted.* attribute is carried
// (the importer would refuse to restore them anyway). The sha256 and size are taken on the way.
import { createWriteStream } from 'node:fs';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { CubeboxError } from '../../util/errors.js';
import { digestTap } from './layer-blob.js';
import { spawnChild as spawn } from '../../util/exec.js';
import type { TarEntry } from './tar-format.js';
import { ByteReader, parseTar } from './tar-read.js';
import { END_OF_ARCHIVE, encodeEntry, padding } from './tar-write.js';

const OPAQUE_XATTR = 'SCHILY.xattr.trusted.overlay.opaque';

/** Member names relative to the layer root ('' for the root itself). */
const clean = (name: string) => name.replace(/^(\.\/)+/, '').replace(/^\.$/, '');

function carried(pax: Map<string, Buffer>): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  for (const [k, v] of pax) if (!k.startsWith('SCHILY.xattr.trusted.') && k !== 'atime' && k !== 'ctime') out.set(k, v);
  return out;
}

/** The OCI form of a tar stream of an overlayfs layer. */
export async function* toOciLayer(entries: AsyncGenerator<{ entry: TarEntry; data: () => AsyncGenerator<Buffer> }>): AsyncGenerator<Buffer> {
  for await (const { entry: e, data } of entries) {
    const name = clean(e.name);
    const slash = name.lastIndexOf('/');
    const [dir, base] = slash >= 0 ? [name.slice(0, slash + 1), name.slice(slash + 1)] : ['', name];
    if (e.type === 'char' && e.devmajor === 0 && e.devminor === 0 && name !== '') {
      const pax = new Map<string, Buffer>();
      const mt = e.pax.get('mtime');
      if (mt) pax.set('mtime', mt);
      yield encodeEntry({ name: `${dir}.wh.${base}`, type: 'file', mode: 0o644, uid: 0, gid: 0, size: 0, mtime: e.mtime, pax });
      continue;
    }
    const size = e.type === 'file' ? e.size : 0;
    yield encodeEntry({
      name: name === '' ? '.' : e.type === 'dir' ? `${name}/` : name,
      linkname: e.type === 'hardlink' ? clean(e.linkname) : e.type === 'symlink' ? e.linkname : undefined,
      type: e.type,
      mode: e.mode,
      uid: e.uid,
      gid: e.gid,
      size,
      mtime: e.mtime,
      devmajor: e.devmajor,
      devminor: e.devminor,
      pax: carried(e.pax),
    });
    if (size > 0) {
      yield* data();
      yield padding(size);
    }
    // (overlayfs ignores opacity on a layer's root: so does the image)
    if (e.type === 'dir' && name !== '' && e.pax.get(OPAQUE_XATTR)?.toString() === 'y') {
      yield encodeEntry({ name: `${name}/.wh..wh..opq`, type: 'file', mode: 0o644, uid: 0, gid: 0, size: 0, mtime: e.mtime });
    }
  }
  yield END_OF_ARCHIVE;
}

/** Writes the layer directory as an OCI layer tar to `out` (a new file); its digest and size. */
export async function exportLayer(dir: string, out: string, signal?: AbortSignal): Promise<{ digest: string; size: number }> {
  const tar = spawn(
    'tar',
    [
      '-c',
      '-f',
      '-',
      '-C',
      dir,
      '--numeric-owner',
      '--xattrs',
      '--xattrs-include=*',
      '--sort=name',
      '--format=posix',
      '--pax-option=delete=atime,delete=ctime',
      '.',
    ],
    { stdio: ['ignore', 'pipe', 'pipe'], signal, env: { ...process.env, LC_ALL: 'C.UTF-8' } },
  );
  let stderr = '';
  tar.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-4000)));
  const exit = new Promise<number | null>((resolve, reject) => {
    tar.on('error', (e) => reject(new CubeboxError('unavailable', `cannot run tar: ${e.message}`)));
    tar.on('close', (code) => resolve(code));
  });
  exit.catch(() => {});
  const { tap, digest, size } = digestTap();
  const file = createWriteStream(out, { flags: 'wx', mode: 0o600 });
  const reader = new ByteReader(tar.stdout as AsyncIterable<Buffer>);
  try {
    await pipeline(Readable.from(toOciLayer(parseTar(reader))), tap, file);
    // what follows the end-of-archive blocks (tar's record padding) is read too: until its
    // output ends, tar's 'close' never comes
    await reader.drain();
  } catch (err) {
    tar.kill('SIGKILL');
    await exit.catch(() => {});
    throw err;
  }
  const code = await exit;
  if (code !== 0) throw new CubeboxError('internal', `cannot read layer ${dir} with tar: ${stderr.trim().split('\n').slice(-2).join(' ') || `exit ${code}`}`);
  return { digest: digest(), size: size() };
}
