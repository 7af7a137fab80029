// An instance's directory under /run/cubebox holds the runtime state of its running sandboxes:
// it stays while a sandbox runs on across a stop (the next start adopts it) and goes when the
// instance stops with nothing left to keep.
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { destroyInstance, execIn, newInstance, openManager } from '../helpers/instance.js';

describe('run directory', { timeout: 300_000 }, () => {
  it('stays while a sandbox runs on across a stop, and is removed when the instance stops with no sandbox left', async () => {
    let m = await newInstance();
    const { dataDir, runRoot } = m.paths;
    try {
      const sbx = await m.create({ template: 'busybox' });
      await m.close();
      assert.ok(existsSync(runRoot), 'the state of a running sandbox was removed');
      assert.ok(readdirSync(join(runRoot, m.runtime.name)).length > 0, 'the runtime state of a running sandbox was removed');
      m = await openManager(dataDir); // adopts the sandbox
      assert.equal(m.get(sbx.id).state, 'running');
      assert.equal((await execIn(m, sbx.id, ['echo', 'adopted'])).stdout, 'adopted\n');
      await m.delete(sbx.id);
      await m.close();
      assert.equal(existsSync(runRoot), false, `${runRoot} was left behind`);
    } finally {
      await destroyInstance(undefined, dataDir);
    }
  });
});
