// A layer blob as bytes: where they come from, their compression, decompression with both
// digests (stored blob and diff ID) computed on the way, and the checks against the image.
import { spawnChild as spawn } from '../../util/exec.js';
import { createHash } from 'node:crypto';
import { Duplex, Readable, Transform, addAbortSignal, pipeline } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { CubeboxError, invalid } from '../../util/errors.js';
import { TarFormatError } from './tar-format.js';
import { ByteReader } from './tar-read.js';

/** Where a layer's (possibly compressed) bytes come from. */
export interface BlobSource {
  what: string; // for messages: "layer 2/5 (sha256:ab12...)"
  size: number;
  open(start?: number, end?: number): Readable; // byte range, end inclusive
}

export interface LayerExpect {
  diffId: string; // sha256:<hex> of the uncompressed tar
  digest?: string; // sha256:<hex> of the blob as stored, when the image names it
  size?: number;
}

export type Compression = 'gzip' | 'zstd' | 'none';

export async function sniff(src: BlobSource): Promise<Compression> {
  if (src.size === 0) return 'none'; // an empty tar stream: a layer without files
  const chunks: Buffer[] = [];
  for await (const c of src.open(0, Math.min(src.size, 512) - 1)) chunks.push(c as Buffer);
  const b = Buffer.concat(chunks);
  if (b[0] === 0x1f && b[1] === 0x8b) return 'gzip';
  if (b.length >= 4 && (b.readUInt32LE(0) === 0xfd2fb528 || (b.readUInt32LE(0) & 0xfffffff0) === 0x184d2a50)) return 'zstd';
  if (b[0] === 0x42 && b[1] === 0x5a && b[2] === 0x68) throw invalid(`${src.what} is bzip2-compressed, which image layers may not be`);
  if (b.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) throw invalid(`${src.what} is xz-compressed, which image layers may not be`);
  return 'none';
}

export interface Digests {
  compressed: string;
  compressedSize: number;
  diffId: string;
}

/** A pass-through stream that takes the sha256 and the byte count of what flows through it. */
export function digestTap(): { tap: Transform; digest: () => string; size: () => number } {
  const h = createHash('sha256');
  let n = 0;
  const tap = new Transform({
    transform(chunk: Buffer, _e, cb) {
      h.update(chunk);
      n += chunk.length;
      cb(null, chunk);
    },
  });
  return { tap, digest: () => 'sha256:' + h.digest('hex'), size: () => n };
}

/** The blob's uncompressed bytes, with both digests computed on the way. */
export function openLayer(
  src: BlobSource,
  compression: Compression,
  signal?: AbortSignal,
): { reader: ByteReader; finish: () => Promise<Digests>; destroy: () => void } {
  const { tap: tapC, digest: compressed, size: compressedSize } = digestTap();
  const { tap: tapU, digest: diffId } = digestTap();
  const input = src.open();
  if (signal) addAbortSignal(signal, input);
  let child: ReturnType<typeof spawn> | undefined;
  let childDone: Promise<void> = Promise.resolve();
  const stages: NodeJS.ReadWriteStream[] = [tapC];
  if (compression === 'gzip') stages.push(createGunzip());
  if (compression === 'zstd') {
    const c = spawn('zstd', ['-d', '-c', '-q'], { stdio: ['pipe', 'pipe', 'pipe'], signal });
    child = c;
    let stderr = '';
    c.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-2000)));
    childDone = new Promise((resolve, reject) => {
      c.on('error', (e) => reject(new CubeboxError('unavailable', `cannot run zstd to decompress ${src.what}: ${e.message}`)));
      c.on('close', (code, sig) => {
        if (code === 0) resolve();
        else reject(invalid(`${src.what} is not valid zstd data: ${stderr.trim() || `zstd exit ${code ?? sig}`}`));
      });
    });
    childDone.catch(() => {});
    stages.push(Duplex.from({ writable: c.stdin!, readable: c.stdout! }));
  }
  stages.push(tapU);
  let pipeErr: Error | undefined;
  const done = new Promise<void>((resolve) => {
    const last = (pipeline as unknown as (...a: unknown[]) => NodeJS.ReadableStream)(input, ...stages, (err: Error | null) => {
      if (err) pipeErr = err;
      resolve();
    });
    void last;
  });
  const reader = new ByteReader(tapU as AsyncIterable<Buffer>);
  const finish = async (): Promise<Digests> => {
    await reader.drain();
    await done;
    try {
      await childDone;
    } catch (e) {
      if (!signal?.aborted) throw e;
    }
    if (pipeErr) throw decodeError(src, pipeErr, signal);
    return { compressed: compressed(), compressedSize: compressedSize(), diffId: diffId() };
  };
  const destroy = (): void => {
    input.destroy();
    tapU.destroy();
    child?.kill('SIGKILL');
  };
  return { reader, finish, destroy };
}

export function decodeError(src: BlobSource, err: unknown, signal?: AbortSignal): Error {
  if (signal?.aborted) return abortError(signal);
  if (err instanceof CubeboxError) return err;
  if (err instanceof TarFormatError) return invalid(`${src.what}: ${err.message}`);
  const e = err as NodeJS.ErrnoException;
  if (e?.code?.startsWith?.('Z_')) return invalid(`${src.what} is not valid gzip data: ${e.message}`);
  return err instanceof Error ? err : new Error(String(err));
}

export function abortError(signal: AbortSignal): Error {
  const r: unknown = signal.reason;
  return r instanceof Error ? r : new CubeboxError('unavailable', 'image import aborted');
}

/** Checks the stored blob alone (when its content could not even be read). */
export async function verifyBlob(src: BlobSource, expect: LayerExpect): Promise<void> {
  if (!expect.digest && expect.size === undefined) return;
  const h = createHash('sha256');
  let n = 0;
  try {
    for await (const c of src.open()) {
      h.update(c as Buffer);
      n += (c as Buffer).length;
    }
  } catch {
    return;
  }
  checkDigests(src, { ...expect, diffId: '' }, { compressed: 'sha256:' + h.digest('hex'), compressedSize: n, diffId: '' });
}

export function checkDigests(src: BlobSource, expect: LayerExpect, got: Digests): void {
  if (expect.size !== undefined && got.compressedSize !== expect.size) {
    throw invalid(`${src.what} is ${got.compressedSize} bytes but the manifest says ${expect.size}: the image is corrupt`);
  }
  if (expect.digest && got.compressed !== expect.digest) {
    throw invalid(`${src.what} does not match its digest: expected ${expect.digest}, got ${got.compressed}: the image is corrupt`);
  }
  if (got.diffId !== expect.diffId) {
    throw invalid(
      `${src.what} does not match the image config's diff ID: expected ${expect.diffId}, uncompressed content is ${got.diffId}: the image is corrupt`,
    );
  }
}
