// Templates through a real registry (Debian's docker-registry on loopback, plain HTTP): a
// template's layer directories published as OCI layer blobs and pulled back into another
// layers directory give the same files (owners, modes, setuid, symlinks, hard links, user
// xattrs, overlayfs whiteouts and opaque directories), a layer two templates share is uploaded
// once, and a second pull fetches nothing. Tampering is test/security/template-registry.test.ts.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import {
  chownSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  linkSync,
  writeFileSync,
  chmodSync,
} from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { RegistryRepo } from '../../src/template/oci/distribution.js';
import { publishTemplate, pullTemplate } from '../../src/template/share.js';
import type { Template } from '../../src/template/store.js';
import { DEFAULT_TEMPLATE_CONFIG } from '../../src/template/store.js';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';

/** Two layer directories in overlayfs's format: a bottom one, and a top one with a whiteout and an opaque directory. */
const setXattr = (path: string, name: string, value: string) =>
  execFileSync('python3', ['-c', 'import os,sys; os.setxattr(sys.argv[1], sys.argv[2], sys.argv[3].encode())', path, name, value]);
const getXattr = (path: string, name: string) =>
  execFileSync('python3', ['-c', 'import os,sys; sys.stdout.write(os.getxattr(sys.argv[1], sys.argv[2]).decode())', path, name]).toString();

export function makeLayers(root: string): { bottom: string; top: string } {
  const bottom = join(root, 'layers', 'bottomlayer0001');
  const top = join(root, 'layers', 'toplayer00000001');
  mkdirSync(join(bottom, 'etc'), { recursive: true });
  mkdirSync(join(bottom, 'data'), { recursive: true });
  writeFileSync(join(bottom, 'etc', 'gone'), 'hidden above\n');
  writeFileSync(join(bottom, 'data', 'old'), 'hidden by the opaque dir\n');
  mkdirSync(join(top, 'data'), { recursive: true });
  mkdirSync(join(top, 'etc'), { recursive: true });
  mkdirSync(join(top, 'home', 'user'), { recursive: true });
  writeFileSync(join(top, 'home', 'user', 'built.txt'), 'made by a build\n');
  chownSync(join(top, 'home', 'user', 'built.txt'), 1000, 1000);
  chownSync(join(top, 'home', 'user'), 1000, 1000);
  writeFileSync(join(top, 'suid'), '#!/bin/sh\n');
  chmodSync(join(top, 'suid'), 0o4755);
  linkSync(join(top, 'suid'), join(top, 'suid-link'));
  symlinkSync('/etc/passwd', join(top, 'abs-link'));
  writeFileSync(join(top, 'data', 'new'), 'the only file of data\n');
  setXattr(join(top, 'data'), 'trusted.overlay.opaque', 'y');
  setXattr(join(top, 'home', 'user', 'built.txt'), 'user.note', 'kept');
  execFileSync('mknod', [join(top, 'etc', 'gone'), 'c', '0', '0']);
  return { bottom, top };
}

export function template(id: string, layers: string[], team = 'team-a'): Template {
  return { id, name: `t-${id}`, layers, config: { ...DEFAULT_TEMPLATE_CONFIG, team, tags: ['v1'] }, createdAt: 1_700_000_000_000 };
}

describe('templates through a registry', { timeout: 300_000 }, () => {
  let reg: TestRegistry;
  let repo: RegistryRepo;
  const work = mkdtempSync('/var/tmp/cubebox-share-test-');
  let layers: { bottom: string; top: string };

  before(async () => {
    reg = await startRegistry({ plainHttp: true });
    repo = new RegistryRepo(`http://${reg.host}/test`);
    layers = makeLayers(work);
  });
  after(async () => {
    await reg?.stop();
    rmSync(work, { recursive: true, force: true });
  });

  it('publishes, shares a common layer, and pulls back the same files', async () => {
    const opts = { layersDir: join(work, 'layers'), dataDir: work };
    const first = await publishTemplate(repo, template('aaaaaaaaaaaaaaaaaaaa', [layers.top, layers.bottom]), opts);
    assert.equal(first.uploaded, 3, 'two layers and the config');
    const before = reg.requests().filter((r) => r.startsWith('PUT /v2/test/templates/blobs/')).length;
    const second = await publishTemplate(repo, template('bbbbbbbbbbbbbbbbbbbb', [layers.bottom]), opts);
    assert.equal(second.uploaded, 1, 'the shared layer is not sent again: only the config');
    assert.equal(reg.requests().filter((r) => r.startsWith('PUT /v2/test/templates/blobs/')).length, before + 1);

    const dest = join(work, 'other-node');
    mkdirSync(dest);
    const pulled = await pullTemplate(repo, first.manifest, dest);
    assert.equal(pulled.row.id, 'aaaaaaaaaaaaaaaaaaaa');
    assert.deepEqual(pulled.row.config.tags, ['v1']);
    assert.equal(pulled.layerIds.length, 2);
    assert.equal(pulled.fetched, 2);
    const [top, bottom] = pulled.layerIds.map((l) => join(dest, l)) as [string, string];
    assert.equal(readFileSync(join(bottom, 'etc', 'gone'), 'utf8'), 'hidden above\n');
    const wh = lstatSync(join(top, 'etc', 'gone'));
    assert.ok(wh.isCharacterDevice() && wh.rdev === 0, 'the whiteout is a 0/0 character device again');
    assert.equal(getXattr(join(top, 'data'), 'trusted.overlay.opaque'), 'y');
    assert.deepEqual(readdirSync(join(top, 'data')), ['new'], 'no whiteout marker file is left');
    const built = lstatSync(join(top, 'home', 'user', 'built.txt'));
    assert.equal(built.uid, 1000);
    assert.equal(getXattr(join(top, 'home', 'user', 'built.txt'), 'user.note'), 'kept');
    assert.equal(lstatSync(join(top, 'suid')).mode & 0o7777, 0o4755);
    assert.equal(lstatSync(join(top, 'suid')).ino, lstatSync(join(top, 'suid-link')).ino);
    assert.equal(readlinkSync(join(top, 'abs-link')), '/etc/passwd');

    const again = await pullTemplate(repo, second.manifest, dest);
    assert.equal(again.fetched, 0, 'its one layer is here already');
    assert.deepEqual(again.layerIds, [pulled.layerIds[1]]);
    assert.deepEqual(
      readdirSync(dest).filter((e) => e.startsWith('.tmp')),
      [],
    );
  });
});
