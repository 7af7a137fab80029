// What the control plane and the data-plane resolver need of a node, and nothing more: its
// sandboxes, templates, volumes, secrets, teams and keys. The in-process implementation is
// built by the composition root (app/node.ts) over the manager and the stores; a remote one
// (a node reached over the network) can implement the same interface.
import type { TemplateBuilds } from '../builder/builds.js';
import type { NetworkSettings } from '../network/policy.js';
import type { MetricsSampler } from '../sandbox/metrics.js';
import type { SnapshotOpts } from '../sandbox/snapshots.js';
import type { CreateRequest, SandboxInfo } from '../sandbox/types.js';
import type { SharedSecretRepo } from '../store/shared.js';
import type { Template } from '../template/store.js';
import type { CubeboxError } from '../util/errors.js';
import type { GuardedSocket } from '../util/safe-socket.js';
import type { VolumeFs } from '../volume/content.js';
import type { VolumeRow } from '../volume/volumes.js';
import type { HostStatus } from './host-status.js';
import type { ApiKeys } from './keys.js';
import type { Caller, Quota, Tenancy } from './tenancy.js';

/** A node's sandboxes: their lifecycle and what the data plane needs to reach one. */
export interface SandboxesApi {
  /** Throws a not_found error for an unknown id. */
  get(id: string): SandboxInfo;
  list(): SandboxInfo[];
  create(req: CreateRequest): Promise<SandboxInfo>;
  delete(id: string): Promise<void>;
  pause(id: string, opts?: { memory?: boolean }): Promise<SandboxInfo>;
  resume(id: string, opts?: { timeoutSec?: number }): Promise<SandboxInfo>;
  connect(id: string, timeoutSec?: number): Promise<{ info: SandboxInfo; resumed: boolean }>;
  setTimeout(id: string, timeoutSec: number): Promise<SandboxInfo>;
  refresh(id: string, durationSec: number): Promise<void>;
  updateNetwork(id: string, settings: NetworkSettings): Promise<SandboxInfo>;
  snapshot(id: string, opts?: SnapshotOpts): Promise<Template>;
  fork(id: string, count: number, req?: Omit<CreateRequest, 'template'>): Promise<Array<{ info?: SandboxInfo; error?: CubeboxError }>>;
  consoleLogPath(id: string): string;
  /** How envd of a running sandbox is reached; undefined when it is not. */
  envdEndpoint(id: string): GuardedSocket | undefined;
}

/** A node's templates. */
export interface TemplatesApi {
  /** By id, name or name:tag; a team's own name first, then the public one. */
  find(ref: string, team?: string): Template | undefined;
  list(): Template[];
  /** Builds a template that is built on first use (code-interpreter-v1); nothing for others. */
  ensure(ref: string): Promise<void>;
  addTag(ref: string, tag: string): Template;
  removeTag(ref: string, tag: string): Template;
  /** Deletes a template, giving its pooled sandboxes back first. */
  remove(ref: string): Promise<void>;
}

/** A node's persistent volumes. */
export interface VolumesApi {
  /** Each new volume's disk size, MiB. */
  readonly sizeMB: number;
  create(team: string, name: string, admit: (existing: VolumeRow[]) => void): Promise<VolumeRow>;
  /** Every volume, or one team's. */
  list(team?: string): VolumeRow[];
  get(id: string, team: string, admin?: boolean, deleting?: boolean): VolumeRow;
  delete(id: string): Promise<void>;
  /** A volume's files for a holder of its token; undefined when id and token do not match. */
  open(id: string, token: string, cut: () => void): { row: VolumeRow; fs: VolumeFs; done: () => void } | undefined;
}

/** A team's sealed secrets, and the key that seals them. */
export interface SecretsApi {
  rows: SharedSecretRepo;
  sealingKey(): Buffer;
}

/** Teams, their quotas and whether one is blocked (no live key). */
export type TeamsApi = Pick<
  Tenancy,
  'fresh' | 'blocked' | 'checkMetadata' | 'reserveSnapshot' | 'admitVolume' | 'quota' | 'usage' | 'usageEverywhere' | 'team' | 'teams'
>;

export interface KeysApi {
  /** The caller behind an X-API-KEY value (its team, whether it is an admin key); undefined: not a live key. */
  authenticate(key: string | undefined): Promise<Caller | undefined>;
}

/** The shared store's API keys, for the key routes (by id; a new key is returned once). */
export type KeyStoreApi = Pick<ApiKeys, 'list' | 'get' | 'create' | 'rename' | 'revoke'>;

/** What only an admin key reaches: quota changes and the host's status. */
export interface AdminApi {
  /** Sets (a number) or resets (null) some limits of a team; returns the effective quota. */
  setQuota(team: string, change: Partial<Record<keyof Quota, number | null>>): Promise<Quota>;
  host(): Promise<HostStatus>;
}

/** Resource samples of sandboxes and teams. */
export type MetricsApi = Pick<MetricsSampler, 'latest' | 'range' | 'teamRange'>;

/** Where the control plane logs what failed on the node's side. */
export interface ErrorLog {
  error(obj: object, msg: string): void;
}

export interface NodeApi {
  sandboxes: SandboxesApi;
  templates: TemplatesApi;
  volumes: VolumesApi;
  secrets: SecretsApi;
  teams: TeamsApi;
  keys: KeysApi;
  metrics: MetricsApi;
  log: ErrorLog;
  /** API key management (absent: keys are managed elsewhere). */
  apiKeys?: KeyStoreApi;
  /** Quota changes and host status (absent: not served by this node). */
  admin?: AdminApi;
  /** E2B's template builds (absent: the node does not build). */
  builds?: TemplateBuilds;
}
