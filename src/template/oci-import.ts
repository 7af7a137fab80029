// Image import: an OCI image layout, a `docker save` tarball, or a registry reference
// becomes a stack of read-only layer directories that overlayfs can stack as lower layers.
//
// Each layer is extracted once into <layersDir>/sha256-<diffID hex> and shared by every
// template that has it. Whiteouts and opaque directories are converted to overlayfs's own
// format (0/0 character devices, trusted.overlay.opaque=y), so stacking the directories
// gives exactly the image's filesystem. See oci-import-layer.ts for the details.
//
// Finding the image in a layout or docker save tree is in oci/resolve.ts; pulling,
// decompressing and reference parsing in oci/fetch.ts; the tar format in oci/tar-*.ts.
import fs from 'node:fs/promises';
import { join } from 'node:path';
import { invalid } from '../util/errors.js';
import { abortError, importLayer, type LayerResult } from './oci-import-layer.js';
import { DirFiles, TarFiles, type ImageFiles } from './oci-import-source.js';
import { decompressTo, pull, sniffFile, splitRef } from './oci/fetch.js';
import { hostArch, imageConfig, resolveDockerSave, resolveOci, short, type ImageConfig, type ResolvedImage } from './oci/resolve.js';

export type { ImageConfig } from './oci/resolve.js';

export interface ImportedImage {
  layerIds: string[]; // topmost first; directory names under layersDir
  config: ImageConfig;
  digest: string; // the manifest digest (OCI layouts, registries), or the image ID (config digest) of a docker save
}

export interface ImportOptions {
  /** Which image: a tag or `sha256:...` digest in an OCI layout, `repo:tag` in a docker save. */
  ref?: string;
  onProgress?: (line: string) => void;
  signal?: AbortSignal;
  /** Registry pulls only: give up after this long (default: no limit beyond skopeo's own). */
  timeoutMs?: number;
  /** Registry pulls only: skopeo's options for the source (auth file, certificates, TLS). */
  pullArgs?: string[];
}

const PARALLEL_LAYERS = 3;

/**
 * Imports an image. source: an OCI image layout directory (optionally `<dir>:<tag>` or
 * `<dir>@sha256:...`; or select with opts.ref), a `docker save` tarball (or an OCI layout
 * tarball, either optionally gzip/zstd-compressed, or an unpacked docker save directory),
 * or a registry reference `docker://...` (pulled through skopeo into a temporary layout).
 */
export async function importImage(source: string, layersDir: string, opts: ImportOptions = {}): Promise<ImportedImage> {
  const progress = opts.onProgress ?? (() => {});
  const { signal } = opts;
  if (signal?.aborted) throw abortError(signal);
  await fs.mkdir(layersDir, { recursive: true, mode: 0o700 });
  const temps: string[] = [];
  const started = Date.now();
  try {
    let files: ImageFiles;
    let ref = opts.ref;
    if (source.startsWith('docker://')) {
      const dir = await fs.mkdtemp(join(layersDir, '.tmp-pull-'));
      temps.push(dir);
      await pull(source, dir, opts, progress);
      files = new DirFiles(dir, source);
      ref = 'import';
    } else {
      const stripped = source.replace(/^(oci|oci-archive|docker-archive):/, '');
      const split = splitRef(stripped);
      if (split.ref && ref && split.ref !== ref) throw invalid(`image source ${source} names '${split.ref}' but the reference given is '${ref}'`);
      ref = ref ?? split.ref;
      const st = await fs.stat(split.path);
      if (st.isDirectory()) {
        files = new DirFiles(split.path, split.path);
      } else if (st.isFile()) {
        let tarPath = split.path;
        const kind = await sniffFile(split.path);
        if (kind !== 'none') {
          progress(`decompressing ${split.path} (${kind})`);
          const dir = await fs.mkdtemp(join(layersDir, '.tmp-archive-'));
          temps.push(dir);
          tarPath = join(dir, 'image.tar');
          await decompressTo(split.path, tarPath, kind, signal);
        }
        files = new TarFiles(tarPath, split.path);
      } else {
        throw invalid(`image source ${split.path} is neither a directory nor a file`);
      }
    }

    let image: ResolvedImage;
    if (await files.has('manifest.json')) image = await resolveDockerSave(files, ref);
    else if (await files.has('oci-layout')) image = await resolveOci(files, ref, progress);
    else throw invalid(`${files.what} is not an image: it has neither an OCI layout (oci-layout, index.json) nor a docker save manifest.json`);

    const os = image.config.os;
    if (typeof os === 'string' && os !== 'linux') throw invalid(`${files.what}: the image is for ${os}, not linux`);
    const arch = image.config.architecture;
    if (typeof arch === 'string' && arch !== hostArch()) progress(`warning: the image is for ${arch}, this host is ${hostArch()}`);
    const config = imageConfig(image.config, files.what);
    progress(`image ${short(image.digest)}: ${image.layers.length} layer(s)`);

    // A few layers at a time (extraction is bound by file creation more than by CPU). A
    // failure stops further layers from starting; those already running finish, since
    // complete layer directories are good for any later import.
    const n = image.layers.length;
    const results: LayerResult[] = new Array<LayerResult>(n);
    const byDiffId = new Map<string, Promise<LayerResult>>();
    let next = 0;
    let failure: { err: unknown } | undefined;
    const worker = async (): Promise<void> => {
      while (next < n && !failure && !signal?.aborted) {
        const i = next++;
        const l = image.layers[i]!;
        let p = byDiffId.get(l.expect.diffId);
        if (!p) {
          const t0 = Date.now();
          const label = `layer ${i + 1}/${n} ${short(l.expect.diffId)}`;
          p = importLayer(l.src, l.expect, layersDir, { signal, onProgress: progress }).then((r) => {
            progress(
              r.reused && r.entries === undefined
                ? `${label}: already present, shared`
                : `${label}: extracted ${r.entries ?? 0} entries from ${(l.src.size / 1e6).toFixed(1)} MB in ${((Date.now() - t0) / 1000).toFixed(2)}s`,
            );
            return r;
          });
          byDiffId.set(l.expect.diffId, p);
        }
        try {
          results[i] = await p;
        } catch (err) {
          failure ??= { err };
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(PARALLEL_LAYERS, n) }, worker));
    if (signal?.aborted) throw abortError(signal);
    if (failure) throw failure.err;
    // Topmost first. A layer whose root is opaque hides everything below it (overlayfs
    // ignores opacity on a layer's root, so those layers are left out), and a layer that
    // appears twice needs only its topmost occurrence: what it holds is there anyway.
    const layerIds: string[] = [];
    for (const r of [...results].reverse()) {
      if (!layerIds.includes(r.id)) layerIds.push(r.id);
      if (r.rootOpaque) break;
    }
    progress(`imported ${short(image.digest)} in ${((Date.now() - started) / 1000).toFixed(2)}s: ${layerIds.length} layer(s)`);
    return { layerIds, config, digest: image.digest };
  } finally {
    for (const t of temps) await fs.rm(t, { recursive: true, force: true });
  }
}
