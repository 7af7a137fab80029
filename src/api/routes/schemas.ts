// The request-body schemas of the control plane, and the E2B-style message of a failed one.
//
// Routes attach a schema's verdict (attachValidation) and throw it themselves after the checks
// they make first (the sandbox or template exists), so a request that is both malformed and
// aimed at nothing answers 404 as before. The listener's ajv runs without type coercion (CONTROL_PLANE_AJV): a timeout sent as "10" is
// refused, as it was when the routes checked by hand. Bodies of the lifecycle routes may be
// anything, as before: only an object's fields are checked. Query strings stay checked in the
// routes: a repeated parameter counts by its last value, which a schema cannot say.
import type { FastifyError } from 'fastify';

export const MAX_TIMEOUT_SEC = 24 * 60 * 60;

/** ajv options of the listener the control plane is registered on (fastify's `ajv` option). */
export const CONTROL_PLANE_AJV = { customOptions: { coerceTypes: false, allowUnionTypes: true } } as const;

/** Seconds; null is the same as absent. */
const seconds = { type: ['number', 'null'], minimum: 0, maximum: MAX_TIMEOUT_SEC } as const;
const stringMap = { type: ['object', 'null'], additionalProperties: { type: 'string' } } as const;
/** Any JSON value: the body of a route whose fields are all optional. */
const ANY = ['object', 'array', 'string', 'number', 'boolean', 'null'];

/** E2B's SandboxVolumeMount list: a team volume by name, and where it appears in the sandbox. */
const volumeMounts = {
  type: ['array', 'null'],
  maxItems: 16,
  items: { type: 'object', required: ['name', 'path'], properties: { name: { type: 'string' }, path: { type: 'string' } } },
} as const;
export const volumeBody = { type: 'object', required: ['name'], properties: { name: { type: 'string' } } } as const;
export const createBody = {
  type: 'object',
  properties: { templateID: { type: ['string', 'null'], minLength: 1 }, metadata: stringMap, envVars: stringMap, timeout: seconds, volumeMounts },
} as const;
export const timeoutBody = { type: ANY, properties: { timeout: seconds } } as const;
export const refreshBody = { type: ANY, properties: { duration: seconds } } as const;
export const snapshotBody = { type: ANY, properties: { name: { type: 'string' } } } as const;
export const MAX_FORK_COUNT = 16;
export const forkBody = { type: ANY, properties: { count: { type: ['integer', 'null'], minimum: 1, maximum: MAX_FORK_COUNT }, timeout: seconds } } as const;

const FIELD_MESSAGES: Record<string, (keyword: string) => string> = {
  templateID: () => 'templateID must be a string',
  metadata: () => 'metadata must be an object of strings',
  envVars: () => 'envVars must be an object of strings',
  timeout: (kw) => secondsMessage('timeout', kw),
  duration: (kw) => secondsMessage('duration', kw),
  count: () => `count must be an integer between 1 and ${MAX_FORK_COUNT}`,
  name: () => 'name must be a string',
  volumeMounts: () => 'volumeMounts must be a list (at most 16) of { name, path } strings',
};

function secondsMessage(key: string, keyword: string): string {
  return keyword === 'maximum' ? `${key} cannot be greater than ${MAX_TIMEOUT_SEC} seconds (24 hours)` : `${key} must be a non-negative number of seconds`;
}

/** The path of a schema failure's value: [] for the body itself, [field], or [field, key] in a string map. */
export function invalidPath(err: FastifyError): string[] {
  const e = err.validation?.[0];
  return (e?.instancePath ?? '')
    .split('/')
    .slice(1)
    .map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'));
}

/** The message of a schema failure, worded as the routes' own checks word theirs. */
export function validationMessage(err: FastifyError): string {
  const e = err.validation?.[0];
  if (!e) return err.message;
  const [field, key] = invalidPath(err);
  if (field === undefined && e.keyword === 'required') return `${String(e.params.missingProperty)} is required`;
  if (field === undefined) return err.validationContext === 'body' ? 'request body must be a JSON object' : err.message;
  // only the string maps have fields below the top level
  if (key !== undefined && field !== 'volumeMounts') return `${field}.${key} must be a string`;
  return FIELD_MESSAGES[field]?.(e.keyword) ?? err.message;
}
