import { chmodSync } from 'node:fs';
import Database from 'better-sqlite3';
import { migrateStore } from './schema.js';

import { SqliteKeyRepo, type KeyRepo } from './api-keys.js';
import { SqliteNetSlotRepo, type NetSlotRepo } from './net-slots.js';
import { SqliteResourceRepo, type ResourceKind, type ResourceRepo, type ResourceRow } from './resources.js';
import { SqliteSandboxRepo, type SandboxRepo, type SandboxRow, type SandboxState } from './sandboxes.js';
import { SqliteSecretRepo, type SecretRepo } from './secrets.js';
import { SqliteTeamRepo, type TeamRepo, type TeamRow } from './teams.js';
import { SqliteTemplateRepo, type TemplateRepo, type TemplateRow } from './templates.js';
import { SqliteTemplateBuildRepo, type TemplateBuildRepo } from './template-builds.js';
import { SqliteVolumeRepo, type VolumeRepo } from './volumes.js';

export { SANDBOX_STATES, type SandboxRepo, type SandboxRow, type SandboxState } from './sandboxes.js';
export type { ResourceKind, ResourceRepo, ResourceRow } from './resources.js';
export type { TemplateRepo, TemplateRow } from './templates.js';
export type { BuildLogRow, BuildRow, BuildStatus, TemplateBuildRepo } from './template-builds.js';
export type { TeamRepo, TeamRow } from './teams.js';
export type { ApiKeyRow, KeyRepo } from './api-keys.js';
export type { NetSlotRepo, NetSlotRow, NetSlotState } from './net-slots.js';
export type { SecretRepo, SecretRow } from './secrets.js';
export type { VolumeMountSpec, VolumeRepo, VolumeRow, VolumeState } from './volumes.js';
export { DEFAULT_TEAM_ID, DEFAULT_TEAM_NAME, migrateStore, SCHEMA_VERSION } from './schema.js';

/**
 * The tables of the node's SQLite file, each behind its repository, and transactions across them.
 * Teams, keys and secrets are reached through the shared store (shared.ts), which may be PostgreSQL.
 */
export interface Repositories {
  readonly sandboxes: SandboxRepo;
  readonly ledger: ResourceRepo;
  readonly templates: TemplateRepo;
  readonly teams: TeamRepo;
  readonly keys: KeyRepo;
  readonly netSlots: NetSlotRepo;
  readonly secrets: SecretRepo;
  readonly volumes: VolumeRepo;
  readonly builds: TemplateBuildRepo;
  /** Runs fn in one transaction. */
  transaction<T>(fn: () => T): T;
  /** Runs fn in one transaction that takes the write lock first (a read, then the write it allows). */
  immediate<T>(fn: () => T): T;
}

/**
 * The embedded store: one repository per table (sandboxes, the resource ledger, templates,
 * teams, API keys, network slots, secrets, volumes), each behind an interface whose
 * implementation here is SQLite. Plain SQL kept to what PostgreSQL also speaks (TEXT, BIGINT,
 * INTEGER, ON CONFLICT); the PostgreSQL shared store (pg/) has its own migrations. No SQL lives outside
 * src/store/: the rest of the code holds a Store or one of its repositories.
 */
export class Store implements Repositories {
  /** The SQLite connection: only the repositories and the migrations use it (tests of this SQLite store reach it as store['db']). */
  private readonly db: Database.Database;
  readonly sandboxes: SandboxRepo;
  readonly ledger: ResourceRepo;
  readonly templates: TemplateRepo;
  readonly teams: TeamRepo;
  readonly keys: KeyRepo;
  readonly netSlots: NetSlotRepo;
  readonly secrets: SecretRepo;
  readonly volumes: VolumeRepo;
  readonly builds: TemplateBuildRepo;

  constructor(file: string) {
    this.db = new Database(file);
    // API key hashes and envd access tokens live here: root only (SQLite gives its
    // -wal and -shm files the database file's permissions)
    chmodSync(file, 0o600);
    // first: every later statement, the journal mode switch included, may meet the running
    // service's lock and must wait for it rather than fail with "database is locked"
    this.db.pragma('busy_timeout = 5000');
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = NORMAL');
    migrateStore(this.db);
    this.sandboxes = new SqliteSandboxRepo(this.db);
    this.ledger = new SqliteResourceRepo(this.db);
    this.templates = new SqliteTemplateRepo(this.db);
    this.teams = new SqliteTeamRepo(this.db);
    this.keys = new SqliteKeyRepo(this.db);
    this.netSlots = new SqliteNetSlotRepo(this.db);
    this.secrets = new SqliteSecretRepo(this.db);
    this.volumes = new SqliteVolumeRepo(this.db);
    this.builds = new SqliteTemplateBuildRepo(this.db);
  }

  close(): void {
    this.db.close();
  }

  transaction<T>(fn: () => T): T {
    return this.db.transaction(fn)();
  }

  /**
   * Runs fn in an immediate transaction: one that reads, then writes waits for its turn when
   * another process writes, instead of failing at once with "database is locked".
   */
  immediate<T>(fn: () => T): T {
    return this.db.transaction(fn).immediate();
  }

  // The methods below are the sandbox lifecycle's short names for its repositories.

  insertSandbox(row: SandboxRow): void {
    this.sandboxes.insert(row);
  }

  getSandbox(id: string): SandboxRow | undefined {
    return this.sandboxes.get(id);
  }

  listSandboxes(): SandboxRow[] {
    return this.sandboxes.list();
  }

  /** Sandboxes in one state (optionally of one template), oldest first: a pool's, without reading every row. */
  sandboxesInState(state: SandboxState, templateId?: string): SandboxRow[] {
    return this.sandboxes.inState(state, templateId);
  }

  updateSandbox(id: string, fields: Partial<Omit<SandboxRow, 'id'>>): void {
    this.sandboxes.update(id, fields);
  }

  /** The sandbox's row and its ledger, together. */
  deleteSandbox(id: string): void {
    this.transaction(() => {
      this.ledger.forgetAll(id);
      this.sandboxes.delete(id);
    });
  }

  usedUidSlots(): Set<number> {
    return this.sandboxes.usedUidSlots();
  }

  /** A team's sandboxes in the given states (for quota accounting). */
  teamSandboxes(team: string, states: readonly SandboxState[]): SandboxRow[] {
    return this.sandboxes.ofTeam(team, states);
  }

  insertTeam(row: TeamRow): void {
    this.teams.insert(row);
  }

  getTeam(idOrName: string): TeamRow | undefined {
    return this.teams.get(idOrName);
  }

  listTeams(): TeamRow[] {
    return this.teams.list();
  }

  setTeamQuota(id: string, quota: string): void {
    this.teams.setQuota(id, quota);
  }

  /** Whether the team has at least one API key that is not revoked (a team without one is blocked). */
  teamHasLiveKey(team: string): boolean {
    return this.keys.teamHasLiveKey(team);
  }

  /** Records a resource before it is created, so that a crash leaves a record of it. */
  recordResource(sandboxId: string, kind: ResourceKind, name: string): void {
    this.ledger.record(sandboxId, kind, name);
  }

  forgetResource(sandboxId: string, kind: ResourceKind, name: string): void {
    this.ledger.forget(sandboxId, kind, name);
  }

  resources(sandboxId: string): ResourceRow[] {
    return this.ledger.of(sandboxId);
  }

  /** Sandbox ids that have ledger rows but no sandbox row (a crash between the two deletes). */
  orphanLedgerIds(): string[] {
    return this.ledger.orphanIds();
  }

  countRows(sandboxId: string): { sandboxes: number; resources: number } {
    return { sandboxes: this.sandboxes.exists(sandboxId) ? 1 : 0, resources: this.ledger.count(sandboxId) };
  }

  insertTemplate(row: TemplateRow): void {
    this.templates.insert(row);
  }

  getTemplate(id: string): TemplateRow | undefined {
    return this.templates.get(id);
  }

  /** Every template of that name (one per team namespace at most, '' being the public one). */
  templatesNamed(name: string): TemplateRow[] {
    return this.templates.named(name);
  }

  listTemplates(): TemplateRow[] {
    return this.templates.list();
  }

  updateTemplateConfig(id: string, config: string): void {
    this.templates.setConfig(id, config);
  }

  /** A template's new build: its layers and settings replaced in one step (the id stays). */
  replaceTemplate(id: string, layers: string[], config: string): void {
    this.templates.replace(id, layers, config);
  }

  deleteTemplate(id: string): void {
    this.templates.delete(id);
  }

  sandboxesUsingTemplate(id: string): number {
    return this.sandboxes.countUsingTemplate(id);
  }
}

/**
 * One manager owns a data directory at a time. The lock is an SQLite database held in
 * exclusive locking mode: the kernel drops the underlying fcntl lock when the process
 * dies, however it dies, so a crashed manager never leaves a stale lock.
 */
export class ManagerLock {
  private db: Database.Database | undefined;

  constructor(private readonly file: string) {}

  tryAcquire(): boolean {
    const db = new Database(this.file);
    try {
      db.pragma('busy_timeout = 0');
      db.pragma('locking_mode = EXCLUSIVE');
      db.exec('BEGIN EXCLUSIVE; CREATE TABLE IF NOT EXISTS owner (pid INTEGER); DELETE FROM owner; INSERT INTO owner VALUES (' + process.pid + '); COMMIT;');
      this.db = db;
      return true;
    } catch (err) {
      db.close();
      if ((err as { code?: string }).code === 'SQLITE_BUSY') return false;
      throw err;
    }
  }

  release(): void {
    this.db?.close();
    this.db = undefined;
  }
}
