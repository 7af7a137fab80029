// The shared store: what every API replica needs to agree on (teams with their quotas, API keys,
// secrets), behind asynchronous repositories with two implementations: the node's own SQLite
// file (the default, shared-sqlite.ts) and PostgreSQL (pg/). A node's host facts (sandboxes,
// the resource ledger, network slots, volumes) stay in its embedded SQLite store (store.ts), so
// a node keeps its sandboxes, reaper and reconciler running while a shared database is away.
//
// Steps that must be atomic across rows or tables (a key and the team it makes, a quota's
// read-modify-write, a secret counted against its team's limit) are single repository
// operations: each implementation runs one in one transaction (SQLite: an immediate one;
// PostgreSQL: row locks or an advisory lock), so they hold across processes.
import type { ApiKeyRow } from './api-keys.js';
import type { SecretRow } from './secrets.js';
import type { TeamRow } from './teams.js';

export type { ApiKeyRow, SecretRow, TeamRow };

export interface SharedTeamRepo {
  /** The team whose id or name is `idOrName`. */
  get(idOrName: string): Promise<TeamRow | undefined>;
  /** Oldest first. */
  list(): Promise<TeamRow[]>;
  /**
   * The team whose id or name is `ref`; when there is none, `make(ref)` (which may throw to
   * refuse the name) is inserted. Two makers racing on one name both get the one team.
   */
  ensure(ref: string, make: (ref: string) => TeamRow): Promise<TeamRow>;
  /**
   * A quota's read-modify-write under the team's lock: `change` gets the stored quota (JSON) and
   * returns the new one, or throws to change nothing. undefined: no such team.
   */
  changeQuota(ref: string, change: (quota: string) => string): Promise<TeamRow | undefined>;
  /** The ids of the teams that have at least one live (not revoked) key. */
  withLiveKeys(): Promise<Set<string>>;
}

export interface SharedKeyRepo {
  /** A new key of the team `teamRef` (made as ensure() makes it, in the same transaction). */
  create(teamRef: string, make: (ref: string) => TeamRow, row: Omit<ApiKeyRow, 'team'>): Promise<{ key: ApiKeyRow; team: TeamRow }>;
  byHash(hash: string): Promise<ApiKeyRow | undefined>;
  get(id: string): Promise<ApiKeyRow | undefined>;
  /** Every key, revoked ones included, oldest first. */
  list(): Promise<ApiKeyRow[]>;
  /** Sets revokedAt unless the key is revoked already. */
  revoke(id: string, at: number): Promise<void>;
  rename(id: string, name: string): Promise<void>;
  /** Best effort: writes lastUsedAt, never waiting behind another writer and never failing. */
  touch(id: string, at: number): Promise<void>;
  /** Whether the team has at least one API key that is not revoked. */
  teamHasLiveKey(team: string): Promise<boolean>;
}

export interface SharedSecretRepo {
  /** The team's secret by id (`sec_...`) or by lower-cased name; another team's is not found. */
  find(team: string, ref: string): Promise<SecretRow | undefined>;
  /** A page of the team's secrets in name order, starting after `afterName`. */
  list(team: string, afterName: string | undefined, limit: number): Promise<SecretRow[]>;
  count(team: string): Promise<number>;
  /**
   * Inserts a secret in one step with its checks: a conflict error when the team has one of that
   * name, and `admit(count)` (the team's secrets now; it throws to refuse) under the team's lock.
   */
  insert(row: SecretRow, admit: (count: number) => void): Promise<void>;
  /** Replaces the value (a new version) and the metadata. */
  update(row: Pick<SecretRow, 'id' | 'team' | 'version' | 'sealed' | 'metadata' | 'updatedAt'>): Promise<void>;
  delete(team: string, id: string): Promise<boolean>;
}

/**
 * A copy of the teams and of which have a live key, read synchronously by the quota checks and
 * both planes' blocked-team check. The SQLite store reads its file at each call; PostgreSQL's is
 * a copy in memory, reloaded when older than its TTL and after changes made in this process.
 */
export interface TeamDirectory {
  team(ref: string): TeamRow | undefined;
  teams(): TeamRow[];
  hasLiveKey(team: string): boolean;
  /**
   * Brings the copy up to date when it is older than its TTL, or when `team` (a caller's, who
   * just showed a live key) is not in it as a live team. Throws 'unavailable' when the store
   * cannot be read.
   */
  fresh(team?: string): Promise<void>;
  /** After a change in this process: the next fresh() reloads. */
  invalidate(): void;
}

export interface SharedStore {
  readonly kind: 'sqlite' | 'postgres';
  readonly teams: SharedTeamRepo;
  readonly keys: SharedKeyRepo;
  readonly secrets: SharedSecretRepo;
  readonly directory: TeamDirectory;
  /** How long a verified key may be trusted without reading the store again, ms (0: never cached). */
  readonly keyCacheMs: number;
  close(): Promise<void>;
}

/** The shared store's location as logs may show it: the URL without its password (in the user part or a password= parameter). */
export function redactUrl(url: string): string {
  return url.replace(/^([a-z]+:\/\/[^:/@?#]*:)[^/?#]*@/i, '$1***@').replace(/([?&]password=)[^&#]*/gi, '$1***');
}

/** Whether a --database value names PostgreSQL. */
export function isPostgresUrl(url: string | undefined): url is string {
  return !!url && /^postgres(ql)?:\/\//i.test(url);
}
