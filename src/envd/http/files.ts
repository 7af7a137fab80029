// GET and POST /files (contract 5, 5.2, 5.3): download with Range and gzip, upload as multipart
// (one or several files) or as a raw body (optionally gzip-encoded), metadata headers, and the
// access token or URL signature checks.
// Every file access runs with the credentials of the request's user (fs/user-fs.ts).
import type { IncomingMessage, ServerResponse } from 'node:http';
import { posix } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createGunzip, createGzip, constants as zlibConstants } from 'node:zlib';
import { Readable } from 'node:stream';
import { safeEqual, signatureMatches, signedFileRequest } from '../../protocol/signature.js';
import { lookupUser } from '../auth.js';
import { metadataProblem } from '../fs/metadata.js';
import type { FsOps } from '../fs/ops.js';
import type { UserFs } from '../fs/user-fs.js';
import { resolvePath } from '../paths.js';
import type { EnvdState } from '../state.js';
import type { UserInfo } from '../users.js';
import { MultipartError, MultipartParser, multipartBoundary } from './multipart.js';
import { HttpError, sendError, sendJson } from './respond.js';

export { HttpError, sendError, sendJson };

function fsError(e: unknown, path: string): HttpError {
  if (e instanceof HttpError) return e;
  if (e instanceof MultipartError) return new HttpError(400, e.message);
  const err = e as NodeJS.ErrnoException;
  switch (err.code) {
    case 'ENOENT':
      return new HttpError(404, `file not found: ${path}`);
    case 'EISDIR':
      return new HttpError(400, `path is a directory: ${path}`);
    case 'ENOTDIR':
      return new HttpError(400, `a parent of the path is not a directory: ${path}`);
    case 'ENOSPC':
    case 'EDQUOT':
      return new HttpError(507, `not enough disk space: ${path}`);
    case 'ENOTSUP':
    case 'EOPNOTSUPP':
      return new HttpError(400, `the filesystem of ${path} does not keep extended attributes, so it cannot hold file metadata`);
    case 'EACCES':
    case 'EPERM':
      return new HttpError(403, `permission denied: ${path}`);
    case 'Z_DATA_ERROR':
    case 'Z_BUF_ERROR':
      return new HttpError(400, `invalid gzip body: ${err.message}`);
    default:
      return new HttpError(500, err.message ?? String(e));
  }
}

/** Token or signature check for /files; throws 401. */
function authorize(state: EnvdState, req: IncomingMessage, url: URL, op: 'read' | 'write'): void {
  const token = state.accessToken;
  if (!token) return;
  const presented = req.headers['x-access-token'];
  if (typeof presented === 'string' && presented !== '') {
    if (!safeEqual(presented, token)) throw new HttpError(401, 'invalid access token');
    return;
  }
  const signed = signedFileRequest(url);
  if (!signed) throw new HttpError(401, 'missing access token or signature');
  if (signed === 'bad-expiration') throw new HttpError(401, 'invalid signature expiration');
  if (!signatureMatches(signed, op, token)) throw new HttpError(401, 'invalid signature');
  const exp = signed.expiration;
  if (exp !== undefined && exp < Math.floor(Date.now() / 1000)) throw new HttpError(401, 'signature is already expired');
}

function fileUser(state: EnvdState, url: URL): UserInfo {
  const name = url.searchParams.get('username') || undefined;
  const u = lookupUser(state, name);
  if (!u) throw new HttpError(401, `invalid username: '${name ?? state.defaultUser}'`);
  return u;
}

/** The operations as the user, or 403 when they cannot be had. */
function opsFor(userFs: UserFs, user: UserInfo): FsOps {
  try {
    return userFs.for(user);
  } catch (e) {
    throw new HttpError(403, (e as Error).message);
  }
}

const READ_CHUNK = 256 * 1024;

/** Bytes [start, end] of an open file, read on demand (the consumer's pace is the backpressure). */
function fileStream(fs: FsOps, h: number, start: number, end: number): Readable {
  let pos = start;
  return new Readable({
    highWaterMark: READ_CHUNK,
    read() {
      const len = Math.min(READ_CHUNK, end + 1 - pos);
      if (len <= 0) {
        this.push(null);
        return;
      }
      fs.read(h, pos, len).then(
        (buf) => {
          pos += buf.length;
          this.push(buf.length ? buf : null);
        },
        (e: Error) => this.destroy(e),
      );
    },
  });
}

function parseRange(header: string | undefined, size: number): { start: number; end: number } | 'unsatisfiable' | undefined {
  if (!header) return undefined;
  const m = /^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$/i.exec(header);
  if (!m) return undefined; // multiple or malformed ranges: serve the whole file
  const [, a, b] = m;
  if (!a && !b) return undefined;
  let start: number;
  let end: number;
  if (!a) {
    const suffix = Number(b);
    if (suffix === 0) return 'unsatisfiable';
    start = Math.max(0, size - suffix);
    end = size - 1;
  } else {
    start = Number(a);
    end = b ? Math.min(Number(b), size - 1) : size - 1;
  }
  if (start >= size || start > end) return 'unsatisfiable';
  return { start, end };
}

function acceptsGzip(header: string | undefined): boolean {
  if (!header) return false;
  for (const part of header.split(',')) {
    const [coding, ...params] = part.trim().split(';');
    if (coding?.trim().toLowerCase() !== 'gzip' && coding?.trim() !== '*') continue;
    const q = params.map((p) => /^\s*q\s*=\s*([\d.]+)/.exec(p)?.[1]).find((v) => v !== undefined);
    if (q === undefined || Number(q) > 0) return true;
  }
  return false;
}

export async function handleDownload(state: EnvdState, userFs: UserFs, req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
  authorize(state, req, url, 'read');
  const user = fileUser(state, url);
  const rawPath = url.searchParams.get('path');
  if (!rawPath) throw new HttpError(400, 'the path query parameter is required');
  const p = resolvePath(rawPath, user.home);
  const fs = opsFor(userFs, user);
  let opened: { h: number; stat: { size: bigint; mtime: Date; isFile(): boolean } };
  try {
    opened = await fs.openRead(p);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EISDIR') throw new HttpError(400, `path is a directory: ${p}`);
    if (code === 'EINVAL') throw new HttpError(400, `not a regular file: ${p}`);
    throw fsError(e, p);
  }
  const { h, stat: st } = opened;
  try {
    const size = Number(st.size);
    const name = posix.basename(p);
    const headers: Record<string, string | number> = {
      'Content-Type': 'application/octet-stream',
      'Content-Disposition': `attachment; filename="${name.replace(/["\\\r\n]/g, '_')}"; filename*=UTF-8''${encodeURIComponent(name)}`,
      'Accept-Ranges': 'bytes',
      'Last-Modified': st.mtime.toUTCString(),
    };
    const range = parseRange(req.headers.range, size);
    if (range === 'unsatisfiable') {
      res.writeHead(416, { 'Content-Range': `bytes */${size}`, 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ code: 416, message: 'requested range not satisfiable' }));
      return;
    }
    if (range) {
      headers['Content-Range'] = `bytes ${range.start}-${range.end}/${size}`;
      headers['Content-Length'] = range.end - range.start + 1;
      res.writeHead(206, headers);
      if (req.method === 'HEAD') return void res.end();
      await pipeline(fileStream(fs, h, range.start, range.end), res);
      return;
    }
    if (acceptsGzip(req.headers['accept-encoding']) && size > 0) {
      headers['Content-Encoding'] = 'gzip';
      headers['Vary'] = 'Accept-Encoding';
      res.writeHead(200, headers);
      if (req.method === 'HEAD') return void res.end();
      await pipeline(fileStream(fs, h, 0, size - 1), createGzip({ level: zlibConstants.Z_BEST_SPEED }), res);
      return;
    }
    headers['Content-Length'] = size;
    res.writeHead(200, headers);
    if (req.method === 'HEAD') return void res.end();
    await pipeline(fileStream(fs, h, 0, size - 1), res);
  } finally {
    await fs.close(h).catch(() => {});
  }
}

/** X-Metadata-<key> headers (keys lowercased), checked against the limits of one file's metadata. */
function metadataFromHeaders(req: IncomingMessage): Record<string, string> {
  const meta: Record<string, string> = {};
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    const key = req.rawHeaders[i] ?? '';
    if (key.length > 11 && key.slice(0, 11).toLowerCase() === 'x-metadata-') meta[key.slice(11).toLowerCase()] = req.rawHeaders[i + 1] ?? '';
  }
  const problem = metadataProblem(meta);
  if (problem) throw new HttpError(400, problem);
  return meta;
}

interface WrittenFile {
  name: string;
  path: string;
  type: 'file';
  metadata?: Record<string, string>;
}

class FileWriter {
  private h?: number;

  constructor(
    readonly path: string,
    private readonly fs: FsOps,
    private readonly metadata: Record<string, string>,
  ) {}

  /** Create or truncate the file as the user (parents 0755, the file 0644, both the user's). */
  async open(): Promise<void> {
    try {
      this.h = (await this.fs.openWrite(this.path)).h;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EISDIR') throw new HttpError(400, `path is a directory: ${this.path}`);
      throw fsError(e, this.path);
    }
  }

  async write(chunk: Buffer): Promise<void> {
    try {
      await this.fs.write(this.h as number, chunk);
    } catch (e) {
      throw fsError(e, this.path);
    }
  }

  async close(): Promise<WrittenFile> {
    const h = this.h as number;
    this.h = undefined;
    try {
      await this.fs.close(h);
      // an overwrite keeps the inode and so its attributes: set exactly the metadata given now
      await this.fs.setMetadata(this.path, this.metadata);
    } catch (e) {
      await this.fs.close(h).catch(() => {});
      throw fsError(e, this.path);
    }
    const out: WrittenFile = { name: posix.basename(this.path), path: this.path, type: 'file' };
    if (Object.keys(this.metadata).length) out.metadata = this.metadata;
    return out;
  }

  async abort(): Promise<void> {
    if (this.h !== undefined) await this.fs.close(this.h).catch(() => {});
    this.h = undefined;
  }
}

export async function handleUpload(state: EnvdState, userFs: UserFs, req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
  authorize(state, req, url, 'write');
  const user = fileUser(state, url);
  const fs = opsFor(userFs, user);
  const queryPath = url.searchParams.get('path') || undefined;
  const metadata = metadataFromHeaders(req);
  const encoding = (req.headers['content-encoding'] ?? 'identity').trim().toLowerCase();
  let body: Readable = req;
  if (encoding === 'gzip' || encoding === 'x-gzip') body = req.pipe(createGunzip());
  else if (encoding !== 'identity' && encoding !== '') throw new HttpError(400, `unsupported content encoding: ${encoding}`);
  body.on('error', () => {});

  const results: WrittenFile[] = [];
  const boundary = multipartBoundary(req.headers['content-type']);
  if (!boundary) {
    if (!queryPath) throw new HttpError(400, 'the path query parameter is required');
    const w = new FileWriter(resolvePath(queryPath, user.home), fs, metadata);
    await w.open();
    try {
      for await (const chunk of body.iterator({ destroyOnReturn: false })) await w.write(chunk as Buffer);
    } catch (e) {
      await w.abort();
      throw fsError(e, w.path);
    }
    results.push(await w.close());
    sendJson(res, 200, results);
    return;
  }

  const seen = new Set<string>();
  let current: FileWriter | undefined;
  let skipping = false;
  const parser = new MultipartParser(boundary, {
    begin: async (part) => {
      if (part.name !== 'file') {
        skipping = true;
        return;
      }
      skipping = false;
      const target = queryPath ?? part.filename;
      if (!target) throw new HttpError(400, 'missing file path: give the path query parameter or a filename');
      const abs = resolvePath(target, user.home);
      if (seen.has(abs)) throw new HttpError(400, `the same path appears twice in the upload: ${abs}`);
      seen.add(abs);
      current = new FileWriter(abs, fs, metadata);
      await current.open();
    },
    data: async (chunk) => {
      if (!skipping && current) await current.write(chunk);
    },
    end: async () => {
      if (!skipping && current) {
        const w = current;
        current = undefined;
        results.push(await w.close());
      }
    },
  });
  try {
    // An early exit must not destroy the request (that would reset the connection before the
    // error response): the server drains what is left.
    for await (const chunk of body.iterator({ destroyOnReturn: false })) {
      await parser.write(chunk as Buffer);
    }
    await parser.finish();
  } catch (e) {
    await current?.abort();
    throw fsError(e, current?.path ?? queryPath ?? '');
  }
  if (results.length === 0) throw new HttpError(400, 'no file in the multipart body');
  sendJson(res, 200, results);
}
