// Getting an image source onto local disk in a readable form: pulling from a registry with
// skopeo, decompressing a compressed tarball, and splitting `<path>:<tag>` references.
import { spawnChild as spawn } from '../../util/exec.js';
import { createReadStream, createWriteStream, existsSync } from 'node:fs';
import fs from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { CubeboxError, invalid } from '../../util/errors.js';
import { abortError } from './layer-blob.js';
import { pullError, skopeo, skopeoGlobals } from './registry.js';

// --- registries ---------------------------------------------------------------------------

function registryHost(ref: string): string {
  const name = ref.replace(/^docker:\/\//, '').replace(/^\/+/, '');
  const first = name.split('/')[0] ?? '';
  return name.includes('/') && (first.includes('.') || first.includes(':') || first === 'localhost') ? first : 'docker.io';
}

/** Copies a `docker://` reference into an OCI layout at dir (tag `import`); args: the source's access options. */
export async function pull(
  source: string,
  dir: string,
  opts: { signal?: AbortSignal; timeoutMs?: number; pullArgs?: string[] },
  progress: (l: string) => void,
): Promise<void> {
  const args = [...skopeoGlobals(opts.timeoutMs), 'copy', '--retry-times', '0', ...(opts.pullArgs ?? []), source, `oci:${dir}:import`];
  progress(`pulling ${source} with skopeo`);
  const r = await skopeo(args, { signal: opts.signal, onLine: progress });
  if (r.code !== 0) throw pullError(r, registryHost(source), source, opts.signal);
}

export async function sniffFile(path: string): Promise<'gzip' | 'zstd' | 'none'> {
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

export async function decompressTo(src: string, dest: string, kind: 'gzip' | 'zstd', signal?: AbortSignal): Promise<void> {
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
export function splitRef(source: string): { path: string; ref?: string } {
  if (existsSync(source)) return { path: source };
  const m = /^(.+?)(?:@(sha256:[0-9a-f]{64})|:([^/:@]+))$/.exec(source);
  if (m && existsSync(m[1]!)) return { path: m[1]!, ref: m[2] ?? m[3] };
  throw invalid(`image source ${source} does not exist`);
}
