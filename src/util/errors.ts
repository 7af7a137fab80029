/** Errors that carry a kind the CLI and the API map to exit codes and HTTP statuses. */
export type ErrorKind =
  | 'not_found'
  | 'invalid_argument'
  | 'conflict' // wrong state for the operation
  | 'unavailable'
  | 'internal';

export class CubeboxError extends Error {
  constructor(
    readonly kind: ErrorKind,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'CubeboxError';
  }
}

/** The HTTP status of each kind: the one map every HTTP surface (the API, the control socket) answers with. */
export const HTTP_STATUS: Record<ErrorKind, number> = { not_found: 404, invalid_argument: 400, conflict: 409, unavailable: 503, internal: 500 };

/** The kind of any thrown value: a CubeboxError's own, otherwise internal. */
export function errorKind(err: unknown): ErrorKind {
  return err instanceof CubeboxError ? err.kind : 'internal';
}

export const notFound = (msg: string) => new CubeboxError('not_found', msg);
export const invalid = (msg: string) => new CubeboxError('invalid_argument', msg);
export const conflict = (msg: string) => new CubeboxError('conflict', msg);

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
