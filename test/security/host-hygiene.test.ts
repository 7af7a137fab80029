// Host hygiene: host users cannot read a sandbox's files or run its
// setuid files, the support tree shares no inode with the host's binaries, and the
// manager's control socket is root-only.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, realpathSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { RuntimeName } from '../../src/runtime/registry.js';
import type { SandboxManager } from '../../src/sandbox/manager.js';
import { assertNoSandboxLeaks, destroyInstance, newDataDir, newInstance, startServe, waitExit } from '../helpers/instance.js';
import { asHostNobody, buildProbe, installProbe, sh } from './helpers.js';

let binary: Buffer;
let cleanupProbe: () => void;
before(() => {
  ({ binary, cleanup: cleanupProbe } = buildProbe());
});
after(() => cleanupProbe?.());

/** Every regular file below dir. */
function files(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? files(join(dir, e.name)) : e.isFile() ? [join(dir, e.name)] : []));
}

for (const runtime of ['crun', 'runc'] as RuntimeName[]) {
  describe(`sandbox roots on the host (${runtime})`, () => {
    let m: SandboxManager;
    let id: string;
    before(async () => {
      m = await newInstance({ runtime });
      id = (await m.create({ template: 'busybox' })).id;
      await installProbe(m, id, binary);
    });
    after(async () => {
      if (id) {
        await m.delete(id);
        assertNoSandboxLeaks(m.paths, id);
      }
      await destroyInstance(m);
    });

    it('a setuid file planted in a sandbox does not run as its owner for a host user', async () => {
      // inside, setuid still works (sudo needs it)...
      const inside = await sh(
        m,
        id,
        "cp /tmp/syscall-probe /tmp/suid && chmod 4755 /tmp/suid && echo secret > /tmp/secret && chmod 644 /tmp/secret && su user -s /bin/sh -c '/tmp/suid ids'",
      );
      assert.equal(inside.out, 'uid=1000 euid=0');
      // ...but host users reach neither the merged root nor the writable layer
      const dir = m.sandboxDir(id);
      for (const path of [join(dir, 'rootfs', 'tmp', 'suid'), join(dir, 'disk', 'upper', 'tmp', 'suid')]) {
        const r = asHostNobody([path, 'ids']);
        assert.notEqual(r.code, 0, `host nobody ran ${path}: ${r.out}`);
        assert.match(r.out, /Permission denied/, path);
      }
      for (const path of [join(dir, 'rootfs', 'tmp', 'secret'), join(dir, 'disk', 'upper', 'tmp', 'secret'), join(dir, 'layers', '0', 'etc', 'passwd')]) {
        const r = asHostNobody(['cat', path]);
        assert.notEqual(r.code, 0, `host nobody read ${path}: ${r.out}`);
      }
    });

    it("the sandbox directory is 0710 root:<sandbox root's host gid>; the disk is nosuid,nodev", () => {
      const dir = m.sandboxDir(id);
      const st = statSync(dir);
      assert.equal((st.mode & 0o7777).toString(8), '710');
      assert.equal(st.uid, 0);
      assert.equal(st.gid, statSync(join(dir, 'rootfs')).uid, 'group = the host id of sandbox root');
      const mountinfo = readFileSync('/proc/self/mountinfo', 'utf8');
      const opts = (p: string) =>
        mountinfo
          .split('\n')
          .find((l) => l.split(' ')[4] === p)
          ?.split(' ')[5] ?? '';
      assert.match(opts(join(dir, 'disk')), /nosuid/);
      assert.match(opts(join(dir, 'disk')), /nodev/);
      assert.match(opts(join(dir, 'layers', '0')), /nosuid/);
      assert.match(opts(join(dir, 'rootfs')), /nodev/);
    });
  });
}

describe('sandbox roots on the host (runsc)', () => {
  it('a sandbox still starts and runs commands behind the guard', async () => {
    const m = await newInstance({ runtime: 'runsc' });
    try {
      const { id } = await m.create({ template: 'busybox' });
      assert.deepEqual(await sh(m, id, 'echo up'), { code: 0, out: 'up' });
      assert.equal((statSync(m.sandboxDir(id)).mode & 0o777).toString(8), '700');
      await m.delete(id);
      assertNoSandboxLeaks(m.paths, id);
    } finally {
      await destroyInstance(m);
    }
  });
});

describe('the support tree', () => {
  let m: SandboxManager;
  before(async () => {
    m = await newInstance();
  });
  after(async () => destroyInstance(m));

  it('holds copies, not hard links of the host binaries, read-only, and sandboxes run from it', async () => {
    const base = join(m.paths.dataDir, 'support');
    const trees = readdirSync(base);
    assert.equal(trees.length, 1);
    const all = files(join(base, trees[0]!));
    assert.ok(all.some((f) => f.endsWith('/bin/node')) && all.some((f) => f.endsWith('/tini')));
    for (const f of all) {
      const st = statSync(f);
      assert.equal(st.nlink, 1, `${f} has ${st.nlink} links`);
      if (!f.includes('/envd/')) assert.equal(st.mode & 0o222, 0, `${f} is writable (${(st.mode & 0o777).toString(8)})`);
    }
    const hostNode = statSync(realpathSync(process.execPath));
    const treeNode = statSync(join(base, trees[0]!, 'bin', 'node'));
    assert.notEqual(`${treeNode.dev}:${treeNode.ino}`, `${hostNode.dev}:${hostNode.ino}`);
    const sbx = await m.create({ template: 'busybox' }); // envd (node from the tree) answers
    assert.equal(sbx.state, 'running');
    await m.delete(sbx.id);
    assertNoSandboxLeaks(m.paths, sbx.id);
  });
});

describe('the control socket', () => {
  it('is 0600 from the start, and host users cannot connect', async () => {
    const dataDir = newDataDir();
    const serve = await startServe(dataDir);
    try {
      const socket = join(dataDir, 'manager.sock');
      assert.equal((statSync(socket).mode & 0o777).toString(8), '600');
      const connect = `require('net').connect(${JSON.stringify(socket)}).on('connect',()=>{console.log('connected');process.exit(0)}).on('error',(e)=>{console.log(e.code);process.exit(1)})`;
      const r = asHostNobody([process.execPath, '-e', connect]);
      assert.equal(r.out, 'EACCES');
    } finally {
      serve.kill('SIGTERM');
      await waitExit(serve);
      await destroyInstance(undefined, dataDir);
    }
  });
});
