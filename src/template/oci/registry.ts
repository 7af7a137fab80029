// Talking to registries through skopeo: which registries are trusted how (the node's settings),
// credentials handed over in a private auth file (never on a command line, never logged), the
// manifest lookup that names the exact image a pull will fetch, and skopeo's failures turned
// into errors that name the registry and the image.
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import fs from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CubeboxError, invalid, notFound } from '../../util/errors.js';
import { spawnChild as spawn } from '../../util/exec.js';
import { abortError } from './layer-blob.js';
import { hostArch, isObj } from './resolve.js';
import type { ImageReference } from './reference.js';

/** How the node trusts registries (configuration: --registry-ca, --insecure-registry). */
export interface RegistrySettings {
  /** A PEM bundle trusted for registry TLS besides the system's CAs. */
  caFile?: string;
  /** host[:port] of registries reached over plain HTTP or TLS without verification. */
  insecure?: string[];
  /** Bound of one registry call (a manifest lookup, a whole pull), ms. */
  timeoutMs?: number;
}

export interface Credentials {
  username: string;
  password: string;
}

/** skopeo's options for one registry, for a source (`copy --src-...`) or for `inspect`. */
export interface RegistryAccess {
  copyArgs: string[];
  inspectArgs: string[];
  /** Removes the private files (auth file, certificate directory). */
  close(): Promise<void>;
}

/**
 * Writes what skopeo needs to reach a registry into a new private directory: always an auth
 * file (an empty one without credentials, so that the host's own logins in ~/.docker or
 * $XDG_RUNTIME_DIR never serve a team's pull), and the extra CA as a certificate directory.
 */
export async function registryAccess(
  registry: string,
  creds: Credentials | undefined,
  settings: RegistrySettings,
  /** The host's own pulls (its CLI): its logins and certs.d apply unless credentials or a CA are given. */
  hostDefaults = false,
): Promise<RegistryAccess> {
  const dir = await fs.mkdtemp(join(tmpdir(), 'cubebox-registry-')); // 0700
  try {
    const copyArgs: string[] = [];
    const inspectArgs: string[] = [];
    if (creds || !hostDefaults) {
      const auths: Record<string, { auth: string }> = {};
      if (creds) auths[registry] = { auth: Buffer.from(`${creds.username}:${creds.password}`).toString('base64') };
      const authFile = join(dir, 'auth.json');
      await fs.writeFile(authFile, JSON.stringify({ auths }), { mode: 0o600, flag: 'wx' });
      copyArgs.push('--src-authfile', authFile);
      inspectArgs.push('--authfile', authFile);
    }
    // the certificate directory replaces /etc/containers/certs.d/<host> and /etc/docker/certs.d:
    // trust is the system's CAs plus the configured bundle, for every registry alike
    if (settings.caFile || !hostDefaults) {
      const certs = join(dir, 'certs');
      await fs.mkdir(certs, { mode: 0o700 });
      if (settings.caFile) await fs.copyFile(settings.caFile, join(certs, 'registry-ca.crt'));
      copyArgs.push('--src-cert-dir', certs);
      inspectArgs.push('--cert-dir', certs);
    }
    if (settings.insecure?.includes(registry)) {
      copyArgs.push('--src-tls-verify=false');
      inspectArgs.push('--tls-verify=false');
    }
    return { copyArgs, inspectArgs, close: () => fs.rm(dir, { recursive: true, force: true }) };
  } catch (err) {
    await fs.rm(dir, { recursive: true, force: true });
    if ((err as NodeJS.ErrnoException).path === settings.caFile)
      throw new CubeboxError('unavailable', `cannot read the registry CA bundle ${settings.caFile}: ${(err as Error).message}`);
    throw err;
  }
}

/** The global options every skopeo call starts with. */
export function skopeoGlobals(timeoutMs: number | undefined): string[] {
  const args: string[] = [];
  if (!existsSync('/etc/containers/policy.json')) args.push('--insecure-policy');
  if (timeoutMs) args.push('--command-timeout', `${Math.ceil(timeoutMs / 1000)}s`);
  return args;
}

export interface SkopeoResult {
  code: number | null;
  stdout: Buffer;
  stderr: string;
  spawnErr?: Error;
}

/** Runs skopeo; stdout kept up to stdoutLimit bytes (or passed line by line to onLine), stderr's tail kept. */
export function skopeo(args: string[], opts: { signal?: AbortSignal; stdoutLimit?: number; onLine?: (l: string) => void }): Promise<SkopeoResult> {
  return new Promise((resolve) => {
    const c = spawn('skopeo', args, { stdio: ['ignore', 'pipe', 'pipe'], signal: opts.signal });
    const out: Buffer[] = [];
    let size = 0;
    let stderr = '';
    let partial = '';
    c.stdout!.on('data', (d: Buffer) => {
      if (opts.onLine) {
        const lines = (partial + d.toString('utf8')).split('\n');
        partial = lines.pop() ?? '';
        for (const l of lines) if (l.trim()) opts.onLine(l.trim());
      } else if ((size += d.length) <= (opts.stdoutLimit ?? 0)) out.push(d);
    });
    c.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-8000)));
    c.on('error', (e) => resolve({ code: null, stdout: Buffer.alloc(0), stderr, spawnErr: e }));
    c.on('close', (code) => resolve({ code, stdout: size > (opts.stdoutLimit ?? 0) && !opts.onLine ? Buffer.alloc(0) : Buffer.concat(out), stderr }));
  });
}

/** skopeo's failure as an error naming the registry and the image (image: as the user wrote it). */
export function pullError(r: SkopeoResult, host: string, image: string, signal?: AbortSignal): Error {
  if (signal?.aborted) return abortError(signal);
  if (r.spawnErr) return new CubeboxError('unavailable', `cannot run skopeo to pull ${image} (install the skopeo package): ${r.spawnErr.message}`);
  const last = r.stderr.trim().split('\n').filter(Boolean).slice(-1)[0];
  const msg =
    last
      ?.replace(/^time="[^"]*" level=\w+ msg="?/, '')
      .replace(/"$/, '')
      .replace(/\\"/g, '"')
      .replace(/^Error parsing image name "[^"]*": /, '') ?? `skopeo exit ${r.code}`;
  const s = r.stderr;
  // credentials first: a registry that refuses them also says "unauthorized" in a 401 over a live connection
  if (/unauthorized|authentication required|invalid username\/password|incorrect username or password/i.test(s))
    return invalid(`registry ${host} refused the credentials for ${image} (wrong or missing username/password): ${msg}`);
  if (/x509|certificate|tls: |server gave HTTP response to HTTPS client|http: server gave/i.test(s))
    return new CubeboxError(
      'unavailable',
      `cannot reach registry ${host} securely to pull ${image} (TLS: is its CA trusted? see --registry-ca, --insecure-registry): ${msg}`,
    );
  if (
    /connection refused|no such host|network is unreachable|no route to host|i\/o timeout|TLS handshake timeout|dial tcp|server misbehaving|context deadline exceeded|connection reset|timed out|EOF$/i.test(
      s,
    )
  )
    return new CubeboxError('unavailable', `cannot reach registry ${host} to pull ${image}: ${msg}`);
  if (/manifest unknown|name unknown|not found|does not exist/i.test(s)) return notFound(`image ${image} not found in registry ${host}: ${msg}`);
  if (/denied|forbidden/i.test(s)) return invalid(`registry ${host} denied access to ${image}: ${msg}`);
  return invalid(`cannot pull ${image} from registry ${host}: ${msg}`);
}

const MANIFEST_LIMIT = 4 << 20;
const INDEX_TYPES = ['application/vnd.oci.image.index.v1+json', 'application/vnd.docker.distribution.manifest.list.v2+json'];

/**
 * The digest of the image manifest a pull of ref fetches on this host: the reference's own
 * manifest, or for a multi-platform index the entry for linux on this architecture.
 */
export async function resolveDigest(
  ref: ImageReference,
  shown: string,
  access: RegistryAccess,
  opts: { signal?: AbortSignal; timeoutMs?: number },
): Promise<string> {
  const name = `docker://${ref.registry}/${ref.repository}${ref.digest ? `@${ref.digest}` : `:${ref.tag}`}`;
  const r = await skopeo([...skopeoGlobals(opts.timeoutMs), 'inspect', '--raw', '--retry-times', '0', ...access.inspectArgs, name], {
    signal: opts.signal,
    stdoutLimit: MANIFEST_LIMIT,
  });
  if (r.code !== 0) throw pullError(r, ref.registry, shown, opts.signal);
  const digest = 'sha256:' + createHash('sha256').update(r.stdout).digest('hex');
  if (ref.digest && digest !== ref.digest) throw invalid(`registry ${ref.registry} answered ${shown} with a manifest of another digest (${digest})`);
  let m: unknown;
  try {
    m = JSON.parse(r.stdout.toString('utf8'));
  } catch {
    throw invalid(`registry ${ref.registry} answered ${shown} with a manifest that is not JSON`);
  }
  if (!isObj(m)) throw invalid(`registry ${ref.registry} answered ${shown} with a manifest that is not a JSON object`);
  if (!INDEX_TYPES.includes(m.mediaType as string) && !Array.isArray(m.manifests)) return digest;
  const entries = (Array.isArray(m.manifests) ? m.manifests : []).filter(isObj);
  const arch = hostArch();
  const platform = (e: Record<string, unknown>) => (isObj(e.platform) ? e.platform : {});
  const fit = entries.find((e) => platform(e).os === 'linux' && platform(e).architecture === arch && typeof e.digest === 'string');
  if (!fit) {
    const offered = entries.map((e) => `${String(platform(e).os)}/${String(platform(e).architecture)}`).join(', ');
    throw invalid(`image ${shown} in registry ${ref.registry} has no linux/${arch} variant (it has: ${offered || 'none'})`);
  }
  const d = fit.digest as string;
  if (!/^sha256:[0-9a-f]{64}$/.test(d)) throw invalid(`image ${shown} in registry ${ref.registry}: unsupported digest in its index`);
  return d;
}
