// The few calls of the OCI distribution API that sharing templates through a registry needs,
// over fetch: HEAD of a blob (a layer already there is never sent again), a monolithic blob
// upload (POST, then PUT with its digest), and manifests by tag or digest. Everything read is
// bounded and checked against its digest: what a registry answers is not trusted.
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { CubeboxError, invalid, notFound } from '../../util/errors.js';

export const MANIFEST_TYPE = 'application/vnd.oci.image.manifest.v1+json';
/** Manifests and configs are small: more than this is refused. */
export const MAX_MANIFEST = 4 << 20;
const DIGEST_RE = /^sha256:[0-9a-f]{64}$/;
/** One call's bound (a blob's transfer is bounded by its size over a slow link, not by this). */
const CALL_TIMEOUT_MS = 60_000;

export const sha256 = (b: Buffer | string) => 'sha256:' + createHash('sha256').update(b).digest('hex');

export function checkDigest(d: unknown, what: string): string {
  if (typeof d !== 'string' || !DIGEST_RE.test(d)) throw invalid(`${what}: not a sha256 digest`);
  return d;
}

/**
 * A registry repository named by a URL: `http(s)://[user:password@]host[:port][/prefix]`;
 * templates go to the repository `<prefix or cubebox>/templates`. Plain http is for a
 * registry on loopback or a private network only (the digests still protect the content).
 */
export class RegistryRepo {
  readonly base: string;
  readonly repo: string;
  private readonly auth?: string;

  constructor(url: string) {
    let u: URL;
    try {
      u = new URL(url);
    } catch {
      throw invalid(`bad registry URL '${url}': give http(s)://host[:port][/prefix]`);
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw invalid(`bad registry URL '${url}': http or https only`);
    if (u.search || u.hash) throw invalid(`bad registry URL '${url}': no query or fragment`);
    const prefix = u.pathname.replace(/^\/+|\/+$/g, '') || 'cubebox';
    if (!/^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:\/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$/.test(prefix)) throw invalid(`bad registry URL '${url}': bad repository prefix`);
    if (u.username) this.auth = 'Basic ' + Buffer.from(`${decodeURIComponent(u.username)}:${decodeURIComponent(u.password)}`).toString('base64');
    this.base = `${u.protocol}//${u.host}`;
    this.repo = `${prefix}/templates`;
  }

  /** The URL without credentials, for messages and logs. */
  get shown(): string {
    return `${this.base}/${this.repo}`;
  }

  private async call(method: string, path: string, init: { headers?: Record<string, string>; body?: BodyInit; duplex?: 'half' } = {}): Promise<Response> {
    const url = path.startsWith('http') ? path : `${this.base}/v2/${this.repo}/${path}`;
    const headers: Record<string, string> = { ...init.headers };
    if (this.auth) headers.authorization = this.auth;
    try {
      return await fetch(url, {
        method,
        headers,
        body: init.body,
        duplex: init.duplex,
        redirect: 'follow',
        signal: AbortSignal.timeout(CALL_TIMEOUT_MS),
      } as RequestInit);
    } catch (err) {
      throw new CubeboxError('unavailable', `cannot reach the template registry ${this.shown}: ${(err as Error).message}`);
    }
  }

  private async refuse(r: Response, what: string): Promise<never> {
    const text = (await r.text().catch(() => '')).slice(0, 300);
    if (r.status === 404) throw notFound(`${what}: not in the template registry ${this.shown}`);
    throw new CubeboxError('unavailable', `the template registry ${this.shown} answered ${what} with ${r.status}: ${text}`);
  }

  /** The size of a blob the registry has; undefined when it has none of that digest. */
  async blobSize(digest: string): Promise<number | undefined> {
    const r = await this.call('HEAD', `blobs/${checkDigest(digest, 'blob')}`);
    if (r.status === 404) return undefined;
    if (r.status !== 200) return this.refuse(r, `HEAD of blob ${digest}`);
    const size = Number(r.headers.get('content-length'));
    if (!Number.isSafeInteger(size) || size < 0) throw new CubeboxError('unavailable', `the template registry ${this.shown} gave blob ${digest} no size`);
    return size;
  }

  /** Uploads a blob (a file or bytes) in one PUT; the registry checks the digest too. */
  async putBlob(digest: string, size: number, body: { file: string } | Buffer): Promise<void> {
    const start = await this.call('POST', 'blobs/uploads/');
    if (start.status !== 202) return this.refuse(start, 'a blob upload');
    const location = start.headers.get('location');
    if (!location) throw new CubeboxError('unavailable', `the template registry ${this.shown} gave no upload location`);
    await start.body?.cancel();
    const target = new URL(location, this.base);
    if (target.origin !== new URL(this.base).origin) throw new CubeboxError('unavailable', `the template registry ${this.shown} sent the upload elsewhere`);
    target.searchParams.set('digest', digest);
    const data = Buffer.isBuffer(body) ? new Uint8Array(body) : (Readable.toWeb(createReadStream(body.file)) as unknown as BodyInit);
    const put = await this.call('PUT', target.toString(), {
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(size) },
      body: data,
      duplex: 'half',
    });
    if (put.status !== 201) return this.refuse(put, `the upload of blob ${digest}`);
    await put.body?.cancel();
  }

  /** Puts a manifest under a tag; resolves to its digest. */
  async putManifest(tag: string, bytes: Buffer): Promise<string> {
    const r = await this.call('PUT', `manifests/${encodeURIComponent(tag)}`, { headers: { 'content-type': MANIFEST_TYPE }, body: new Uint8Array(bytes) });
    if (r.status !== 201) return this.refuse(r, `the manifest of ${tag}`);
    await r.body?.cancel();
    return sha256(bytes);
  }

  /** A manifest by its digest: the bytes must hash to it. */
  async getManifest(digest: string): Promise<Buffer> {
    const r = await this.call('GET', `manifests/${checkDigest(digest, 'manifest')}`, { headers: { accept: MANIFEST_TYPE } });
    if (r.status !== 200) return this.refuse(r, `manifest ${digest}`);
    const bytes = await bounded(r, MAX_MANIFEST, `manifest ${digest}`);
    if (sha256(bytes) !== digest) throw invalid(`the template registry answered manifest ${digest} with other content (${sha256(bytes)}): refused`);
    return bytes;
  }

  /** A small blob (a config) by digest, checked. */
  async getBlobBytes(digest: string, size: number): Promise<Buffer> {
    if (size > MAX_MANIFEST) throw invalid(`blob ${digest} is ${size} bytes, more than a config may be`);
    const r = await this.call('GET', `blobs/${checkDigest(digest, 'blob')}`);
    if (r.status !== 200) return this.refuse(r, `blob ${digest}`);
    const bytes = await bounded(r, size, `blob ${digest}`);
    if (bytes.length !== size || sha256(bytes) !== digest) throw invalid(`blob ${digest} from the template registry does not match its digest: refused`);
    return bytes;
  }

  /** A blob written to a new file (never more than size bytes), its digest checked; the file is removed when it does not match. */
  async getBlobToFile(digest: string, size: number, file: string): Promise<void> {
    const r = await this.call('GET', `blobs/${checkDigest(digest, 'blob')}`);
    if (r.status !== 200 || !r.body) return this.refuse(r, `blob ${digest}`);
    const h = createHash('sha256');
    let n = 0;
    const tap = async function* (src: AsyncIterable<Uint8Array>) {
      for await (const c of src) {
        n += c.length;
        if (n > size) throw invalid(`blob ${digest} from the template registry is larger than its manifest says (${size} bytes): refused`);
        h.update(c);
        yield c;
      }
    };
    try {
      await pipeline(
        Readable.fromWeb(r.body as import('node:stream/web').ReadableStream<Uint8Array>),
        tap,
        createWriteStream(file, { flags: 'wx', mode: 0o600 }),
      );
      const got = 'sha256:' + h.digest('hex');
      if (n !== size || got !== digest) throw invalid(`blob ${digest} from the template registry does not match its digest (got ${got}, ${n} bytes): refused`);
    } catch (err) {
      await fs.rm(file, { force: true });
      throw err;
    }
  }
}

async function bounded(r: Response, limit: number, what: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of r.body as unknown as AsyncIterable<Uint8Array>) {
    n += c.length;
    if (n > limit) throw invalid(`${what} from the template registry is larger than ${limit} bytes: refused`);
    chunks.push(Buffer.from(c));
  }
  return Buffer.concat(chunks);
}
