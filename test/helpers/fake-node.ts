// A node API for control-plane unit tests: each part a test leaves out fails the test when
// called, so a test states exactly what the routes may use.
import assert from 'node:assert/strict';
import type { KeysApi, MetricsApi, NodeApi, SandboxesApi, SecretsApi, TeamsApi, TemplatesApi, VolumesApi } from '../../src/api/node-api.js';
import type { SandboxInfo } from '../../src/sandbox/types.js';

const unexpected = (what: string) => (): never => assert.fail(`unexpected call of ${what}`);

export interface FakeNodeParts {
  sandboxes?: Partial<SandboxesApi>;
  templates?: Partial<TemplatesApi>;
  volumes?: Partial<VolumesApi>;
  secrets?: Partial<SecretsApi>;
  teams?: Partial<TeamsApi>;
  keys?: Partial<KeysApi>;
  metrics?: Partial<MetricsApi>;
}

export function fakeNode(parts: FakeNodeParts = {}): NodeApi {
  return {
    sandboxes: {
      get: unexpected('sandboxes.get'),
      list: unexpected('sandboxes.list'),
      create: unexpected('sandboxes.create'),
      delete: unexpected('sandboxes.delete'),
      pause: unexpected('sandboxes.pause'),
      resume: unexpected('sandboxes.resume'),
      connect: unexpected('sandboxes.connect'),
      setTimeout: unexpected('sandboxes.setTimeout'),
      refresh: unexpected('sandboxes.refresh'),
      updateNetwork: unexpected('sandboxes.updateNetwork'),
      snapshot: unexpected('sandboxes.snapshot'),
      fork: unexpected('sandboxes.fork'),
      consoleLogPath: unexpected('sandboxes.consoleLogPath'),
      envdEndpoint: unexpected('sandboxes.envdEndpoint'),
      ...parts.sandboxes,
    },
    templates: {
      find: unexpected('templates.find'),
      list: unexpected('templates.list'),
      ensure: unexpected('templates.ensure'),
      addTag: unexpected('templates.addTag'),
      removeTag: unexpected('templates.removeTag'),
      remove: unexpected('templates.remove'),
      ...parts.templates,
    },
    volumes: {
      sizeMB: 1024,
      create: unexpected('volumes.create'),
      list: unexpected('volumes.list'),
      get: unexpected('volumes.get'),
      delete: unexpected('volumes.delete'),
      open: unexpected('volumes.open'),
      ...parts.volumes,
    },
    secrets: {
      rows: {
        find: unexpected('secrets.find'),
        list: unexpected('secrets.list'),
        count: unexpected('secrets.count'),
        insert: unexpected('secrets.insert'),
        update: unexpected('secrets.update'),
        delete: unexpected('secrets.delete'),
      },
      sealingKey: unexpected('secrets.sealingKey'),
      ...parts.secrets,
    },
    teams: {
      fresh: async () => {},
      blocked: () => false,
      checkMetadata: () => undefined,
      reserveSnapshot: unexpected('teams.reserveSnapshot'),
      admitVolume: unexpected('teams.admitVolume'),
      quota: unexpected('teams.quota'),
      usage: unexpected('teams.usage'),
      usageEverywhere: unexpected('teams.usageEverywhere'),
      team: unexpected('teams.team'),
      teams: unexpected('teams.teams'),
      ...parts.teams,
    },
    keys: { authenticate: unexpected('keys.authenticate'), ...parts.keys },
    metrics: { latest: () => undefined, range: () => [], teamRange: () => [], ...parts.metrics },
    log: { error: () => undefined },
  };
}

/** A running sandbox as the node reports it, with the given fields changed. */
export function sandboxInfo(over: Partial<SandboxInfo> = {}): SandboxInfo {
  return {
    id: 'sbx1abc',
    templateId: 't1',
    templateName: 'base',
    state: 'running',
    runtime: 'crun',
    team: 'default',
    accessToken: null,
    trafficAccessToken: null,
    limits: { cpuCount: 1, memoryMB: 512, pids: 1024 },
    metadata: {},
    extra: {},
    lifecycle: { onTimeout: 'kill', autoResume: false, keepMemory: true },
    coldPaused: false,
    createdAt: 1,
    startedAt: 1,
    endAt: 2,
    lastError: null,
    network: { allowInternetAccess: true, allowOut: [], denyOut: [], allowPublicTraffic: true, httpsPorts: [] },
    address: null,
    volumeMounts: [],
    ...over,
  };
}
