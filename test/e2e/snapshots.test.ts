import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { openPaths } from '../../src/config.js';
import { assertNoSandboxLeaks, destroyInstance } from '../helpers/instance.js';
import { sdkService, type E2B, type Service } from '../helpers/service.js';

let e2b: E2B;
let svc: Service;
let dataDir: string;

describe('snapshots and fork through the SDK', { timeout: 900_000 }, () => {
  before(async () => {
    ({ svc, dataDir, e2b } = await sdkService({ CUBEBOX_POOL: '' }));
  });
  after(async () => {
    await svc.stop();
    await destroyInstance(undefined, dataDir);
  });

  it('snapshot -> create from it -> the files are there; deleting it is refused while used, then frees its layer', async () => {
    const src = await e2b.Sandbox.create('base');
    await src.commands.run('mkdir -p ~/project && echo "from the snapshot" > ~/project/README && sudo sh -c "echo root-file > /opt/r"');
    const snap = await src.createSnapshot({ name: 'my-snapshot' });
    assert.deepEqual(snap.names, ['my-snapshot']);
    assert.equal((await src.commands.run('cat ~/project/README')).stdout, 'from the snapshot\n', 'the source keeps running after the snapshot');
    const listed = await e2b.Sandbox.listSnapshots({ sandboxId: src.sandboxId }).nextItems();
    assert.deepEqual(
      listed.map((s) => s.snapshotId),
      [snap.snapshotId],
    );

    const child = await e2b.Sandbox.create(snap.snapshotId);
    assert.equal(
      (await child.commands.run('cat ~/project/README; stat -c %U ~/project/README; cat /opt/r; stat -c %U /opt/r')).stdout,
      'from the snapshot\nuser\nroot-file\nroot\n',
    );
    const byName = await e2b.Sandbox.create('my-snapshot');
    assert.equal((await byName.commands.run('cat ~/project/README')).stdout, 'from the snapshot\n');

    await assert.rejects(e2b.Sandbox.deleteSnapshot(snap.snapshotId), /used by/);
    await child.kill();
    await byName.kill();
    await src.kill();
    const layersBefore = readdirSync(join(dataDir, 'layers')).length;
    assert.equal(await e2b.Sandbox.deleteSnapshot(snap.snapshotId), true);
    assert.equal(readdirSync(join(dataDir, 'layers')).length, layersBefore - 1, "the snapshot's layer is freed on disk");
    assert.equal(await e2b.Sandbox.deleteSnapshot(snap.snapshotId), false);
    for (const s of [src, child, byName]) assertNoSandboxLeaks(openPaths(dataDir, false), s.sandboxId);
  });

  it('fork count 3 gives three independent sandboxes', async () => {
    const src = await e2b.Sandbox.create('base');
    await src.commands.run('echo original > ~/f');
    const layersBefore = readdirSync(join(dataDir, 'layers')).length;
    const forks = await e2b.Sandbox.fork(src.sandboxId, { count: 3 });
    assert.equal(forks.length, 3);
    assert.equal(readdirSync(join(dataDir, 'layers')).length, layersBefore + 1, 'the fork made one layer, shared by its sandboxes');
    const sandboxes = forks.map((f) => {
      assert.ok(!(f instanceof Error), String(f));
      return f as InstanceType<E2B['Sandbox']>;
    });
    assert.equal(new Set(sandboxes.map((s) => s.sandboxId)).size, 3);
    for (const [i, s] of sandboxes.entries()) {
      assert.equal((await s.commands.run('cat ~/f')).stdout, 'original\n');
      await s.commands.run(`echo fork-${i} > ~/f`);
    }
    for (const [i, s] of sandboxes.entries()) assert.equal((await s.commands.run('cat ~/f')).stdout, `fork-${i}\n`, 'forks are independent');
    assert.equal((await src.commands.run('cat ~/f')).stdout, 'original\n');
    for (const s of [...sandboxes, src]) await s.kill();
    for (const s of [...sandboxes, src]) assertNoSandboxLeaks(openPaths(dataDir, false), s.sandboxId);
    // the fork's snapshot is ephemeral: listed nowhere, and its layer leaves the disk at the
    // reconciler's next pass once no sandbox uses it
    assert.equal((await e2b.Sandbox.listSnapshots().nextItems()).length, 0);
    for (let i = 0; i < 150 && readdirSync(join(dataDir, 'layers')).length > layersBefore; i++) await new Promise((r) => setTimeout(r, 100));
    assert.equal(readdirSync(join(dataDir, 'layers')).length, layersBefore, "the fork's layer was freed");
  });
});
