// Where a template build's base image comes from when it is not a cubebox template: an OCI
// registry reference (E2B's fromImage / fromImageRegistry), resolved to a template holding the
// image's layers, on which the build's steps are stacked.
//
// The reference is first resolved to the digest of the image manifest this host would pull
// (one manifest request); a template of that digest already made for the same owner is reused
// without a pull. Otherwise the image is pulled by that digest (a tag moving meanwhile changes
// nothing) and imported: its layers land in the shared layer directory, extracted once for
// every template and import that has them.
import type { Template, TemplateStore } from './store.js';
import { CODE_INTERPRETER_TEMPLATE } from './code-interpreter.js';
import { invalid } from '../util/errors.js';
import { formatReference, parseReference, pinnedSource, type ImageReference } from './oci/reference.js';
import { registryAccess, resolveDigest, type Credentials, type RegistrySettings } from './oci/registry.js';

export type { Credentials, RegistrySettings } from './oci/registry.js';

/** Credentials for a registry, as E2B's `fromImageRegistry` sends them. */
export interface RegistryAuth {
  type: 'registry' | 'aws' | 'gcp';
  username?: string;
  password?: string;
  [key: string]: unknown;
}

export interface BaseImageRequest {
  /** A reference as a Dockerfile's FROM names it: `python:3.12`, `ghcr.io/org/app:tag`, `name@sha256:...`. */
  image: string;
  registry?: RegistryAuth;
  /** The team the build is for (null: the host's own). */
  team: string | null;
  onLog?: (line: string) => void;
  signal?: AbortSignal;
}

/** E2B's own images, which its users name in FROM: the local templates that are them, no pull. */
const E2B_IMAGES: Record<string, string> = {
  'docker.io/e2bdev/base': 'base',
  'docker.io/e2bdev/code-interpreter': CODE_INTERPRETER_TEMPLATE,
};

/** The local template an image reference names when it is one of E2B's own images (no pull), else undefined. */
export function localTemplateFor(image: string): string | undefined {
  try {
    const ref = parseReference(image);
    return E2B_IMAGES[`${ref.registry}/${ref.repository}`];
  } catch {
    return undefined; // not a reference: the pull refuses it with the reason
  }
}

/** Pulls under way, per template store by owner and digest: concurrent builds from one image share one pull. */
const pullsOf = new WeakMap<TemplateStore, Map<string, Promise<Template>>>();

/** The name of the template holding an image's layers (hidden from lists: it is a build step). */
export function imageTemplateName(digest: string): string {
  return `image-sha256-${digest.slice(7, 47)}`;
}

/** The manifest lookup's bound when the settings give none (a pull is bounded by the caller's signal). */
const LOOKUP_TIMEOUT_MS = 60_000;

/** A template whose layers are the image's (made once per image digest and owner, shared by every build from it). */
export async function templateFromImage(templates: TemplateStore, req: BaseImageRequest, settings: RegistrySettings = {}): Promise<Template> {
  const creds = credentialsOf(req.registry);
  const ref = parseReference(req.image);
  const shown = req.image;
  const log = req.onLog ?? (() => {});
  const local = localTemplateFor(req.image);
  if (local) {
    log(`${shown} is the local template '${local}' (no pull)`);
    await templates.ensure(local);
    return templates.get(local);
  }
  const team = req.team ?? undefined;
  const cached = (digest: string) => templates.list().find((t) => t.config.team === team && t.config.buildStep && t.config.imageDigest === digest);
  const hit = ref.digest && cached(ref.digest);
  if (hit) {
    log(`${formatReference(ref)}: using the image already pulled (template ${hit.name})`);
    return hit;
  }
  const access = await registryAccess(ref.registry, creds, settings);
  try {
    const opts = { signal: req.signal, timeoutMs: settings.timeoutMs };
    const digest = await resolveDigest(ref, shown, access, { ...opts, timeoutMs: settings.timeoutMs ?? LOOKUP_TIMEOUT_MS });
    const key = `${team ?? ''}\n${digest}`;
    const again = cached(digest);
    if (again) {
      log(`${formatReference(ref)} is ${digest}: using the image already pulled (template ${again.name})`);
      return again;
    }
    const pulling = pullsOf.get(templates) ?? new Map<string, Promise<Template>>();
    pullsOf.set(templates, pulling);
    let p = pulling.get(key);
    if (!p) {
      log(`${formatReference(ref)} is ${digest}: pulling`);
      p = pullImage(templates, ref, digest, team, access.copyArgs, { ...opts, onLog: log }).finally(() => pulling.delete(key));
      pulling.set(key, p);
    }
    return await p;
  } finally {
    await access.close();
  }
}

async function pullImage(
  templates: TemplateStore,
  ref: ImageReference,
  digest: string,
  team: string | undefined,
  pullArgs: string[],
  opts: { signal?: AbortSignal; timeoutMs?: number; onLog: (line: string) => void },
): Promise<Template> {
  const started = Date.now();
  const t = await templates.importImage(imageTemplateName(digest), pinnedSource(ref, digest), {
    pullArgs,
    signal: opts.signal,
    timeoutMs: opts.timeoutMs,
    onProgress: opts.onLog,
    config: { team, buildStep: true, cacheKey: `image:${digest}`, imageDigest: digest },
  });
  opts.onLog(`pulled ${formatReference(ref)} in ${((Date.now() - started) / 1000).toFixed(2)}s: ${t.layers.length} layer(s)`);
  return t;
}

function credentialsOf(auth: RegistryAuth | undefined): Credentials | undefined {
  if (!auth) return undefined;
  if (auth.type === 'aws' || auth.type === 'gcp') {
    const what = auth.type === 'aws' ? 'AWS ECR' : 'GCP Artifact Registry';
    throw invalid(
      `${what} registries (fromImageRegistry type '${auth.type}') are not supported by this server: use type 'registry' with a username and password`,
    );
  }
  if (auth.type !== 'registry') throw invalid(`unknown registry credentials type '${String(auth.type)}' (supported: 'registry')`);
  if (typeof auth.username !== 'string' || typeof auth.password !== 'string' || !auth.username)
    throw invalid("registry credentials of type 'registry' need a username and a password");
  if (/[\0\r\n]/.test(auth.username) || auth.username.includes(':')) throw invalid('the registry username must not contain ":" or control characters');
  return { username: auth.username, password: auth.password };
}

/**
 * The host's `cubebox template import <name> docker://<reference>`: a named template of the
 * image, pulled with the node's trust settings and the given credentials (or the host's own
 * logins: this is the host's pull, not a team's).
 */
export async function importFromRegistry(
  templates: TemplateStore,
  name: string,
  image: string,
  opts: { credentials?: Credentials; settings?: RegistrySettings; onProgress?: (line: string) => void },
): Promise<Template> {
  const ref = parseReference(image);
  const creds = opts.credentials && credentialsOf({ type: 'registry', ...opts.credentials });
  const access = await registryAccess(ref.registry, creds, opts.settings ?? {}, true);
  try {
    const source = `docker://${formatReference(ref)}`;
    return await templates.importImage(name, source, { pullArgs: access.copyArgs, onProgress: opts.onProgress, timeoutMs: opts.settings?.timeoutMs });
  } finally {
    await access.close();
  }
}
