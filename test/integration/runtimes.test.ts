import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { describe, it } from 'node:test';
import type { RuntimeName } from '../../src/runtime/registry.js';
import { assertNoSandboxLeaks, destroyInstance, execIn, newInstance } from '../helpers/instance.js';

// crun is covered by every other suite; runc and runsc are selectable by configuration.
for (const runtime of ['runc', 'runsc'] as RuntimeName[]) {
  describe(`the ${runtime} runtime`, { skip: !existsSync(`/usr/bin/${runtime}`) && `${runtime} is not installed` }, () => {
    it('create (with envd) -> exec -> pause -> resume -> pause -> delete leaves nothing', async () => {
      const m = await newInstance({ runtime });
      try {
        const sbx = await m.create({ template: 'busybox' });
        assert.equal(sbx.runtime, runtime);
        const r = await execIn(m, sbx.id, ['sh', '-c', 'echo out; exit 4']);
        assert.equal(r.stdout, 'out\n');
        assert.equal(r.code, 4);
        if (runtime === 'runsc') assert.match((await execIn(m, sbx.id, ['uname', '-r'])).stdout, /^4\.4\.0/, 'gVisor reports its own kernel');
        await m.pause(sbx.id);
        await m.resume(sbx.id);
        assert.equal((await execIn(m, sbx.id, ['echo', 'back'])).stdout, 'back\n');
        await m.pause(sbx.id);
        await m.delete(sbx.id);
        assertNoSandboxLeaks(m.paths, sbx.id);
      } finally {
        await destroyInstance(m);
      }
    });

    it("a template's start command is running and ready when create returns", async () => {
      const m = await newInstance({ runtime });
      try {
        m.templates.addDerived('with-start', m.templates.get('busybox'), {
          startCommand: 'echo up > /tmp/up; exec sleep 100000',
          readyCommand: 'test -f /tmp/up',
        });
        const sbx = await m.create({ template: 'with-start' });
        const r = await execIn(m, sbx.id, ['sh', '-c', 'cat /tmp/up; ps | grep -c "[s]leep 100000"']);
        assert.equal(r.stdout, 'up\n1\n', r.stderr);
        await m.delete(sbx.id);
        assertNoSandboxLeaks(m.paths, sbx.id);
      } finally {
        await destroyInstance(m);
      }
    });

    it('a filesystem-only pause resumes with a new boot (what the last boot left is cleared), twice, and delete leaves nothing', async () => {
      const m = await newInstance({ runtime });
      const canary = mkdtempSync('/var/tmp/cubebox-canary-');
      try {
        const sbx = await m.create({ template: 'busybox' });
        await execIn(m, sbx.id, ['sh', '-c', 'echo kept > /root/file']);
        // what the sandbox leaves in the directory it shares with the host goes without the
        // host following it: a link to a host directory is removed, not what it points to
        writeFileSync(join(canary, 'keep'), 'host');
        const planted = await execIn(m, sbx.id, [
          'sh',
          '-c',
          `ln -s ${canary} /.cubebox/run/link && mkdir /.cubebox/run/d && ln -s ${canary}/keep /.cubebox/run/d/f`,
        ]);
        assert.equal(planted.code, 0, planted.stderr);
        for (let i = 0; i < 2; i++) {
          await m.pause(sbx.id, { memory: false });
          await m.resume(sbx.id);
          assert.equal((await execIn(m, sbx.id, ['cat', '/root/file'])).stdout, 'kept\n');
          assert.deepEqual(readdirSync(dirname(m.envdSocket(sbx.id))), ['envd.sock']);
        }
        assert.equal(readFileSync(join(canary, 'keep'), 'utf8'), 'host');
        await m.delete(sbx.id);
        assertNoSandboxLeaks(m.paths, sbx.id);
      } finally {
        rmSync(canary, { recursive: true, force: true });
        await destroyInstance(m);
      }
    });
  });
}
