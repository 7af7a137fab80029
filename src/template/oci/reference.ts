// Image references as a Dockerfile's FROM names them, with Docker Hub's rules for short names:
// `python:3.12` is docker.io/library/python:3.12, `user/img` is docker.io/user/img:latest, and
// a first component with a dot or a port, or `localhost`, names the registry itself.
import { invalid } from '../../util/errors.js';
import { printable } from './layer-rewrite.js';

export interface ImageReference {
  /** The registry's host[:port]: `docker.io`, `ghcr.io`, `localhost:5000`. */
  registry: string;
  /** The repository path in it: `library/python`, `org/app`. */
  repository: string;
  tag?: string;
  /** `sha256:<hex>`: pulls exactly this manifest (or index), whatever the tag says. */
  digest?: string;
}

const COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^[\w][\w.-]{0,127}$/;
const DIGEST = /^sha256:[0-9a-f]{64}$/;
// a host name or IPv4 address, or a bracketed IPv6 one, with an optional port
const HOST = /^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:.]+\])(?::[0-9]{1,5})?$/;

export const DOCKER_HUB = 'docker.io';

/** Parses a reference (an optional `docker://` prefix is allowed); a bad one is a 400 saying why. */
export function parseReference(text: string): ImageReference {
  const shown = printable(text);
  const bad = (why: string) => invalid(`bad image reference '${shown}': ${why}`);
  let rest = text.replace(/^docker:\/\//, '');
  if (!rest) throw bad('it is empty');
  if (rest.length > 512) throw bad('it is too long');
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST.test(digest)) throw bad('a digest is sha256: and 64 lowercase hex digits');
  }
  let tag: string | undefined;
  const colon = rest.lastIndexOf(':');
  if (colon > rest.lastIndexOf('/')) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) throw bad(`'${printable(tag)}' is not a valid tag (letters, digits, '_', '.', '-'; at most 128)`);
  }
  const parts = rest.split('/');
  let registry = DOCKER_HUB;
  if (parts.length > 1 && (parts[0]!.includes('.') || parts[0]!.includes(':') || parts[0] === 'localhost')) {
    registry = parts.shift()!;
    if (!HOST.test(registry)) throw bad(`'${printable(registry)}' is not a valid registry host`);
    const port = /:(\d+)$/.exec(registry)?.[1];
    if (port !== undefined && (Number(port) < 1 || Number(port) > 65535)) throw bad(`port ${port} is out of range`);
  }
  if (registry === 'index.docker.io' || registry === 'registry-1.docker.io') registry = DOCKER_HUB;
  for (const p of parts) {
    if (!COMPONENT.test(p)) throw bad(`'${printable(p)}' is not a valid repository name component (lowercase letters, digits, separators '.', '_', '__', '-')`);
  }
  if (registry === DOCKER_HUB && parts.length === 1) parts.unshift('library');
  const repository = parts.join('/');
  if (registry.length + 1 + repository.length > 255) throw bad('the name is longer than 255 characters');
  if (!tag && !digest) tag = 'latest';
  return { registry, repository, tag, digest };
}

/** The fully qualified name: `docker.io/library/python:3.12`, `localhost:5000/app@sha256:...`. */
export function formatReference(r: ImageReference): string {
  return `${r.registry}/${r.repository}${r.tag ? `:${r.tag}` : ''}${r.digest ? `@${r.digest}` : ''}`;
}

/** skopeo's transport name for the repository at one digest (what a pull fetches, so a moving tag cannot change it midway). */
export function pinnedSource(r: ImageReference, digest: string): string {
  return `docker://${r.registry}/${r.repository}@${digest}`;
}
