// Deletes at once on real sandboxes: the delete gate bounds how many teardowns run together,
// concurrent teardowns share their network slot's `ip` and `nft` processes and their unmounts,
// and nothing of any sandbox is left on the host.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { linkExists, netnsExists, nftRuns } from '../../src/network/host.js';
import { DEFAULT_NETWORK, egressPolicy } from '../../src/network/policy.js';
import type { SandboxManager } from '../../src/sandbox/manager.js';
import { assertNoSandboxLeaks, destroyInstance, newInstance } from '../helpers/instance.js';

let m: SandboxManager;

describe('deletes at once', { timeout: 300_000 }, () => {
  before(async () => {
    // no pre-made slots: the only nft processes while sandboxes go are their releases
    m = await newInstance({ creates: { deleteConcurrency: 3 }, network: { warmSlots: 0 } });
  });
  after(async () => destroyInstance(m));

  it('eight deletes at once: at most three teardowns at a time, every sandbox gone, nothing left', async () => {
    const made = [];
    for (let i = 0; i < 8; i++) made.push(await m.create({ template: 'busybox', agent: false }));
    const gate = m.deleteGate;
    let most = 0;
    const sample = setInterval(() => (most = Math.max(most, gate.inFlight)), 1);
    try {
      await Promise.all(made.map((s) => m.delete(s.id)));
    } finally {
      clearInterval(sample);
    }
    assert.ok(most <= 3, `at most three teardowns at once, saw ${most}`);
    assert.equal(gate.busy, false);
    assert.deepEqual(m.list(), []);
    for (const s of made) assertNoSandboxLeaks(m.paths, s.id);
  });

  it('slots released together share one ip and one nft process after the first, and all of each goes', async () => {
    const net = m.network();
    assert.ok(net, 'this host gives sandboxes a network');
    const owners = Array.from({ length: 5 }, (_, i) => `batchtest${i}`);
    const leases = [];
    for (const id of owners) leases.push(await net.attach(id, egressPolicy(DEFAULT_NETWORK)));
    const before = nftRuns();
    await Promise.all(owners.map((id) => net.release(id)));
    // the first release runs at once, the four that came meanwhile as one batch
    assert.equal(nftRuns() - before, 2, 'two nft transactions for five slots');
    for (const l of leases) {
      assert.ok(!existsSync(l.netns) && !netnsExists(l.netns.split('/').pop()!), `namespace ${l.netns} is gone`);
      assert.ok(!linkExists(l.hostLink), `link ${l.hostLink} is gone`);
    }
    const objects = await net.objects();
    for (const l of leases) assert.ok(!objects.has(`chain:s${l.slot}`), `chain of slot ${l.slot} is gone`);
    assert.deepEqual(net.ownerIds(), []);
  });
});
