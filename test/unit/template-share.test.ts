// The pieces of sharing templates through a registry, without one: the manifest and config a
// template is published as and their checks on the way back, the overlayfs -> OCI conversion
// of a layer's members, the registry URL, the namespace lookup the shared table uses, and a
// blob whose bytes are not its digest refused (a loopback server answering the wrong bytes;
// the real registry's tampering is test/security/template-registry.test.ts).
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { serveConfig } from '../../src/app/config.js';
import { RegistryRepo, sha256 } from '../../src/template/oci/distribution.js';
import { toOciLayer } from '../../src/template/oci/layer-export.js';
import type { TarEntry } from '../../src/template/oci/tar-format.js';
import { ByteReader, parseTar } from '../../src/template/oci/tar-read.js';
import { LAYER_TYPE, MAX_LAYERS, parseTemplateConfig, parseTemplateManifest, sharedConfig, TEMPLATE_LABEL, templateImage } from '../../src/template/share.js';
import { findInNamespace, sharable } from '../../src/template/store.js';

const layer = (n: number) => ({ mediaType: LAYER_TYPE, digest: sha256(`layer ${n}`), size: 100 + n });
const row = {
  id: 'abcdefghij0123456789',
  name: 'app',
  config: { team: 'team-a', aliases: ['app2'], tags: ['v1'], public: true, env: { A: '1' }, user: 'user', parent: 'local-parent', shared: { manifest: 'x' } },
  createdAt: 1_700_000_000_000,
};

describe('a template as an OCI image', () => {
  it('carries the row (without node-local settings) in its config, layers bottom first, and reads back', () => {
    const layers = [layer(1), layer(2)];
    const { config, manifest } = templateImage(row, layers);
    const m = parseTemplateManifest(manifest);
    assert.deepEqual(m.layers, layers);
    assert.equal(m.config.digest, sha256(config));
    assert.equal(m.config.size, config.length);
    const back = parseTemplateConfig(
      config,
      layers.map((l) => l.digest),
    );
    assert.deepEqual(back, { ...row, config: sharedConfig(row.config) });
    assert.equal('shared' in back.config || 'parent' in back.config, false);
    const c = JSON.parse(config.toString()) as { config: { Env: string[]; User: string; Labels: Record<string, string> } };
    assert.deepEqual(c.config.Env, ['A=1']);
    assert.equal(c.config.User, 'user');
    assert.ok(c.config.Labels[TEMPLATE_LABEL]);
    // the same template and layers give the same bytes (the digest the cluster records)
    assert.deepEqual(templateImage(row, layers).manifest, manifest);
  });

  it('refuses manifests that are not a template of sound layers', () => {
    const good = JSON.parse(templateImage(row, [layer(1)]).manifest.toString()) as Record<string, unknown> & { layers: Record<string, unknown>[] };
    const bad = (change: (m: typeof good) => void, why: RegExp) => {
      const m = structuredClone(good);
      change(m);
      assert.throws(() => parseTemplateManifest(Buffer.from(JSON.stringify(m))), why);
    };
    bad((m) => (m.mediaType = 'application/vnd.docker.distribution.manifest.v2+json'), /not an OCI image manifest/);
    bad((m) => (m.layers[0]!.digest = 'sha256:../../etc'), /not a sha256 digest/);
    bad((m) => (m.layers[0]!.mediaType = 'application/vnd.oci.image.layer.v1.tar+gzip'), /layer 1: not a/);
    bad((m) => (m.layers[0]!.size = -1), /bad size/);
    bad((m) => (m.layers[0]!.size = 2 ** 50), /more than/);
    bad((m) => (m.layers = []), /1 to/);
    bad((m) => (m.layers = Array.from({ length: MAX_LAYERS + 1 }, (_, i) => layer(i))), /1 to/);
    assert.throws(() => parseTemplateManifest(Buffer.from('not json')), /not JSON/);
  });

  it("refuses a config whose layers are not the manifest's, or that is no template", () => {
    const { config } = templateImage(row, [layer(1)]);
    assert.throws(() => parseTemplateConfig(config, [layer(2).digest]), /not the manifest's/);
    const plain = Buffer.from(JSON.stringify({ rootfs: { diff_ids: [layer(1).digest] }, config: {} }));
    assert.throws(() => parseTemplateConfig(plain, [layer(1).digest]), /not a cubebox template/);
  });

  it('shares teams’ builds and files-only snapshots only', () => {
    assert.equal(sharable({ config: { team: 't' } }), true);
    for (const config of [{}, { team: 't', buildStep: true }, { team: 't', ephemeral: true }, { team: 't', checkpoint: true }])
      assert.equal(sharable({ config }), false);
  });
});

/** A tar stream of members (headers as GNU tar writes them, PAX records included). */
async function* tarOf(members: Array<Partial<TarEntry> & { name: string; type: TarEntry['type']; data?: string }>): AsyncGenerator<Buffer> {
  const { encodeEntry, padding, END_OF_ARCHIVE } = await import('../../src/template/oci/tar-write.js');
  for (const m of members) {
    const size = m.data ? Buffer.byteLength(m.data) : 0;
    yield encodeEntry({ mode: 0o755, uid: 0, gid: 0, mtime: 1, ...m, size });
    if (m.data) yield Buffer.concat([Buffer.from(m.data), padding(size)]);
  }
  yield END_OF_ARCHIVE;
}

async function membersOf(stream: AsyncIterable<Buffer>): Promise<TarEntry[]> {
  const out: TarEntry[] = [];
  for await (const { entry } of parseTar(new ByteReader(stream))) out.push(entry);
  return out;
}

describe("a layer's members in OCI's form", () => {
  it('turns whiteouts and opaque directories into .wh. files and drops trusted.* attributes', async () => {
    const opaque = new Map([
      ['SCHILY.xattr.trusted.overlay.opaque', Buffer.from('y')],
      ['SCHILY.xattr.user.keep', Buffer.from('1')],
    ]);
    const src = tarOf([
      { name: './', type: 'dir' },
      { name: './etc/', type: 'dir' },
      { name: './etc/gone', type: 'char', devmajor: 0, devminor: 0 },
      { name: './dev-null', type: 'char', devmajor: 1, devminor: 3 },
      { name: './data/', type: 'dir', pax: opaque },
      { name: './data/new', type: 'file', data: 'n\n' },
      { name: './data/link', type: 'hardlink', linkname: './data/new' },
    ]);
    const out = await membersOf(toOciLayer(parseTar(new ByteReader(src))));
    const names = out.map((e) => `${e.type} ${e.name}${e.linkname ? ` -> ${e.linkname}` : ''}`);
    assert.deepEqual(names, [
      'dir .',
      'dir etc',
      'file etc/.wh.gone',
      'char dev-null',
      'dir data',
      'file data/.wh..wh..opq',
      'file data/new',
      'hardlink data/link -> data/new',
    ]);
    const data = out.find((e) => e.name === 'data')!;
    assert.equal(data.pax.has('SCHILY.xattr.trusted.overlay.opaque'), false);
    assert.equal(data.pax.get('SCHILY.xattr.user.keep')?.toString(), '1');
  });
});

describe('the registry URL', () => {
  it('names the repository and takes credentials; refuses what is not http(s)', () => {
    const a = new RegistryRepo('http://127.0.0.1:5000');
    assert.equal(a.repo, 'cubebox/templates');
    assert.equal(a.shown, 'http://127.0.0.1:5000/cubebox/templates');
    const b = new RegistryRepo('https://user:secret@registry.example:443/team/x/');
    assert.equal(b.repo, 'team/x/templates');
    assert.ok(!b.shown.includes('secret'));
    for (const bad of ['ftp://h/x', 'not a url', 'http://h/UPPER', 'http://h/x?y=1']) assert.throws(() => new RegistryRepo(bad), /bad registry URL/);
  });
});

describe('the namespace lookup the shared table shares', () => {
  const t = (name: string, team: string | undefined, extra: { aliases?: string[]; tags?: string[] } = {}) => ({ name, config: { team, ...extra } });
  const all = [t('app', 'a', { aliases: ['web'], tags: ['v1'] }), t('app', 'b'), t('base', undefined)];
  it('finds by name, alias and name:tag in one namespace only', () => {
    assert.equal(findInNamespace(all, 'app', 'a'), all[0]);
    assert.equal(findInNamespace(all, 'app', 'b'), all[1]);
    assert.equal(findInNamespace(all, 'web', 'a'), all[0]);
    assert.equal(findInNamespace(all, 'web', 'b'), undefined);
    assert.equal(findInNamespace(all, 'app:v1', 'a'), all[0]);
    assert.equal(findInNamespace(all, 'web:latest', 'a'), all[0]);
    assert.equal(findInNamespace(all, 'app:v2', 'a'), undefined);
    assert.equal(findInNamespace(all, 'base', 'a'), undefined);
    assert.equal(findInNamespace(all, 'base', undefined), all[2]);
  });
});

describe('a blob that is not its digest', () => {
  it('is refused and its file removed', async () => {
    const served = Buffer.from('not what was published');
    const server = createServer((_req, res) => res.writeHead(200, { 'content-length': served.length }).end(served));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const dir = mkdtempSync(join(tmpdir(), 'cubebox-blob-'));
    try {
      const repo = new RegistryRepo(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
      const file = join(dir, 'blob');
      await assert.rejects(repo.getBlobToFile(sha256('published'), served.length, file), /does not match its digest/);
      assert.equal(existsSync(file), false);
      await assert.rejects(repo.getBlobToFile(sha256(served), served.length - 1, file), /larger than its manifest says/);
      assert.equal(existsSync(file), false);
      await assert.rejects(repo.getManifest(sha256('a manifest')), /other content/);
      await assert.rejects(repo.getBlobBytes(sha256('config'), served.length), /does not match its digest/);
    } finally {
      server.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('--registry', () => {
  it("is a node's option: read from the flag or CUBEBOX_REGISTRY, checked, ignored by replicas, refused alone", () => {
    const dir = mkdtempSync(join(tmpdir(), 'cubebox-registry-flag-'));
    try {
      const secretFile = join(dir, 'secret');
      writeFileSync(secretFile, 'a'.repeat(40));
      const DB = 'postgresql://u@h/db';
      const node = (flags: { registry?: string }, env = {}) =>
        serveConfig({ dataDir: '/tmp/d', role: 'node', database: DB, clusterSecretFile: secretFile, ...flags }, env);
      assert.equal(node({ registry: 'http://127.0.0.1:5000/cubebox' }).cluster?.templateRegistry, 'http://127.0.0.1:5000/cubebox');
      assert.equal(node({}, { CUBEBOX_REGISTRY: 'https://registry.internal' }).cluster?.templateRegistry, 'https://registry.internal');
      assert.equal(node({}).cluster?.templateRegistry, undefined);
      assert.throws(() => node({ registry: 'registry.internal:5000' }), /bad registry URL/);
      const api = serveConfig({ dataDir: '/tmp/d', role: 'api', database: DB, clusterSecretFile: secretFile }, { CUBEBOX_REGISTRY: 'http://r:5000' });
      assert.equal(api.cluster?.templateRegistry, undefined);
      assert.throws(() => serveConfig({ dataDir: '/tmp/d', registry: 'http://r:5000' }, {}), /--registry is for the nodes of a cluster/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
