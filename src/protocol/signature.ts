// Access-token comparisons and the signatures of /files URLs (E2B's downloadUrl/uploadUrl),
// computed the same way by the host (proxy routing, auto-resume) and envd (which enforces them).
// No host-only imports here: envd's bundle pulls this file in.
import { createHash, timingSafeEqual } from 'node:crypto';

export type FileOp = 'read' | 'write';

/** The signature of a /files URL: "v1_" + base64(sha256(path:op:user:token[:exp])) without padding. */
export function fileSignature(path: string, op: FileOp, user: string | undefined, token: string, expiration?: number): string {
  let raw = `${path}:${op}:${user ?? ''}:${token}`;
  if (expiration !== undefined) raw += `:${expiration}`;
  return 'v1_' + createHash('sha256').update(raw).digest('base64').replace(/=+$/, '');
}

/** Constant-time string equality (digests first, so lengths do not leak either). */
export function safeEqual(a: string, b: string): boolean {
  const ha = createHash('sha256').update(a).digest();
  const hb = createHash('sha256').update(b).digest();
  return timingSafeEqual(ha, hb) && a.length === b.length;
}

/** What a /files request may do by its method: GET/HEAD read, POST writes, anything else neither. */
export function fileOpOf(method: string | undefined): FileOp | undefined {
  return method === 'POST' ? 'write' : method === 'GET' || method === 'HEAD' ? 'read' : undefined;
}

/** The signature fields of a signed /files URL. */
export interface SignedFileRequest {
  signature: string;
  path: string;
  user: string | undefined;
  /** Unix seconds; signed along with the rest when present. */
  expiration: number | undefined;
}

/**
 * The signature fields of a /files URL: undefined when it carries no signature, 'bad-expiration'
 * when its signature_expiration is not an integer.
 */
export function signedFileRequest(url: URL): SignedFileRequest | 'bad-expiration' | undefined {
  const signature = url.searchParams.get('signature');
  if (!signature) return undefined;
  const expRaw = url.searchParams.get('signature_expiration');
  let expiration: number | undefined;
  if (expRaw !== null && expRaw !== '') {
    expiration = Number(expRaw);
    if (!Number.isInteger(expiration)) return 'bad-expiration';
  }
  return { signature, path: url.searchParams.get('path') ?? '', user: url.searchParams.get('username') ?? undefined, expiration };
}

/** Whether the request's signature was made with this access token for this operation (expiry is the caller's check). */
export function signatureMatches(req: SignedFileRequest, op: FileOp, token: string): boolean {
  return safeEqual(req.signature, fileSignature(req.path, op, req.user, token, req.expiration));
}
