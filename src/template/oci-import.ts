// Image import: an OCI image layout, a `docker save` tarball, or a registry reference
// becomes a stack of read-only layer directories that overlayfs can stack as lower layers.
//
// Each layer is extracted once into <layersDir>/sha256-<diffID hex> and shared by every
// template that has it. Whiteouts and opaque directories are converted to overlayfs's own
// format (0/0 character devices, trusted.overlay.opaque=y), so stacking the directories
// gives exactly the image's filesystem. See oci-import-layer.ts for the details.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync } from 'node:fs';
import fs from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { CubeboxError, invalid, notFound } from '../util/errors.js';
import { abortError, importLayer, printable, type BlobSource, type LayerExpect, type LayerResult } from './oci-import-layer.js';
import { DirFiles, TarFiles, type ImageFiles } from './oci-import-source.js';

export interface ImageConfig {
  env: Record<string, string>;
  user?: string;
  workdir?: string;
  cmd?: string[];
  entrypoint?: string[];
}

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
}

const JSON_LIMIT = 8 << 20;
const PARALLEL_LAYERS = 3;
const MT = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
};

interface Descriptor {
  mediaType?: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  platform?: { os?: string; architecture?: string; variant?: string };
}

interface LayerPlanItem {
  src: BlobSource;
  expect: LayerExpect;
}

interface ResolvedImage {
  digest: string;
  config: Record<string, unknown>;
  layers: LayerPlanItem[]; // bottom first, as images list them
}

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const sha256 = (b: Buffer) => 'sha256:' + createHash('sha256').update(b).digest('hex');
const short = (d: string) => d.replace(/^sha256:/, '').slice(0, 12);

function parseJson(b: Buffer, what: string): unknown {
  try {
    return JSON.parse(b.toString('utf8'));
  } catch (err) {
    throw invalid(`${what} is not valid JSON: ${(err as Error).message}`);
  }
}

function descriptor(v: unknown, what: string): Descriptor {
  if (!isObj(v) || typeof v.digest !== 'string' || typeof v.size !== 'number') throw invalid(`${what} is not a valid descriptor`);
  if (!/^sha256:[0-9a-f]{64}$/.test(v.digest)) throw invalid(`${what} has an unsupported digest '${printable(v.digest)}' (only sha256 is supported)`);
  return v as unknown as Descriptor;
}

function hostArch(): string {
  const a: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'arm', ia32: '386', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64' };
  return a[process.arch] ?? process.arch;
}

// --- OCI image layouts --------------------------------------------------------------------

async function readBlob(files: ImageFiles, d: Descriptor, what: string): Promise<Buffer> {
  const path = `blobs/sha256/${d.digest.slice(7)}`;
  if (!(await files.has(path))) throw invalid(`${files.what}: ${what} ${d.digest} is missing (no ${path})`);
  const b = await files.read(path, JSON_LIMIT);
  if (b.length !== d.size) throw invalid(`${files.what}: ${what} ${d.digest} is ${b.length} bytes, its descriptor says ${d.size}: the image is corrupt`);
  const got = sha256(b);
  if (got !== d.digest) throw invalid(`${files.what}: ${what} does not match its digest: expected ${d.digest}, got ${got}: the image is corrupt`);
  return b;
}

function refNames(d: Descriptor): string[] {
  const a = d.annotations ?? {};
  return [a['org.opencontainers.image.ref.name'], a['io.containerd.image.name']].filter((x): x is string => !!x);
}

async function resolveOci(files: ImageFiles, ref: string | undefined, progress: (l: string) => void): Promise<ResolvedImage> {
  if (!(await files.has('oci-layout'))) throw invalid(`${files.what} is not an OCI image layout (no oci-layout file)`);
  const layout = parseJson(await files.read('oci-layout', JSON_LIMIT), `${files.what}: oci-layout`);
  if (!isObj(layout) || typeof layout.imageLayoutVersion !== 'string') throw invalid(`${files.what}: oci-layout has no imageLayoutVersion`);
  if (!(await files.has('index.json'))) throw invalid(`${files.what} is not an OCI image layout (no index.json)`);
  const index = parseJson(await files.read('index.json', JSON_LIMIT), `${files.what}: index.json`);
  if (!isObj(index) || !Array.isArray(index.manifests)) throw invalid(`${files.what}: index.json has no manifests`);
  const top = index.manifests.map((m, i) => descriptor(m, `${files.what}: index.json manifest ${i}`));
  if (top.length === 0) throw invalid(`${files.what} contains no image`);

  let chosen: Descriptor | undefined;
  const digestRef = ref?.replace(/^@/, '');
  if (digestRef && /^sha256:[0-9a-f]{64}$/.test(digestRef)) {
    chosen = top.find((d) => d.digest === digestRef);
    if (!chosen) {
      // It may name one platform's manifest inside an index.
      for (const d of top.filter((x) => x.mediaType === MT.ociIndex || x.mediaType === MT.dockerList)) {
        const idx = parseJson(await readBlob(files, d, 'image index'), `${files.what}: image index ${d.digest}`);
        const inner = isObj(idx) && Array.isArray(idx.manifests) ? idx.manifests.map((m, i) => descriptor(m, `image index entry ${i}`)) : [];
        chosen = inner.find((x) => x.digest === digestRef);
        if (chosen) break;
      }
    }
    if (!chosen) throw notFound(`${files.what} has no image with digest ${digestRef}`);
  } else if (ref) {
    const matches = top.filter((d) => refNames(d).includes(ref));
    if (matches.length === 0) {
      const names = [...new Set(top.flatMap(refNames))];
      throw notFound(`${files.what} has no image tagged '${ref}'${names.length ? ` (it has: ${names.join(', ')})` : ' (its images have no tags)'}`);
    }
    if (new Set(matches.map((d) => d.digest)).size > 1) throw invalid(`${files.what} has several images tagged '${ref}'`);
    chosen = matches[0];
  } else {
    if (new Set(top.map((d) => d.digest)).size > 1) {
      const names = top.map((d) => refNames(d)[0] ?? d.digest);
      throw invalid(`${files.what} contains ${top.length} images; choose one by tag or digest: ${names.join(', ')}`);
    }
    chosen = top[0];
  }
  return resolveOciDescriptor(files, chosen!, progress, 0);
}

async function resolveOciDescriptor(files: ImageFiles, d: Descriptor, progress: (l: string) => void, depth: number): Promise<ResolvedImage> {
  if (depth > 2) throw invalid(`${files.what}: image indexes nest too deep`);
  const raw = await readBlob(files, d, 'manifest');
  const doc = parseJson(raw, `${files.what}: manifest ${d.digest}`);
  if (!isObj(doc)) throw invalid(`${files.what}: manifest ${d.digest} is not an object`);
  const mediaType = (typeof doc.mediaType === 'string' ? doc.mediaType : undefined) ?? d.mediaType;
  if (mediaType === MT.ociIndex || mediaType === MT.dockerList || (!mediaType && Array.isArray(doc.manifests))) {
    const entries = (Array.isArray(doc.manifests) ? doc.manifests : []).map((m, i) => descriptor(m, `${files.what}: image index entry ${i}`));
    const arch = hostArch();
    const fits = entries.filter((m) => m.platform?.os === 'linux' && m.platform.architecture === arch);
    const pick = fits[0] ?? (entries.length === 1 && !entries[0]!.platform ? entries[0] : undefined);
    if (!pick) {
      const have = entries.map((m) => (m.platform ? `${m.platform.os}/${m.platform.architecture}` : m.digest)).join(', ');
      throw invalid(`${files.what}: the image has no linux/${arch} variant (it has: ${have || 'nothing'})`);
    }
    progress(`image index ${short(d.digest)}: using linux/${arch} manifest ${short(pick.digest)}`);
    return resolveOciDescriptor(files, pick, progress, depth + 1);
  }
  if (mediaType !== MT.ociManifest && mediaType !== MT.dockerManifest && !(mediaType === undefined && isObj(doc.config))) {
    throw invalid(`${files.what}: unsupported manifest type '${printable(String(mediaType))}'`);
  }
  const configDesc = descriptor(doc.config, `${files.what}: manifest config`);
  const config = parseJson(await readBlob(files, configDesc, 'image config'), `${files.what}: image config`);
  if (!isObj(config)) throw invalid(`${files.what}: image config is not an object`);
  if (!Array.isArray(doc.layers)) throw invalid(`${files.what}: manifest ${d.digest} has no layers list`);
  const descs = doc.layers.map((l, i) => descriptor(l, `${files.what}: layer ${i + 1}`));
  const diffIds = diffIdsOf(config, files.what);
  if (diffIds.length !== descs.length) throw invalid(`${files.what}: the manifest lists ${descs.length} layers but the image config has ${diffIds.length} diff IDs`);
  const layers: LayerPlanItem[] = [];
  for (const [i, l] of descs.entries()) {
    const what = `layer ${i + 1}/${descs.length} (${l.digest})`;
    const path = `blobs/sha256/${l.digest.slice(7)}`;
    if (!(await files.has(path))) {
      const foreign = l.mediaType?.includes('nondistributable') || l.mediaType?.includes('foreign');
      throw invalid(`${files.what}: ${what} is missing from the image${foreign ? ' (a non-distributable layer the image does not carry)' : ''}`);
    }
    layers.push({ src: await files.blob(path, what), expect: { diffId: diffIds[i]!, digest: l.digest, size: l.size } });
  }
  return { digest: d.digest, config, layers };
}

function diffIdsOf(config: Record<string, unknown>, what: string): string[] {
  const rootfs = config.rootfs;
  if (!isObj(rootfs) || !Array.isArray(rootfs.diff_ids)) throw invalid(`${what}: image config has no rootfs.diff_ids`);
  return rootfs.diff_ids.map((d, i) => {
    if (typeof d !== 'string' || !/^sha256:[0-9a-f]{64}$/.test(d)) throw invalid(`${what}: image config diff ID ${i + 1} is not a sha256 digest`);
    return d;
  });
}

// --- docker save --------------------------------------------------------------------------

function tagMatches(repoTag: string, ref: string): boolean {
  const norm = (s: string) => {
    let r = s.replace(/^docker\.io\//, '').replace(/^library\//, '');
    if (!/:[^/]+$/.test(r)) r += ':latest';
    return r;
  };
  return repoTag === ref || norm(repoTag) === norm(ref);
}

async function resolveDockerSave(files: ImageFiles, ref: string | undefined): Promise<ResolvedImage> {
  const manifest = parseJson(await files.read('manifest.json', JSON_LIMIT), `${files.what}: manifest.json`);
  if (!Array.isArray(manifest) || manifest.length === 0) throw invalid(`${files.what}: manifest.json lists no image`);
  const images = manifest.map((m, i) => {
    if (!isObj(m) || typeof m.Config !== 'string' || !Array.isArray(m.Layers) || !m.Layers.every((l) => typeof l === 'string')) {
      throw invalid(`${files.what}: manifest.json entry ${i + 1} is malformed`);
    }
    const tags = Array.isArray(m.RepoTags) ? m.RepoTags.filter((t): t is string => typeof t === 'string') : [];
    return { config: m.Config, layers: m.Layers as string[], tags };
  });
  let img: (typeof images)[number] | undefined;
  if (ref) {
    const matches = images.filter((m) => m.tags.some((t) => tagMatches(t, ref)));
    if (matches.length === 0) {
      const all = images.flatMap((m) => m.tags);
      throw notFound(`${files.what} has no image tagged '${ref}'${all.length ? ` (it has: ${all.join(', ')})` : ' (its images have no tags)'}`);
    }
    if (matches.length > 1) throw invalid(`${files.what} has several images tagged '${ref}'`);
    img = matches[0];
  } else if (images.length > 1) {
    const names = images.map((m) => m.tags[0] ?? `untagged image ${m.config}`);
    throw invalid(`${files.what} contains ${images.length} images; choose one by repo:tag: ${names.join(', ')}`);
  } else {
    img = images[0];
  }
  const raw = await files.read(img!.config, JSON_LIMIT);
  const digest = sha256(raw);
  const named = /(?:^|\/)([0-9a-f]{64})(?:\.json)?$/.exec(img!.config);
  if (named && `sha256:${named[1]}` !== digest) throw invalid(`${files.what}: image config ${img!.config} does not match its digest (got ${digest}): the image is corrupt`);
  const config = parseJson(raw, `${files.what}: image config`);
  if (!isObj(config)) throw invalid(`${files.what}: image config is not an object`);
  const diffIds = diffIdsOf(config, files.what);
  if (diffIds.length !== img!.layers.length) throw invalid(`${files.what}: manifest.json lists ${img!.layers.length} layers but the image config has ${diffIds.length} diff IDs`);
  const layers: LayerPlanItem[] = [];
  for (const [i, path] of img!.layers.entries()) {
    const what = `layer ${i + 1}/${img!.layers.length} (${path})`;
    const blob = /^blobs\/sha256\/([0-9a-f]{64})$/.exec(path);
    layers.push({ src: await files.blob(path, what), expect: { diffId: diffIds[i]!, digest: blob ? `sha256:${blob[1]}` : undefined } });
  }
  return { digest, config, layers };
}

// --- registries ---------------------------------------------------------------------------

function registryHost(ref: string): string {
  const name = ref.replace(/^docker:\/\//, '').replace(/^\/+/, '');
  const first = name.split('/')[0] ?? '';
  return name.includes('/') && (first.includes('.') || first.includes(':') || first === 'localhost') ? first : 'docker.io';
}

async function pull(source: string, dir: string, opts: ImportOptions, progress: (l: string) => void): Promise<void> {
  const args: string[] = [];
  if (!existsSync('/etc/containers/policy.json')) args.push('--insecure-policy');
  if (opts.timeoutMs) args.push('--command-timeout', `${Math.ceil(opts.timeoutMs / 1000)}s`);
  args.push('copy', '--retry-times', '0', source, `oci:${dir}:import`);
  const host = registryHost(source);
  progress(`pulling ${source} with skopeo`);
  const r = await new Promise<{ code: number | null; stderr: string; spawnErr?: Error }>((resolve) => {
    const c = spawn('skopeo', args, { stdio: ['ignore', 'pipe', 'pipe'], signal: opts.signal });
    let stderr = '';
    let partial = '';
    c.stdout.setEncoding('utf8').on('data', (d: string) => {
      const lines = (partial + d).split('\n');
      partial = lines.pop() ?? '';
      for (const l of lines) if (l.trim()) progress(l.trim());
    });
    c.stderr.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-8000)));
    c.on('error', (e) => resolve({ code: null, stderr, spawnErr: e }));
    c.on('close', (code) => resolve({ code, stderr }));
  });
  if (opts.signal?.aborted) throw abortError(opts.signal);
  if (r.spawnErr) throw new CubeboxError('unavailable', `cannot run skopeo to pull ${source} (install the skopeo package): ${r.spawnErr.message}`);
  if (r.code === 0) return;
  const last = r.stderr.trim().split('\n').filter(Boolean).slice(-1)[0];
  const msg = last?.replace(/^time="[^"]*" level=\w+ msg="?/, '').replace(/"$/, '').replace(/\\"/g, '"') ?? `skopeo exit ${r.code}`;
  if (/connection refused|no such host|network is unreachable|no route to host|i\/o timeout|TLS handshake timeout|dial tcp|server misbehaving|context deadline exceeded|connection reset|timed out|EOF$/i.test(r.stderr)) {
    throw new CubeboxError('unavailable', `cannot reach registry ${host} to pull ${source}: ${msg}`);
  }
  if (/x509|certificate|tls:/i.test(r.stderr)) throw new CubeboxError('unavailable', `cannot reach registry ${host} securely to pull ${source}: ${msg}`);
  if (/manifest unknown|name unknown|not found/i.test(r.stderr)) throw notFound(`image ${source} not found in registry ${host}: ${msg}`);
  if (/unauthorized|authentication required|denied|forbidden/i.test(r.stderr)) throw invalid(`registry ${host} refused access to ${source}: ${msg}`);
  throw invalid(`cannot pull ${source}: ${msg}`);
}

// --- entry point --------------------------------------------------------------------------

function imageConfig(config: Record<string, unknown>, what: string): ImageConfig {
  const c = isObj(config.config) ? config.config : {};
  const strings = (v: unknown, name: string): string[] | undefined => {
    if (v === undefined || v === null) return undefined;
    if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) throw invalid(`${what}: image config ${name} is not a list of strings`);
    return v as string[];
  };
  const env: Record<string, string> = {};
  for (const kv of strings(c.Env, 'Env') ?? []) {
    const eq = kv.indexOf('=');
    if (eq <= 0) continue;
    env[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  const out: ImageConfig = { env };
  if (typeof c.User === 'string' && c.User) out.user = c.User;
  if (typeof c.WorkingDir === 'string' && c.WorkingDir) out.workdir = c.WorkingDir;
  const cmd = strings(c.Cmd, 'Cmd');
  if (cmd) out.cmd = cmd;
  const ep = strings(c.Entrypoint, 'Entrypoint');
  if (ep) out.entrypoint = ep;
  return out;
}

async function sniffFile(path: string): Promise<'gzip' | 'zstd' | 'none'> {
  const fh = await fs.open(path, 'r');
  try {
    const b = Buffer.alloc(4);
    const { bytesRead } = await fh.read(b, 0, 4, 0);
    if (bytesRead >= 2 && b[0] === 0x1f && b[1] === 0x8b) return 'gzip';
    if (bytesRead === 4 && b.readUInt32LE(0) === 0xfd2fb528) return 'zstd';
    return 'none';
  } finally {
    await fh.close();
  }
}

async function decompressTo(src: string, dest: string, kind: 'gzip' | 'zstd', signal?: AbortSignal): Promise<void> {
  if (kind === 'gzip') {
    try {
      await pipeline(createReadStream(src), createGunzip(), createWriteStream(dest, { mode: 0o600 }), { signal });
    } catch (err) {
      if (signal?.aborted) throw abortError(signal);
      throw invalid(`${src} is not valid gzip data: ${(err as Error).message}`);
    }
    return;
  }
  const r = await new Promise<{ code: number | null; stderr: string }>((resolve, reject) => {
    const c = spawn('zstd', ['-d', '-q', '-f', '-o', dest, src], { stdio: ['ignore', 'ignore', 'pipe'], signal });
    let stderr = '';
    c.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    c.on('error', (e) => reject(signal?.aborted ? abortError(signal) : new CubeboxError('unavailable', `cannot run zstd: ${e.message}`)));
    c.on('close', (code) => resolve({ code, stderr }));
  });
  if (r.code !== 0) throw invalid(`${src} is not valid zstd data: ${r.stderr.trim()}`);
}

/** Splits `<path>:<tag>` / `<path>@sha256:...` when the whole string is not a path itself. */
function splitRef(source: string): { path: string; ref?: string } {
  if (existsSync(source)) return { path: source };
  const m = /^(.+?)(?:@(sha256:[0-9a-f]{64})|:([^/:@]+))$/.exec(source);
  if (m && existsSync(m[1]!)) return { path: m[1]!, ref: m[2] ?? m[3] };
  throw invalid(`image source ${source} does not exist`);
}

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
            progress(r.reused && r.entries === undefined ? `${label}: already present, shared` : `${label}: extracted ${r.entries ?? 0} entries from ${(l.src.size / 1e6).toFixed(1)} MB in ${((Date.now() - t0) / 1000).toFixed(2)}s`);
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
