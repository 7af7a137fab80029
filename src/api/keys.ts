// API keys of the control plane: `e2b_` + 40 hex characters, stored as SHA-256 hashes only.
// Every key belongs to a team (E2B's model); an admin key manages every team's objects.
// Keys and teams live in the shared store (store/shared.ts): by default the instance's SQLite
// file, which the CLI (`cubebox keys ...`) and a running `cubebox serve` open through separate
// connections (WAL) and verify() reads on every request, so a key created or revoked by the CLI
// takes effect at once; on PostgreSQL a verified key is trusted for the store's keyCacheMs
// (a revoke through this process drops it at once, through another within that time).
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { SharedStore } from '../store/shared.js';
import { DEFAULT_TEAM_ID, type ApiKeyRow, type TeamRow } from '../store/store.js';
import { invalid, notFound } from '../util/errors.js';
import { randomId } from '../util/ids.js';

export interface ApiKeyInfo {
  id: string;
  name: string;
  /** The first characters of the key ('e2b_' + 8 hex), for display. */
  prefix: string;
  createdAt: number;
  lastUsedAt: number | null;
  revokedAt: number | null;
  /** The team's id. */
  team: string;
  /** Manages every team's sandboxes, snapshots and templates. */
  admin: boolean;
}

export const API_KEY_RE = /^e2b_[0-9a-f]{40}$/;
const PREFIX_LENGTH = 12; // 'e2b_' + 8 hex
const MIN_LOOKUP_PREFIX = 8; // 'e2b_' + 4 hex: shorter prefixes are refused by revoke()
const LAST_USED_RESOLUTION_MS = 60_000;

/** Team names: what `--team` takes and GET /teams shows. */
export const TEAM_NAME_RE = /^[a-z0-9][a-z0-9_.-]{0,62}$/;

function toInfo(r: ApiKeyRow): ApiKeyInfo {
  return {
    id: r.id,
    name: r.name,
    prefix: r.prefix,
    createdAt: r.createdAt,
    lastUsedAt: r.lastUsedAt,
    revokedAt: r.revokedAt,
    team: r.team ?? DEFAULT_TEAM_ID,
    admin: r.admin,
  };
}

export function hashApiKey(key: string): string {
  return createHash('sha256').update(key, 'utf8').digest('hex');
}

/** Verified keys kept at most this many (a flood of distinct keys must not grow memory). */
const KEY_CACHE_MAX = 10_000;

export class ApiKeys {
  /** Live keys verified within the store's keyCacheMs, by hash (PostgreSQL only: SQLite reads at each request). */
  private readonly verified = new Map<string, { row: ApiKeyRow; at: number }>();

  constructor(private readonly store: SharedStore) {}

  /**
   * A new key of a team (by name or id; a name that no team has yet makes that team; default:
   * the default team). `admin` keys manage every team's objects.
   */
  async create(name = '', opts: { team?: string; admin?: boolean } = {}): Promise<{ key: string; info: ApiKeyInfo }> {
    checkName(name);
    const key = 'e2b_' + randomBytes(20).toString('hex');
    // the key and the team it may make, in one transaction of the store
    const made = await this.store.keys.create(opts.team ?? DEFAULT_TEAM_ID, newTeam, {
      id: 'key_' + randomId(12),
      name,
      prefix: key.slice(0, PREFIX_LENGTH),
      hash: hashApiKey(key),
      createdAt: Date.now(),
      lastUsedAt: null,
      revokedAt: null,
      admin: !!opts.admin,
    });
    this.store.directory.invalidate();
    return { key, info: toInfo(made.key) };
  }

  /** The team named (by id or name), made when no team has that name. */
  async ensureTeam(ref: string): Promise<TeamRow> {
    const team = await this.store.teams.ensure(ref, newTeam);
    this.store.directory.invalidate();
    return team;
  }

  team(ref: string): Promise<TeamRow | undefined> {
    return this.store.teams.get(ref);
  }

  /** Every key, revoked ones included, oldest first. */
  async list(): Promise<ApiKeyInfo[]> {
    return (await this.store.keys.list()).map(toInfo);
  }

  /** A key by its id. */
  async get(id: string): Promise<ApiKeyInfo | undefined> {
    const r = await this.store.keys.get(id);
    return r && toInfo(r);
  }

  /** Gives a key (by id) another name. */
  async rename(id: string, name: string): Promise<ApiKeyInfo> {
    checkName(name);
    const row = await this.store.keys.get(id);
    if (!row) throw notFound(`no API key '${id}'`);
    await this.store.keys.rename(id, name);
    return toInfo({ ...row, name });
  }

  /**
   * Revokes a key named by its id, by a prefix of the key (at least 'e2b_' + 4 hex, at most the
   * stored prefix), or by the whole key. Revoking a revoked key changes nothing.
   */
  async revoke(idOrPrefix: string): Promise<ApiKeyInfo> {
    const arg = (idOrPrefix ?? '').trim();
    if (!arg) throw invalid('name a key by its id or the first characters of the key');
    let matches: ApiKeyRow[];
    if (API_KEY_RE.test(arg)) {
      const r = await this.store.keys.byHash(hashApiKey(arg));
      matches = r ? [r] : [];
    } else {
      const r = await this.store.keys.get(arg);
      matches = r ? [r] : [];
      if (!matches.length && arg.startsWith('e2b_')) {
        if (arg.length < MIN_LOOKUP_PREFIX) throw invalid(`key prefix '${arg}' is too short: give at least ${MIN_LOOKUP_PREFIX} characters`);
        if (arg.length <= PREFIX_LENGTH) {
          matches = (await this.store.keys.list()).filter((r) => r.prefix.startsWith(arg));
        }
      }
    }
    if (!matches.length) throw notFound(`no API key '${arg}'`);
    if (matches.length > 1) throw invalid(`'${arg}' matches several keys (${matches.map((m) => m.id).join(', ')}): use the key id`);
    const row = matches[0] as ApiKeyRow;
    if (row.revokedAt === null) {
      row.revokedAt = Date.now();
      await this.store.keys.revoke(row.id, row.revokedAt);
    }
    this.verified.delete(row.hash);
    this.store.directory.invalidate();
    return toInfo(row);
  }

  /**
   * The key's info when it is a live key, else undefined. The lookup is by the key's SHA-256
   * (an index search on the hash leaks nothing usable about the key) and the stored hash is
   * compared in constant time. lastUsedAt is written at most once a minute per key.
   */
  async verify(key: string | undefined): Promise<ApiKeyInfo | undefined> {
    if (typeof key !== 'string' || !API_KEY_RE.test(key)) return undefined;
    const hash = hashApiKey(key);
    const now = Date.now();
    const cached = this.verified.get(hash);
    let row = cached && now - cached.at < this.store.keyCacheMs ? cached.row : undefined;
    if (!row) {
      this.verified.delete(hash);
      row = await this.store.keys.byHash(hash);
      if (!row) return undefined;
      if (!timingSafeEqual(Buffer.from(row.hash, 'hex'), Buffer.from(hash, 'hex'))) return undefined;
      if (row.revokedAt !== null) return undefined;
      if (this.store.keyCacheMs > 0) {
        if (this.verified.size >= KEY_CACHE_MAX) this.verified.clear();
        this.verified.set(hash, { row, at: now });
      }
    }
    if (row.lastUsedAt === null || now - row.lastUsedAt >= LAST_USED_RESOLUTION_MS) {
      row.lastUsedAt = now;
      await this.store.keys.touch(row.id, now); // best effort: never blocks a request behind another writer
    }
    return toInfo(row);
  }
}

function checkName(name: unknown): void {
  if (typeof name !== 'string' || name.length > 200) throw invalid('the key name must be a string of at most 200 characters');
}

/** A new team of that name; refuses a name that is not one. */
function newTeam(ref: string): TeamRow {
  if (!TEAM_NAME_RE.test(ref)) throw invalid(`bad team name '${ref}': use 1-63 of [a-z0-9_.-], starting with a letter or digit`);
  return { id: 'team_' + randomId(12), name: ref, createdAt: Date.now(), quota: '{}' };
}
