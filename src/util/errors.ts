/** Errors that carry a kind the CLI and the API map to exit codes and HTTP statuses. */
export type ErrorKind =
  | 'not_found'
  | 'invalid_argument'
  | 'conflict' // wrong state for the operation
  | 'unavailable'
  | 'busy' // over capacity for now: try again after retryAfterSec
  | 'insufficient_storage' // the sandbox's own disk is full
  | 'internal';

export class CubeboxError extends Error {
  /** Seconds after which the same request may succeed (HTTP Retry-After), for busy and unavailable. */
  readonly retryAfterSec?: number;

  constructor(
    readonly kind: ErrorKind,
    message: string,
    options?: { cause?: unknown; retryAfterSec?: number },
  ) {
    super(message, options);
    this.name = 'CubeboxError';
    if (options?.retryAfterSec !== undefined) this.retryAfterSec = Math.max(1, Math.ceil(options.retryAfterSec));
  }
}

/** The HTTP status of each kind: the one map every HTTP surface (the API, the control socket) answers with. */
export const HTTP_STATUS: Record<ErrorKind, number> = {
  not_found: 404,
  invalid_argument: 400,
  conflict: 409,
  unavailable: 503,
  busy: 429,
  insufficient_storage: 507,
  internal: 500,
};

/** The kind of any thrown value: a CubeboxError's own, a full disk's (see diskFull), otherwise internal. */
export function errorKind(err: unknown): ErrorKind {
  const e = diskFull(err) ?? err;
  return e instanceof CubeboxError ? e.kind : 'internal';
}

/** When a client may try again after the host's disk was found full. */
export const DISK_FULL_RETRY_SEC = 30;

const FULL_CODES = new Set(['ENOSPC', 'EDQUOT', 'SQLITE_FULL']);
const FULL_TEXT = /no space left on device|disk quota exceeded|database or disk is full/i;
/** A path on a sandbox's own disk (<data dir>/sandboxes/<id>/disk/...). */
const SANDBOX_DISK = /\/sandboxes\/([a-z0-9]+)\/disk(?=[/\s'":]|$)/;

/**
 * A disk-full failure (ENOSPC, EDQUOT, SQLite's "database or disk is full"), anywhere in the
 * error or its causes, as the error to answer with: on a sandbox's own disk 'insufficient_storage'
 * (507: the sandbox must free space), anywhere else the host's, 'unavailable' with a Retry-After
 * (503). Undefined for other errors and for errors that already say what they are.
 */
export function diskFull(err: unknown): CubeboxError | undefined {
  if (err instanceof CubeboxError && err.kind !== 'internal') return undefined;
  for (let e = err, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    const { code, path } = e as NodeJS.ErrnoException;
    if (!FULL_CODES.has(code ?? '') && !FULL_TEXT.test(e.message)) continue;
    const sandbox = SANDBOX_DISK.exec(`${path ?? ''} ${e.message}`)?.[1];
    if (sandbox) return new CubeboxError('insufficient_storage', `the disk of sandbox '${sandbox}' is full: free space in it`, { cause: err });
    return new CubeboxError('unavailable', 'the host is out of disk space; try again later', { cause: err, retryAfterSec: DISK_FULL_RETRY_SEC });
  }
  return undefined;
}

export const notFound = (msg: string) => new CubeboxError('not_found', msg);
export const invalid = (msg: string) => new CubeboxError('invalid_argument', msg);
export const conflict = (msg: string) => new CubeboxError('conflict', msg);
export const busy = (msg: string, retryAfterSec: number) => new CubeboxError('busy', msg, { retryAfterSec });

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
