// Finding the image in an OCI image layout or a `docker save` tree: the index, manifests
// (by tag, digest or this host's platform), the config and its diff IDs, and the layer blobs.
import { createHash } from 'node:crypto';
import { invalid, notFound } from '../../util/errors.js';
import type { ImageFiles } from '../oci-import-source.js';
import type { BlobSource, LayerExpect } from './layer-blob.js';
import { printable } from './layer-rewrite.js';

export interface ImageConfig {
  env: Record<string, string>;
  user?: string;
  workdir?: string;
  cmd?: string[];
  entrypoint?: string[];
}

const JSON_LIMIT = 8 << 20;
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

export interface ResolvedImage {
  digest: string;
  config: Record<string, unknown>;
  layers: LayerPlanItem[]; // bottom first, as images list them
}

export const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const sha256 = (b: Buffer) => 'sha256:' + createHash('sha256').update(b).digest('hex');
export const short = (d: string) => d.replace(/^sha256:/, '').slice(0, 12);

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

export function hostArch(): string {
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

export async function resolveOci(files: ImageFiles, ref: string | undefined, progress: (l: string) => void): Promise<ResolvedImage> {
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
  if (diffIds.length !== descs.length)
    throw invalid(`${files.what}: the manifest lists ${descs.length} layers but the image config has ${diffIds.length} diff IDs`);
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

export async function resolveDockerSave(files: ImageFiles, ref: string | undefined): Promise<ResolvedImage> {
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
  if (named && `sha256:${named[1]}` !== digest)
    throw invalid(`${files.what}: image config ${img!.config} does not match its digest (got ${digest}): the image is corrupt`);
  const config = parseJson(raw, `${files.what}: image config`);
  if (!isObj(config)) throw invalid(`${files.what}: image config is not an object`);
  const diffIds = diffIdsOf(config, files.what);
  if (diffIds.length !== img!.layers.length)
    throw invalid(`${files.what}: manifest.json lists ${img!.layers.length} layers but the image config has ${diffIds.length} diff IDs`);
  const layers: LayerPlanItem[] = [];
  for (const [i, path] of img!.layers.entries()) {
    const what = `layer ${i + 1}/${img!.layers.length} (${path})`;
    const blob = /^blobs\/sha256\/([0-9a-f]{64})$/.exec(path);
    layers.push({ src: await files.blob(path, what), expect: { diffId: diffIds[i]!, digest: blob ? `sha256:${blob[1]}` : undefined } });
  }
  return { digest, config, layers };
}

export function imageConfig(config: Record<string, unknown>, what: string): ImageConfig {
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
