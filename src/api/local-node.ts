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
import { sharable, type Template } from '../template/store.js';

export interface LocalNodeParts {
  keys: ApiKeys;
  tenancy: Tenancy;
  metrics: MetricsSampler;
  volumes: Volumes;
  secrets: SecretsApi;
  builds?: TemplateBuilds;
  /** The shared store of teams and keys: quota changes (absent: quotas are read-only here). */
  shared?: SharedStore;
  /** A cluster's templates (absent: this node's only). */
  cluster?: ClusterTemplates;
}

/** What the node API needs of a cluster's templates (cluster/templates.ts). */
export interface ClusterTemplates {
  fetch(ref: string, team: string | undefined): Promise<void>;
  find(ref: string, team: string | undefined): Promise<Template | undefined>;
  list(team: string): Promise<Template[]>;
  unpublish(id: string): Promise<void>;
}

export function localNode(manager: SandboxManager, parts: LocalNodeParts): NodeApi {
  const { templates } = manager;
  const { volumes, keys, cluster } = parts;
  return {
    sandboxes: manager,
    templates: {
      find: (ref, team) => templates.find(ref, team),
      list: () => templates.list(),
      async ensure(ref, team) {
        await templates.ensure(ref);
        await cluster?.fetch(ref, team);
      },
      findShared: cluster && ((ref, team) => cluster.find(ref, team)),
      listShared: cluster && ((team) => cluster.list(team)),
      addTag: (ref, tag) => templates.addTag(ref, tag),
      removeTag: (ref, tag) => templates.removeTag(ref, tag),
      async remove(ref) {
        const t = templates.find(ref);
        if (t) await manager.removeTemplate(t.id);
        // the cluster's row goes once nothing here holds it: other nodes drop their copies when unused
        if (cluster && (!t || t.config.shared || sharable(t))) await cluster.unpublish(t?.id ?? ref);
      },
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
