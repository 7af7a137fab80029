// The PostgreSQL connection pool and what its failures mean to callers. The pool reconnects by
// itself: a client whose connection broke is dropped and the next query opens a new one. A
// database that cannot be reached is 'unavailable' (HTTP 503 with a Retry-After), never an
// internal error, and no message carries the URL (it may hold a password).
import pg from 'pg';
import { CubeboxError } from '../../util/errors.js';

/** When a client may try again after the database could not be reached. */
export const DATABASE_RETRY_SEC = 5;

export interface PoolLog {
  warn(obj: object, msg: string): void;
}

/**
 * Statements sent to the database by this process, by pool ('store': teams, keys, secrets;
 * 'cluster': heartbeats, placement and routes), for the Prometheus metrics and the bench's
 * database-load figures. Counted as sent (failed ones too); BEGIN and COMMIT are statements.
 */
export const dbStatements = new Map<string, number>();
const byClient = new WeakMap<object, number>();

/** Statements sent on one client of a pool so far (a transaction's own count). */
export const statementsOn = (client: object): number => byClient.get(client) ?? 0;

export function openPool(url: string, log?: PoolLog, name = 'store'): pg.Pool {
  const pool = new pg.Pool({
    connectionString: url,
    max: 10,
    idleTimeoutMillis: 30_000,
    connectionTimeoutMillis: 5_000,
    // a database that stops answering (not only one that refuses) must not hold requests forever
    query_timeout: 15_000,
    application_name: 'cubebox',
  });
  dbStatements.set(name, dbStatements.get(name) ?? 0);
  // every statement goes through a client's query (the pool's own query too): counted there
  pool.on('connect', (client) => {
    const query = client.query.bind(client) as (...a: unknown[]) => unknown;
    (client as { query: unknown }).query = (...a: unknown[]) => {
      dbStatements.set(name, (dbStatements.get(name) ?? 0) + 1);
      byClient.set(client, statementsOn(client) + 1);
      return query(...a);
    };
  });
  // an idle client's connection that breaks is reported here; unhandled, it would end the process
  let lastWarn = 0;
  pool.on('error', (err) => {
    if (Date.now() - lastWarn < 10_000) return;
    lastWarn = Date.now();
    log?.warn({ err: describe(err) }, 'a database connection broke; the pool opens a new one on the next query');
  });
  return pool;
}

const CONNECTION_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ENOENT',
  'ETIMEDOUT',
  'EPIPE',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EAI_AGAIN',
  '57P01',
  '57P02',
  '57P03',
  '53300',
]);
const CONNECTION_TEXT =
  /Connection terminated|timeout exceeded when trying to connect|Query read timeout|connection error|the database system is (starting up|shutting down)|Client was closed/i;

/** Whether the error says the database could not be reached (rather than refused the statement). */
export function unreachable(err: unknown): boolean {
  const e = err as { code?: string; message?: string } | undefined;
  if (!e) return false;
  if (e.code && (CONNECTION_CODES.has(e.code) || e.code.startsWith('08'))) return true;
  return CONNECTION_TEXT.test(e.message ?? '');
}

/** A unique constraint refused the row. */
export const uniqueViolation = (err: unknown): boolean => (err as { code?: string } | undefined)?.code === '23505';

/** The error as callers see it: unreachable -> 'unavailable' with a Retry-After; others unchanged. */
export function mapError(err: unknown): unknown {
  if (err instanceof CubeboxError || !unreachable(err)) return err;
  return new CubeboxError('unavailable', 'the database is unreachable; try again shortly', { cause: err, retryAfterSec: DATABASE_RETRY_SEC });
}

/** A failure's text for a log line: its code and message, never the connection string. */
export function describe(err: unknown): string {
  const e = err as { code?: string; message?: string };
  return [e?.code, e?.message]
    .filter(Boolean)
    .join(': ')
    .replace(/postgres(ql)?:\/\/\S+/gi, '<database URL>');
}

export type Queryable = pg.Pool | pg.PoolClient;

/** One statement's rows; failures mapped. */
export async function rows<R extends pg.QueryResultRow = Record<string, unknown>>(db: Queryable, text: string, values: unknown[] = []): Promise<R[]> {
  try {
    return (await db.query<R>(text, values)).rows;
  } catch (err) {
    throw mapError(err);
  }
}

/** Runs fn in one transaction on one client of the pool; failures mapped. */
export async function transaction<T>(pool: pg.Pool, fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
  let client: pg.PoolClient;
  try {
    client = await pool.connect();
  } catch (err) {
    throw mapError(err);
  }
  let broken: unknown;
  try {
    await client.query('BEGIN');
    const out = await fn(client);
    await client.query('COMMIT');
    return out;
  } catch (err) {
    if (unreachable(err)) broken = err;
    else await client.query('ROLLBACK').catch((e: unknown) => (broken = e));
    throw mapError(err);
  } finally {
    // a client whose connection broke is dropped, not handed to the next caller
    client.release(broken instanceof Error ? broken : broken === undefined ? undefined : true);
  }
}
