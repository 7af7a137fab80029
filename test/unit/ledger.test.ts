import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';
import type { LedgerKind } from '../../src/sandbox/deps.js';
import { LEDGER } from '../../src/sandbox/ledger.js';
import { LeakChecker } from '../../src/sandbox/leaks.js';
import { randomId } from '../../src/util/ids.js';
import { rig, type Rig } from './fakes.js';

/**
 * The resource ledger (src/sandbox/ledger.ts): the kinds of host resource a sandbox holds, in
 * the order provision acquires them. Teardown, the reconciler's orphan search and the leak
 * checker all work from it, so a new kind of resource is one entry in it.
 */

const NO_AGENT = { template: 't', agent: false, command: ['/bin/sleep', 'infinity'] };

let r: Rig | undefined;
afterEach(async () => {
  await r?.cleanup();
  r = undefined;
});

/** The ledger's kinds, each logging its releases into `log`. */
function spied(log: string[]): LedgerKind[] {
  return LEDGER.map((k) => ({ ...k, release: async (ctx, id, recorded) => (log.push(k.kind), k.release(ctx, id, recorded)) }));
}

/** A kind of resource held in a set (what a host-side resource would be), for the "new kind" test. */
function tokenKind(held: Map<string, string>, released: string[]): LedgerKind {
  return {
    kind: 'token',
    async release(_ctx, id, recorded) {
      for (const name of recorded) released.push(name);
      held.delete(id);
    },
    async holders() {
      return [...held.keys()];
    },
    leftovers(_scan, id) {
      return held.has(id) ? [{ sandbox: id, kind: 'dir', what: `token ${held.get(id)}` }] : [];
    },
    scanHolders() {
      return [...held.keys()];
    },
  };
}

describe('the resource ledger', () => {
  it('provision records the kinds in the ledger order, and teardown releases them in reverse', async () => {
    const released: string[] = [];
    r = await rig(undefined, undefined, spied(released));
    const s = await r.m.create(NO_AGENT);
    const order = LEDGER.map((k) => k.kind);
    const recorded = [...new Set(r.store.resources(s.id).map((x) => x.kind))];
    // every recorded kind is known, and they were recorded in the ledger's order
    assert.deepEqual(
      recorded,
      order.filter((k) => recorded.includes(k)),
    );
    assert.deepEqual(recorded.slice(0, 2), ['dir', 'mount']);
    assert.deepEqual(recorded.slice(-2), ['cgroup', 'container']);
    await r.m.delete(s.id);
    assert.deepEqual(released, [...order].reverse());
    assert.deepEqual(r.store.resources(s.id), []);
  });

  it('a pause without memory releases the container and cgroup but keeps them in the ledger for the next boot', async () => {
    const released: string[] = [];
    r = await rig(undefined, undefined, spied(released));
    const s = await r.m.create(NO_AGENT);
    await r.m.pause(s.id, { memory: false });
    assert.deepEqual(released, ['container', 'cgroup']);
    const kinds = new Set(r.store.resources(s.id).map((x) => x.kind));
    for (const k of ['dir', 'mount', 'cgroup', 'container']) assert.ok(kinds.has(k), `${k} stays recorded`);
    released.length = 0;
    await r.m.delete(s.id);
    assert.deepEqual(released, ['container', 'cgroup', 'network', 'mount', 'dir']);
  });

  it('a kind that cannot be released stops teardown with the rest still recorded, and a retry finishes', async () => {
    r = await rig();
    const s = await r.m.create(NO_AGENT);
    const cgPath = `/cubebox-${r.paths.instanceId}/${s.id}`;
    r.host.unkillable.add(cgPath);
    await assert.rejects(r.m.delete(s.id), /survived the kill[\s\S]*still held: .*dir .*mount .*container/);
    assert.equal(r.store.getSandbox(s.id)?.state, 'deleting');
    r.host.unkillable.delete(cgPath);
    await r.m.delete(s.id);
    assert.deepEqual(r.store.resources(s.id), []);
  });

  it('a new kind of resource is one ledger entry: released by teardown, found as an orphan, reported as a leak', async () => {
    const held = new Map<string, string>();
    const released: string[] = [];
    const ledger = [...LEDGER, tokenKind(held, released)];
    r = await rig(undefined, undefined, ledger);
    const s = await r.m.create(NO_AGENT);
    // provision would record it before making it; here the test does both
    r.store.recordResource(s.id, 'token', 'tok-1');
    held.set(s.id, 'tok-1');
    const checker = new LeakChecker(r.paths, r.store, ledger);
    assert.ok(checker.sandbox(s.id).some((l) => l.what === 'token tok-1'));
    await r.m.delete(s.id);
    assert.deepEqual(released, ['tok-1']);
    assert.equal(held.size, 0);
    assert.deepEqual(r.store.resources(s.id), []);

    // held on the host by an id the store does not know: the reconciler's orphan search finds it
    const orphan = randomId(20);
    held.set(orphan, 'tok-2');
    assert.ok(checker.instance().some((l) => l.sandbox === orphan && l.what === 'token tok-2'));
    const report = await r.m.reconcile();
    assert.deepEqual(report.orphansRemoved, [orphan]);
    assert.equal(held.size, 0);
    assert.deepEqual(
      checker.instance().filter((l) => l.sandbox === orphan),
      [],
    );
  });
});
