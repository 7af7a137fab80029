// Where a template build's base image comes from when it is not a cubebox template: an OCI
// registry reference (E2B's fromImage / fromImageRegistry), resolved to a template holding the
// image's layers, on which the build's steps are stacked.
import type { Template, TemplateStore } from './store.js';
import { invalid } from '../util/errors.js';

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

/** A template whose layers are the image's (made once per image digest, shared by every build from it). */
export async function templateFromImage(templates: TemplateStore, req: BaseImageRequest): Promise<Template> {
  void templates;
  throw invalid(`building from a registry image ('${req.image}') is not supported yet`);
}
