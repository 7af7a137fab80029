// The Kubernetes base under deploy/kubernetes: rendered by kustomize (kubectl kustomize), every
// manifest validated against the Kubernetes API's JSON schemas (the kubernetes-models package,
// pinned in the lockfile: offline), and what cubebox needs of it checked.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, it } from 'node:test';
import { parseAllDocuments } from 'yaml';
import { Namespace } from 'kubernetes-models/v1/Namespace';
import { Service } from 'kubernetes-models/v1/Service';
import { DaemonSet } from 'kubernetes-models/apps/v1/DaemonSet';
import { Deployment } from 'kubernetes-models/apps/v1/Deployment';
import { Ingress } from 'kubernetes-models/networking.k8s.io/v1/Ingress';

const BASE = join(dirname(fileURLToPath(import.meta.url)), '../../../deploy/kubernetes');

/** The model (and its schema) of each kind the base holds. */
const MODELS: Record<string, new (o: never) => { validate(): void }> = {
  'v1/Namespace': Namespace,
  'v1/Service': Service,
  'apps/v1/DaemonSet': DaemonSet,
  'apps/v1/Deployment': Deployment,
  'networking.k8s.io/v1/Ingress': Ingress,
};

type Manifest = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

function render(): Manifest[] {
  const out = execFileSync('kubectl', ['kustomize', BASE], { encoding: 'utf8' });
  return parseAllDocuments(out).map((d) => d.toJSON() as Manifest);
}

function validate(m: Manifest): void {
  const Model = MODELS[`${m.apiVersion}/${m.kind}`];
  assert.ok(Model, `no schema for ${m.apiVersion} ${m.kind}`);
  new Model(m as never).validate();
}

const one = (all: Manifest[], kind: string) => {
  const found = all.filter((m) => m.kind === kind);
  assert.equal(found.length, 1, `one ${kind}`);
  return found[0]!;
};
const envOf = (c: Manifest) => Object.fromEntries((c.env as Manifest[]).map((e) => [e.name, e.value ?? e.valueFrom]));

describe('the Kubernetes base', () => {
  it('renders, and every manifest is valid against the Kubernetes API schemas', () => {
    const all = render();
    assert.deepEqual(all.map((m) => m.kind).sort(), ['DaemonSet', 'Deployment', 'Ingress', 'Namespace', 'Service']);
    for (const m of all) {
      validate(m);
      if (m.kind !== 'Namespace') assert.equal(m.metadata.namespace, 'cubebox', `${m.kind} in the cubebox namespace`);
    }
  });

  it('the validation is real: a broken manifest is refused', () => {
    const ds = structuredClone(one(render(), 'DaemonSet'));
    ds.spec.template.spec.containers[0].ports[0].containerPort = 'three thousand';
    assert.throws(() => validate(ds), /containerPort/);
    const dep = structuredClone(one(render(), 'Deployment'));
    delete dep.spec.selector;
    assert.throws(() => validate(dep), /selector/);
  });

  it('nodes: privileged on the host, the node role, the secret, the host directories, probes that send the secret', () => {
    const ds = one(render(), 'DaemonSet');
    const pod = ds.spec.template.spec;
    assert.equal(pod.hostNetwork, true);
    assert.equal(pod.hostPID, true);
    const c = pod.containers[0];
    assert.equal(c.securityContext.privileged, true);
    const env = envOf(c);
    assert.equal(env.CUBEBOX_ROLE, 'node');
    assert.equal(env.CUBEBOX_NODE_URL, 'http://$(HOST_IP):3000');
    assert.deepEqual(env.CUBEBOX_DATABASE, { secretKeyRef: { name: 'cubebox-cluster', key: 'database-url' } });
    assert.deepEqual(
      env.CUBEBOX_REGISTRY,
      { secretKeyRef: { name: 'cubebox-cluster', key: 'registry-url', optional: true } },
      'the template registry, optional',
    );
    const hostPaths = (pod.volumes as Manifest[]).filter((v) => v.hostPath).map((v) => v.hostPath.path);
    for (const p of ['/var/lib/cubebox', '/var/cache/cubebox', '/run/cubebox', '/sys/fs/cgroup', '/dev']) assert.ok(hostPaths.includes(p), p);
    const mounts = c.volumeMounts as Manifest[];
    assert.equal(mounts.find((m) => m.mountPath === '/var/lib/cubebox')?.mountPropagation, 'Bidirectional');
    assert.ok(mounts.some((m) => m.mountPath === env.CUBEBOX_CLUSTER_SECRET_FILE.replace(/\/cluster-secret$/, '')));
    assert.ok(
      mounts.some((m) => m.mountPath === '/var/lib/cubebox/secrets.key' && m.subPath === 'secrets.key'),
      'the sealing key, shared',
    );
    for (const probe of [c.readinessProbe, c.livenessProbe])
      assert.match(probe.exec.command.join(' '), /x-cubebox-cluster-secret: \$\(cat \/etc\/cubebox\/cluster\/cluster-secret\)/);
    assert.equal(ds.spec.template.metadata.annotations['prometheus.io/scrape'], 'true');
  });

  it('API replicas: more than one, unprivileged, the api role, behind a Service that selects them and an Ingress for the API and the wildcard domain over TLS', () => {
    const all = render();
    const dep = one(all, 'Deployment');
    assert.ok(dep.spec.replicas >= 2);
    const c = dep.spec.template.spec.containers[0];
    const env = envOf(c);
    assert.equal(env.CUBEBOX_ROLE, 'api');
    assert.equal(c.securityContext.allowPrivilegeEscalation, false);
    assert.equal(c.readinessProbe.httpGet.path, '/health');
    const svc = one(all, 'Service');
    for (const [k, v] of Object.entries(svc.spec.selector as Record<string, string>)) assert.equal(dep.spec.template.metadata.labels[k], v);
    assert.notEqual(svc.spec.selector['app.kubernetes.io/component'], 'node');
    const ing = one(all, 'Ingress');
    const hosts = (ing.spec.rules as Manifest[]).map((r) => r.host);
    assert.deepEqual(hosts, [`api.${env.CUBEBOX_DOMAIN}`, `*.${env.CUBEBOX_DOMAIN}`]);
    assert.deepEqual(ing.spec.tls[0].hosts, hosts);
    for (const r of ing.spec.rules as Manifest[]) assert.equal(r.http.paths[0].backend.service.name, svc.metadata.name);
  });
});
