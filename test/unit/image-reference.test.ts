import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { hostConfig } from '../../src/app/config.js';
import { formatReference, parseReference, pinnedSource } from '../../src/template/oci/reference.js';

const D = 'sha256:' + 'ab'.repeat(32);

describe('image references', () => {
  it('gives short names Docker Hub semantics: library/ for one component, latest for no tag', () => {
    assert.deepEqual(parseReference('python:3.12'), { registry: 'docker.io', repository: 'library/python', tag: '3.12', digest: undefined });
    assert.deepEqual(parseReference('ubuntu'), { registry: 'docker.io', repository: 'library/ubuntu', tag: 'latest', digest: undefined });
    assert.equal(formatReference(parseReference('user/img')), 'docker.io/user/img:latest');
    assert.equal(formatReference(parseReference('docker.io/python')), 'docker.io/library/python:latest');
    assert.equal(formatReference(parseReference('index.docker.io/library/python:3')), 'docker.io/library/python:3');
    assert.equal(formatReference(parseReference('docker://alpine:3.20')), 'docker.io/library/alpine:3.20');
  });

  it('takes a registry from a first component with a dot, a port or localhost', () => {
    assert.deepEqual(parseReference('ghcr.io/org/app:v1'), { registry: 'ghcr.io', repository: 'org/app', tag: 'v1', digest: undefined });
    assert.deepEqual(parseReference('localhost:5000/app'), { registry: 'localhost:5000', repository: 'app', tag: 'latest', digest: undefined });
    assert.deepEqual(parseReference('localhost/a/b/c:t'), { registry: 'localhost', repository: 'a/b/c', tag: 't', digest: undefined });
    assert.deepEqual(parseReference('127.0.0.1:5000/x/y'), { registry: '127.0.0.1:5000', repository: 'x/y', tag: 'latest', digest: undefined });
    assert.equal(parseReference('[::1]:5000/x').registry, '[::1]:5000');
    // without a dot, port or localhost the first component is a Docker Hub user
    assert.deepEqual(parseReference('myhost/app'), { registry: 'docker.io', repository: 'myhost/app', tag: 'latest', digest: undefined });
  });

  it('pins digests, with or without a tag, and pulls exactly the digest', () => {
    assert.deepEqual(parseReference(`python@${D}`), { registry: 'docker.io', repository: 'library/python', tag: undefined, digest: D });
    const r = parseReference(`localhost:5000/app:v1@${D}`);
    assert.deepEqual(r, { registry: 'localhost:5000', repository: 'app', tag: 'v1', digest: D });
    assert.equal(formatReference(r), `localhost:5000/app:v1@${D}`);
    assert.equal(pinnedSource(r, D), `docker://localhost:5000/app@${D}`);
  });

  it('refuses bad references with the reason', () => {
    const bad: [string, RegExp][] = [
      ['', /empty/],
      ['Python:3', /not a valid repository name component/],
      ['a//b', /not a valid repository name component/],
      ['app:bad tag', /not a valid tag/],
      ['app:' + 'x'.repeat(129), /not a valid tag/],
      ['app@sha256:123', /a digest is sha256/],
      ['app@md5:' + 'a'.repeat(32), /a digest is sha256/],
      ['reg.io:99999/app', /port 99999 is out of range/],
      ['bad_host.io/app', /not a valid registry host/],
      ['-app', /not a valid repository name component/],
      ['app\n', /not a valid/],
    ];
    for (const [text, why] of bad) assert.throws(() => parseReference(text), why, JSON.stringify(text));
  });
});

describe('registry trust settings', () => {
  it('default to verified TLS with the system CAs, and read the CA bundle and insecure hosts from flags or the environment', () => {
    assert.deepEqual(hostConfig({ dataDir: '/tmp/d' }, {}).registry, { caFile: undefined, insecure: [] });
    const dir = mkdtempSync('/tmp/cubebox-registry-config-');
    try {
      const ca = join(dir, 'ca.pem');
      writeFileSync(ca, '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n');
      const env = { CUBEBOX_REGISTRY_CA: ca, CUBEBOX_INSECURE_REGISTRY: 'localhost:5000, reg.lan' };
      assert.deepEqual(hostConfig({ dataDir: '/tmp/d' }, env).registry, { caFile: ca, insecure: ['localhost:5000', 'reg.lan'] });
      assert.deepEqual(hostConfig({ dataDir: '/tmp/d', insecureRegistry: ['10.0.0.2:443'] }, env).registry.insecure, ['10.0.0.2:443']);
      writeFileSync(join(dir, 'empty.pem'), 'nothing');
      assert.throws(() => hostConfig({ dataDir: '/tmp/d', registryCa: join(dir, 'empty.pem') }, {}), /holds no PEM certificate/);
      assert.throws(() => hostConfig({ dataDir: '/tmp/d', registryCa: join(dir, 'missing.pem') }, {}), /cannot read the registry CA bundle/);
      assert.throws(() => hostConfig({ dataDir: '/tmp/d', insecureRegistry: ['http://reg:5000'] }, {}), /bad insecure registry/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
