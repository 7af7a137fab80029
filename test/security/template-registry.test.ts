// A cluster's template registry is not trusted: a node pulls exactly the manifest the shared
// table names and checks every byte against its digest and size. Against a real registry
// (Debian's docker-registry, plain HTTP on loopback): a blob changed on the registry's disk, a
// manifest changed there, a blob longer than its manifest says, and a layer (with the right
// digest) whose members would write outside its directory are all refused, and nothing is left
// in the layers directory or outside it.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { RegistryRepo, sha256 } from '../../src/template/oci/distribution.js';
import { END_OF_ARCHIVE, encodeEntry, padding } from '../../src/template/oci/tar-write.js';
import { LAYER_TYPE, publishTemplate, pullTemplate, templateImage } from '../../src/template/share.js';
import { DEFAULT_TEMPLATE_CONFIG, type Template } from '../../src/template/store.js';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';

describe('a template registry that lies', { timeout: 300_000 }, () => {
  let reg: TestRegistry;
  let repo: RegistryRepo;
  const work = mkdtempSync('/var/tmp/cubebox-registry-sec-');
  const layersDir = join(work, 'layers');
  const dest = join(work, 'pulled');

  const blobFile = (digest: string) => join(reg.storage, 'docker/registry/v2/blobs/sha256', digest.slice(7, 9), digest.slice(7), 'data');
  const nothingLeft = () => {
    assert.deepEqual(readdirSync(dest), [], 'no layer directory and no temporary file is left');
  };
  const publish = async (id: string, files: Record<string, string>) => {
    const dir = join(layersDir, `layer-${id}`);
    mkdirSync(dir, { recursive: true });
    for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
    const t: Template = { id, name: id, layers: [dir], config: { ...DEFAULT_TEMPLATE_CONFIG, team: 't' }, createdAt: Date.now() };
    return publishTemplate(repo, t, { layersDir, dataDir: work });
  };
  /** Pushes a layer blob as it is and a manifest naming it with the given size. */
  const pushRaw = async (id: string, blob: Buffer, size = blob.length) => {
    const digest = sha256(blob);
    await repo.putBlob(digest, blob.length, blob);
    const { config, manifest } = templateImage({ id, name: id, config: { team: 't' }, createdAt: 0 }, [{ mediaType: LAYER_TYPE, digest, size }]);
    await repo.putBlob(sha256(config), config.length, config);
    return repo.putManifest(id, manifest);
  };

  before(async () => {
    reg = await startRegistry({ plainHttp: true });
    repo = new RegistryRepo(`http://${reg.host}`);
    mkdirSync(layersDir);
    mkdirSync(dest);
  });
  after(async () => {
    await reg?.stop();
    rmSync(work, { recursive: true, force: true });
  });

  it('refuses a layer blob changed on the registry', async () => {
    const r = await publish('tampered-blob', { 'a.txt': 'original content\n' });
    const manifest = JSON.parse(Buffer.from(await repo.getManifest(r.manifest)).toString()) as { layers: { digest: string }[] };
    const file = blobFile(manifest.layers[0]!.digest);
    const data = Buffer.from(await import('node:fs').then((fs) => fs.readFileSync(file)));
    data.write('ORIGINAL', data.indexOf('original'), 'latin1'); // same size, other bytes
    writeFileSync(file, data);
    await assert.rejects(pullTemplate(repo, r.manifest, dest), /does not match its digest/);
    nothingLeft();
  });

  it('refuses a manifest changed on the registry', async () => {
    const r = await publish('tampered-manifest', { 'b.txt': 'b\n' });
    const file = blobFile(r.manifest);
    const text = (await import('node:fs')).readFileSync(file, 'utf8');
    writeFileSync(file, text.replace('"schemaVersion":2', '"schemaVersion":2 '));
    await assert.rejects(pullTemplate(repo, r.manifest, dest), /other content|does not match|refused/);
    nothingLeft();
  });

  it('refuses a blob longer than its manifest says', async () => {
    const tar = Buffer.concat([
      encodeEntry({ name: 'c.txt', type: 'file', mode: 0o644, uid: 0, gid: 0, size: 2, mtime: 0 }),
      Buffer.from('c\n'),
      padding(2),
      END_OF_ARCHIVE,
    ]);
    const digest = await pushRaw('longer-blob', tar, tar.length - 512);
    await assert.rejects(pullTemplate(repo, digest, dest), /larger than its manifest says|does not match/);
    nothingLeft();
  });

  it('refuses a layer whose members would leave its directory (its digest right)', async () => {
    const escape = join(work, 'escaped');
    const entry = (name: string, type: 'file' | 'symlink' | 'dir', linkname?: string) =>
      encodeEntry({ name, linkname, type, mode: 0o755, uid: 0, gid: 0, size: type === 'file' ? 2 : 0, mtime: 0 });
    const body = (b: Buffer, file: boolean) => (file ? Buffer.concat([b, Buffer.from('x\n'), padding(2)]) : b);
    for (const [id, members] of [
      ['dotdot', [body(entry(`../../../../../../..${escape}`, 'file'), true)]],
      ['through-symlink', [body(entry('link', 'symlink', work), false), body(entry('link/escaped', 'file'), true)]],
      ['absolute', [body(entry(escape, 'file'), true)]],
    ] as const) {
      const digest = await pushRaw(id, Buffer.concat([...members, END_OF_ARCHIVE]));
      await assert.rejects(pullTemplate(repo, digest, dest), /refusing|contains '\.\.'|absolute|symbolic link/, id);
      nothingLeft();
      assert.equal(existsSync(escape), false, `${id}: nothing written outside`);
    }
  });
});
