// The node API of the manager in this process: the manager's sandboxes and templates, and the
// stores and services the composition root (app/node.ts) built next to it.
import type { TemplateBuilds } from '../builder/builds.js';
import type { SandboxManager } from '../sandbox/manager.js';
import type { MetricsSampler } from '../sandbox/metrics.js';
import type { Volumes } from '../volume/volumes.js';
import type { ApiKeys } from './keys.js';
import type { NodeApi, SecretsApi } from './node-api.js';
import { hostStatus } from './host-status.js';
import { setTeamQuota, type Tenancy } from './tenancy.js';
import type { SharedStore } from '../store/shared.js';

export interface LocalNodeParts {
  keys: ApiKeys;
  tenancy: Tenancy;
  metrics: MetricsSampler;
  volumes: Volumes;
  secrets: SecretsApi;
  builds?: TemplateBuilds;
  /** The shared store of teams and keys: quota changes (absent: quotas are read-only here). */
  shared?: SharedStore;
}

export function localNode(manager: SandboxManager, parts: LocalNodeParts): NodeApi {
  const { templates } = manager;
  const { volumes, keys } = parts;
  return {
    sandboxes: manager,
    templates: {
      find: (ref, team) => templates.find(ref, team),
      list: () => templates.list(),
      ensure: (ref) => templates.ensure(ref),
      addTag: (ref, tag) => templates.addTag(ref, tag),
      removeTag: (ref, tag) => templates.removeTag(ref, tag),
      remove: (ref) => manager.removeTemplate(ref),
    },
    volumes: {
      sizeMB: volumes.sizeMB,
      create: (team, name, admit) => volumes.create(team, name, admit),
      list: (team) => volumes.store.list(team),
      get: (id, team, admin, deleting) => volumes.get(id, team, admin, deleting),
      delete: (id) => volumes.delete(id),
      open: (id, token, cut) => volumes.open(id, token, cut),
    },
    secrets: parts.secrets,
    teams: parts.tenancy,
    keys: {
      async authenticate(key) {
        const info = await keys.verify(key);
        return info && { keyId: info.id, keyPrefix: info.prefix, team: info.team, admin: info.admin };
      },
    },
    apiKeys: keys,
    admin: parts.shared && {
      setQuota: (team, change) => setTeamQuota(parts.shared!, team, change),
      host: hostStatus(manager),
    },
    metrics: parts.metrics,
    log: manager.log,
    builds: parts.builds,
  };
}
