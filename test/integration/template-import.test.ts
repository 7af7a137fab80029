import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { SandboxManager } from '../../src/sandbox/manager.js';
import { assertNoSandboxLeaks, destroyInstance, execIn, newInstance } from '../helpers/instance.js';

const sh = (script: string) => execFileSync('sh', ['-ec', script], { stdio: ['ignore', 'pipe', 'pipe'] }).toString();

describe('imported images as templates', { timeout: 600_000 }, () => {
  let m: SandboxManager;
  let work: string;
  before(async () => {
    m = await newInstance();
    work = mkdtempSync('/var/tmp/cubebox-image-');
    // an OCI layout with two layers: the second deletes and replaces files of the first
    sh(`
      cd ${work}
      umoci init --layout img
      umoci new --image img:v1
      umoci unpack --image img:v1 b1
      mkdir -p b1/rootfs/bin b1/rootfs/etc b1/rootfs/data/old b1/rootfs/tmp
      cp /bin/busybox b1/rootfs/bin/
      for a in sh cat ls sleep test echo; do ln -s busybox b1/rootfs/bin/$a; done
      echo 'root:x:0:0:root:/root:/bin/sh' > b1/rootfs/etc/passwd
      echo 'root:x:0:' > b1/rootfs/etc/group
      echo first > b1/rootfs/data/replaced
      echo gone > b1/rootfs/data/deleted
      echo stale > b1/rootfs/data/old/x
      umoci repack --image img:v1 b1
      umoci unpack --image img:v1 b2
      echo second > b2/rootfs/data/replaced
      rm b2/rootfs/data/deleted
      rm -r b2/rootfs/data/old && mkdir b2/rootfs/data/old && echo fresh > b2/rootfs/data/old/y
      umoci repack --image img:v1 b2
      umoci config --image img:v1 --config.env GREETING=from-the-image --config.workingdir /data --config.cmd sleep --config.cmd 100000
    `);
  });
  after(async () => {
    rmSync(work, { recursive: true, force: true });
    await destroyInstance(m);
  });

  it('a sandbox of an imported image sees exactly the final filesystem and the image settings', async () => {
    const t = await m.templates.importImage('img', join(work, 'img'), { ref: 'v1' });
    assert.ok(t.layers.length >= 2);
    assert.equal(t.config.env.GREETING, 'from-the-image');
    assert.equal(t.config.workdir, '/data');
    const sbx = await m.create({ template: 'img', secure: false });
    const r = await execIn(m, sbx.id, ['sh', '-c', 'cat /data/replaced; test -e /data/deleted || echo deleted-is-gone; ls /data/old; echo "$GREETING"']);
    assert.equal(r.stdout, 'second\ndeleted-is-gone\ny\nfrom-the-image\n');
    await m.delete(sbx.id);
    assertNoSandboxLeaks(m.paths, sbx.id);
    // a second import shares the layers; deleting one template keeps the other's layers
    const again = await m.templates.importImage('img2', join(work, 'img'), { ref: 'v1' });
    assert.deepEqual(again.layers, t.layers);
    m.templates.remove('img');
    const sbx2 = await m.create({ template: 'img2', secure: false });
    assert.equal((await execIn(m, sbx2.id, ['cat', '/data/replaced'])).stdout, 'second\n');
    await m.delete(sbx2.id);
    m.templates.remove('img2');
  });
});
