// A template as an OCI image in a registry, so that every node of a cluster can use it: each
// layer directory is one uncompressed OCI layer blob (content-addressed: a layer shared by
// templates, or already sent, is uploaded once), and the image config carries the template's
// row (names, team, public flag, settings) under a label. The manifest's digest is what the
// cluster records (store/pg/templates.ts): a pull asks for exactly that manifest, and every
// blob it names is checked against its digest and size before it is unpacked (by the image
// importer, which refuses members that would leave the layer directory).
import { createReadStream, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import fs from 'node:fs/promises';
import { basename, join } from 'node:path';
import { invalid } from '../util/errors.js';
import { randomId } from '../util/ids.js';
import { importLayer, type BlobSource } from './oci-import-layer.js';
import { checkDigest, MANIFEST_TYPE, MAX_MANIFEST, sha256, type RegistryRepo } from './oci/distribution.js';
import { exportLayer } from './oci/layer-export.js';
import { hostArch, isObj } from './oci/resolve.js';
import { LAYER_DIGESTS, type Template, type TemplateConfig } from './store.js';

export const CONFIG_TYPE = 'application/vnd.oci.image.config.v1+json';
export const LAYER_TYPE = 'application/vnd.oci.image.layer.v1.tar';
/** The image config label holding the template's row. */
export const TEMPLATE_LABEL = 'dev.cubebox.template';
/** Bounds of what a pull accepts. */
export const MAX_LAYERS = 128;
export const MAX_TEMPLATE_BYTES = 64 * 2 ** 30;

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
}

/** What a template is, as shared: its row without anything node-local. */
export interface SharedTemplateRow {
  id: string;
  name: string;
  config: Partial<TemplateConfig>;
  createdAt: number;
}

/** Settings that only mean something on the node that has them (its marker; the parent is one of its own templates). */
const LOCAL_ONLY = ['shared', 'parent'] as const;

export function sharedConfig(config: Partial<TemplateConfig>): Partial<TemplateConfig> {
  const out = { ...config };
  for (const k of LOCAL_ONLY) delete out[k];
  return out;
}

/** The image config and manifest of a template whose layers (bottom first) are these blobs. */
export function templateImage(row: SharedTemplateRow, layers: Descriptor[]): { config: Buffer; manifest: Buffer } {
  const c = row.config;
  const config = Buffer.from(
    JSON.stringify({
      architecture: hostArch(),
      os: 'linux',
      created: new Date(row.createdAt).toISOString(),
      config: {
        Env: Object.entries(c.env ?? {}).map(([k, v]) => `${k}=${v}`),
        User: c.user,
        WorkingDir: c.workdir,
        Labels: { [TEMPLATE_LABEL]: JSON.stringify({ ...row, config: sharedConfig(c) }) },
      },
      rootfs: { type: 'layers', diff_ids: layers.map((l) => l.digest) },
    }),
  );
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MANIFEST_TYPE,
      config: { mediaType: CONFIG_TYPE, digest: sha256(config), size: config.length },
      layers,
      annotations: { 'dev.cubebox.template.id': row.id, 'dev.cubebox.template.name': row.name },
    }),
  );
  return { config, manifest };
}

/** A template manifest read back: its config and layers (bottom first), every field checked. */
export function parseTemplateManifest(bytes: Buffer): { config: Descriptor; layers: Descriptor[] } {
  if (bytes.length > MAX_MANIFEST) throw invalid('template manifest too large');
  let m: unknown;
  try {
    m = JSON.parse(bytes.toString('utf8'));
  } catch {
    throw invalid('the template manifest is not JSON');
  }
  if (!isObj(m) || m.schemaVersion !== 2 || m.mediaType !== MANIFEST_TYPE) throw invalid('not an OCI image manifest of a template');
  const desc = (d: unknown, type: string, what: string): Descriptor => {
    if (!isObj(d) || d.mediaType !== type) throw invalid(`${what}: not a ${type}`);
    const size = d.size;
    if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) throw invalid(`${what}: bad size`);
    return { mediaType: type, digest: checkDigest(d.digest, what), size };
  };
  const config = desc(m.config, CONFIG_TYPE, 'the template config');
  if (!Array.isArray(m.layers) || m.layers.length === 0 || m.layers.length > MAX_LAYERS) throw invalid(`a template has 1 to ${MAX_LAYERS} layers`);
  const layers = m.layers.map((l, i) => desc(l, LAYER_TYPE, `layer ${i + 1}`));
  const total = layers.reduce((n, l) => n + l.size, 0);
  if (total > MAX_TEMPLATE_BYTES) throw invalid(`the template's layers are ${total} bytes, more than ${MAX_TEMPLATE_BYTES}`);
  return { config, layers };
}

/** The template row an image config carries. */
export function parseTemplateConfig(bytes: Buffer, diffIds: string[]): SharedTemplateRow {
  let c: unknown;
  try {
    c = JSON.parse(bytes.toString('utf8'));
  } catch {
    throw invalid('the template config is not JSON');
  }
  const rootfs = isObj(c) && isObj(c.rootfs) ? c.rootfs : {};
  if (!Array.isArray(rootfs.diff_ids) || rootfs.diff_ids.join() !== diffIds.join()) throw invalid("the template config's layers are not the manifest's");
  const label = isObj(c) && isObj(c.config) && isObj(c.config.Labels) ? c.config.Labels[TEMPLATE_LABEL] : undefined;
  if (typeof label !== 'string') throw invalid('the image is not a cubebox template (no template label)');
  const row = JSON.parse(label) as unknown;
  if (!isObj(row) || typeof row.id !== 'string' || typeof row.name !== 'string' || !isObj(row.config) || typeof row.createdAt !== 'number')
    throw invalid('the template label is malformed');
  return { id: row.id, name: row.name, config: row.config as Partial<TemplateConfig>, createdAt: row.createdAt };
}

/**
 * The digests of layer directories already written as blobs (layers never change once made),
 * kept beside the layers so that a layer is read into a tar once.
 */
class DigestCache {
  constructor(private readonly dir: string) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  }
  get(layerId: string): Descriptor | undefined {
    const f = join(this.dir, layerId);
    if (!existsSync(f)) return undefined;
    try {
      const d = JSON.parse(readFileSync(f, 'utf8')) as Descriptor;
      return { mediaType: LAYER_TYPE, digest: checkDigest(d.digest, 'cached digest'), size: d.size };
    } catch {
      return undefined;
    }
  }
  set(layerId: string, d: Descriptor): void {
    writeFileSync(join(this.dir, layerId), JSON.stringify({ digest: d.digest, size: d.size }), { mode: 0o600 });
  }
}

export interface PublishResult {
  manifest: string;
  size: number;
  uploaded: number; // blobs sent (the others were there already)
}

/** Pushes a template (its layers, config and manifest, tagged with its id) to the registry. */
export async function publishTemplate(registry: RegistryRepo, t: Template, opts: { layersDir: string; dataDir: string }): Promise<PublishResult> {
  const cache = new DigestCache(join(opts.dataDir, LAYER_DIGESTS));
  const layers: Descriptor[] = [];
  let uploaded = 0;
  for (const dir of [...t.layers].reverse()) {
    const id = basename(dir);
    let d = cache.get(id);
    // a layer pulled from the registry is named for its digest
    const named = /^sha256-([0-9a-f]{64})$/.exec(id);
    if (!d && named) {
      const size = await registry.blobSize(`sha256:${named[1]}`);
      if (size !== undefined) d = { mediaType: LAYER_TYPE, digest: `sha256:${named[1]}`, size };
    }
    if (d && (await registry.blobSize(d.digest)) !== undefined) {
      layers.push(d);
      continue;
    }
    const tmp = join(opts.layersDir, `.tmp-publish-${randomId(8)}.tar`);
    try {
      const { digest, size } = await exportLayer(dir, tmp);
      d = { mediaType: LAYER_TYPE, digest, size };
      if ((await registry.blobSize(digest)) === undefined) {
        await registry.putBlob(digest, size, { file: tmp });
        uploaded++;
      }
      cache.set(id, d);
    } finally {
      await fs.rm(tmp, { force: true });
    }
    layers.push(d);
  }
  const row: SharedTemplateRow = { id: t.id, name: t.name, config: t.config, createdAt: t.createdAt };
  const { config, manifest } = templateImage(row, layers);
  const cd = sha256(config);
  if ((await registry.blobSize(cd)) === undefined) {
    await registry.putBlob(cd, config.length, config);
    uploaded++;
  }
  const digest = await registry.putManifest(t.id, manifest);
  return { manifest: digest, size: layers.reduce((n, l) => n + l.size, 0), uploaded };
}

/**
 * Pulls the template of a manifest digest into the layers directory: each layer not there yet
 * (by digest) is downloaded to a private file, checked, and unpacked by the image importer into
 * `sha256-<digest>`. Resolves to the layer ids (topmost first) and the row the config carries.
 */
export async function pullTemplate(
  registry: RegistryRepo,
  manifestDigest: string,
  layersDir: string,
  opts: { maxBytes?: number } = {},
): Promise<{ layerIds: string[]; row: SharedTemplateRow; fetched: number }> {
  const { config, layers } = parseTemplateManifest(await registry.getManifest(manifestDigest));
  const total = layers.reduce((n, l) => n + l.size, 0);
  if (opts.maxBytes !== undefined && total > opts.maxBytes)
    throw invalid(`the template's layers are ${total} bytes, more than this node takes (${opts.maxBytes})`);
  const row = parseTemplateConfig(
    await registry.getBlobBytes(config.digest, config.size),
    layers.map((l) => l.digest),
  );
  const ids: string[] = [];
  let fetched = 0;
  for (const [i, l] of layers.entries()) {
    const id = `sha256-${l.digest.slice(7)}`;
    ids.push(id);
    if (existsSync(join(layersDir, id))) continue;
    const tmp = join(layersDir, `.tmp-blob-${randomId(8)}`);
    try {
      await registry.getBlobToFile(l.digest, l.size, tmp);
      const src: BlobSource = {
        what: `layer ${i + 1}/${layers.length} (${l.digest.slice(0, 19)})`,
        size: l.size,
        open: (start?: number, end?: number) => createReadStream(tmp, { start, end }),
      };
      await importLayer(src, { diffId: l.digest, digest: l.digest, size: l.size }, layersDir);
      fetched++;
    } finally {
      await fs.rm(tmp, { force: true });
    }
  }
  return { layerIds: ids.reverse(), row, fetched };
}
