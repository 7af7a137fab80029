/** Errors that carry a kind the CLI and the API map to exit codes and HTTP statuses. */
export type ErrorKind =
  | 'not_found'
  | 'invalid_argument'
  | 'conflict' // wrong state for the operation
  | 'unavailable'
  | 'busy' // over capacity for now: try again after retryAfterSec
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
export const HTTP_STATUS: Record<ErrorKind, number> = { not_found: 404, invalid_argument: 400, conflict: 409, unavailable: 503, busy: 429, internal: 500 };

/** The kind of any thrown value: a CubeboxError's own, otherwise internal. */
export function errorKind(err: unknown): ErrorKind {
  return err instanceof CubeboxError ? err.kind : 'internal';
}

export const notFound = (msg: string) => new CubeboxError('not_found', msg);
export const invalid = (msg: string) => new CubeboxError('invalid_argument', msg);
export const conflict = (msg: string) => new CubeboxError('conflict', msg);
export const busy = (msg: string, retryAfterSec: number) => new CubeboxError('busy', msg, { retryAfterSec });

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
