// One image layer -> one read-only layer directory in overlayfs's own format.
//
// Two passes over the blob. The first verifies its digests and reads the whole member list,
// refusing anything that could write outside the layer directory, and plans the conversion
// of OCI whiteouts. The second re-encodes every member (names exactly as validated, whiteouts
// as 0/0 character devices, opaque directories with trusted.overlay.opaque=y, only the
// extended attributes a layer may carry) and feeds the result to GNU tar, which restores
// ownership, modes, times, links, devices and xattrs. The digests are checked again on the
// way, and the directory is renamed into place only when everything succeeded.
//
// The blob's bytes and digests are in oci/layer-blob.ts, the validation and re-encoding in
// oci/layer-rewrite.ts; this file extracts and stores the layer directory.
import { spawnChild as spawn } from '../util/exec.js';
import fs from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline as pipelinePromise } from 'node:stream/promises';
import { CubeboxError, invalid } from '../util/errors.js';
import { parseTar, tarError } from './oci-import-tar.js';
import { abortError, checkDigests, decodeError, openLayer, sniff, verifyBlob, type BlobSource, type LayerExpect } from './oci/layer-blob.js';
import { coalesce, Planner, rewrite } from './oci/layer-rewrite.js';

export { abortError, type BlobSource, type LayerExpect } from './oci/layer-blob.js';
export { printable } from './oci/layer-rewrite.js';

export interface LayerResult {
  id: string; // directory name under the layers directory
  reused: boolean;
  rootOpaque: boolean; // the layer hides everything below it
  entries?: number;
}

const HEX64 = /^sha256:([0-9a-f]{64})$/;

export function layerIdFor(diffId: string): string {
  const m = HEX64.exec(diffId);
  if (!m) throw invalid(`unsupported layer diff ID '${diffId}' (expected sha256:<64 hex digits>)`);
  return `sha256-${m[1]}`;
}

// --- extraction ---------------------------------------------------------------------------

async function exists(p: string): Promise<boolean> {
  try {
    await fs.lstat(p);
    return true;
  } catch {
    return false;
  }
}

/** Whether an existing layer directory hides everything below it (its root is opaque). */
async function probeRootOpaque(dir: string): Promise<boolean> {
  const out = await new Promise<Buffer>((resolve, reject) => {
    const c = spawn('tar', ['--xattrs', '--xattrs-include=trusted.overlay.opaque', '--no-recursion', '-c', '-f', '-', '-C', dir, '.'], {
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    const chunks: Buffer[] = [];
    c.stdout.on('data', (d: Buffer) => chunks.push(d));
    c.on('error', reject);
    c.on('close', () => resolve(Buffer.concat(chunks)));
  });
  return out.includes('SCHILY.xattr.trusted.overlay.opaque=y');
}

function tarArgs(dir: string): string[] {
  return [
    '-x',
    '-f',
    '-',
    '-C',
    dir,
    '--numeric-owner',
    '--same-owner',
    '--same-permissions',
    '--xattrs',
    '--xattrs-include=*',
    '--delay-directory-restore',
    '--warning=no-unknown-keyword',
    '--warning=no-timestamp',
  ];
}

/**
 * Imports one layer blob into layersDir/sha256-<diffID hex>, or reuses that directory when
 * an earlier import made it. Nothing is left behind on failure.
 */
export async function importLayer(
  src: BlobSource,
  expect: LayerExpect,
  layersDir: string,
  opts: { signal?: AbortSignal; onProgress?: (line: string) => void } = {},
): Promise<LayerResult> {
  const id = layerIdFor(expect.diffId);
  const final = join(layersDir, id);
  if (await exists(final)) return { id, reused: true, rootOpaque: await probeRootOpaque(final) };
  const { signal } = opts;
  if (signal?.aborted) throw abortError(signal);
  const compression = await sniff(src);

  // Pass 1: digests and the member list; nothing is written.
  const planner = new Planner(src.what);
  const first = openLayer(src, compression, signal);
  try {
    try {
      for await (const { entry } of parseTar(first.reader)) planner.add(entry);
      checkDigests(src, expect, await first.finish());
    } catch (err) {
      // A digest mismatch explains a garbled stream better than the garbling does.
      if (!signal?.aborted) await verifyBlob(src, expect);
      throw decodeError(src, tarError(src.what, err), signal);
    }
  } finally {
    first.destroy();
  }
  const plan = planner.plan();

  // Pass 2: extraction into a private temporary directory, renamed into place at the end.
  const tmp = await fs.mkdtemp(join(layersDir, `.tmp-layer-${id.slice(7, 19)}-`));
  let cleanup = (): void => {};
  try {
    await fs.chmod(tmp, 0o755);
    const second = openLayer(src, compression, signal);
    cleanup = second.destroy;
    const gen = coalesce(rewrite(second.reader, plan, src.what, second.finish, (d) => checkDigests(src, expect, d)));
    const tar = spawn('tar', tarArgs(tmp), { stdio: ['pipe', 'ignore', 'pipe'], signal, env: { ...process.env, LC_ALL: 'C.UTF-8' } });
    let stderr = '';
    tar.stderr.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-4000)));
    const exit = new Promise<{ code: number | null; sig: NodeJS.Signals | null }>((resolve, reject) => {
      tar.on('error', (e) => reject(signal?.aborted ? abortError(signal) : new CubeboxError('unavailable', `cannot run tar: ${e.message}`)));
      tar.on('close', (code, sig) => resolve({ code, sig }));
    });
    exit.catch(() => {}); // awaited below, after the input is fed
    let feedErr: unknown;
    await pipelinePromise(Readable.from(gen, { objectMode: false }), tar.stdin).catch((e: unknown) => {
      feedErr = e;
      tar.kill('SIGKILL');
    });
    const { code, sig } = await exit;
    if (signal?.aborted) throw abortError(signal);
    if (feedErr !== undefined && !(feedErr as NodeJS.ErrnoException).code?.startsWith('EPIPE')) throw decodeError(src, feedErr, signal);
    if (code !== 0) throw invalid(`${src.what}: extraction failed: ${stderr.trim().split('\n').slice(-3).join(' ') || `tar exit ${code ?? sig}`}`);
    if (feedErr !== undefined) throw decodeError(src, feedErr, signal);
    try {
      await fs.rename(tmp, final);
    } catch (err) {
      const c = (err as NodeJS.ErrnoException).code;
      if ((c === 'ENOTEMPTY' || c === 'EEXIST') && (await exists(final))) {
        // Another import of the same layer finished first: its directory is as good as ours.
        await fs.rm(tmp, { recursive: true, force: true });
        return { id, reused: true, rootOpaque: plan.rootOpaque, entries: plan.entries };
      }
      throw err;
    }
    return { id, reused: false, rootOpaque: plan.rootOpaque, entries: plan.entries };
  } catch (err) {
    cleanup();
    await fs.rm(tmp, { recursive: true, force: true });
    throw err;
  }
}
