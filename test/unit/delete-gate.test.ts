import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';
import { CreateGate } from '../../src/sandbox/create-gate.js';
import { DeleteGate } from '../../src/sandbox/delete-gate.js';
import { Coalescer } from '../../src/util/batch.js';
import { rig, type Rig } from './fakes.js';

/** A promise and the function that settles it. */
function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

const tick = () => new Promise((r) => setImmediate(r));

describe('delete gate', () => {
  it('runs at most `concurrency` teardowns at once, the rest in arrival order, and tells when it is idle', async () => {
    const gate = new DeleteGate(2);
    let idle = 0;
    gate.onIdle(() => idle++);
    const order: number[] = [];
    let running = 0;
    let most = 0;
    const holds = Array.from({ length: 5 }, deferred);
    const all = holds.map((h, i) =>
      gate.run(async () => {
        order.push(i);
        most = Math.max(most, ++running);
        await h.promise;
        running--;
      }),
    );
    await tick();
    assert.deepEqual([gate.inFlight, gate.queued, gate.busy, order], [2, 3, true, [0, 1]]);
    // the second ends first: the next in line (2) takes its turn, not a later one
    holds[1]!.resolve();
    await tick();
    assert.deepEqual(order, [0, 1, 2]);
    for (const h of holds) h.resolve();
    await Promise.all(all);
    assert.equal(most, 2);
    assert.deepEqual(order, [0, 1, 2, 3, 4]);
    assert.deepEqual([gate.inFlight, gate.queued, gate.busy, idle], [0, 0, false, 1]);
  });

  it('a failed teardown gives its turn on', async () => {
    const gate = new DeleteGate(1);
    await assert.rejects(
      gate.run(() => Promise.reject(new Error('stuck'))),
      /stuck/,
    );
    assert.equal(await gate.run(async () => 'next'), 'next');
    assert.equal(gate.busy, false);
  });
});

describe('create gate: refills yield to deletes', () => {
  it('a refill waits while teardowns run or wait, a request does not; the refill goes on once deletes are idle', async () => {
    const deletes = new DeleteGate(1);
    const gate = new CreateGate({ concurrency: 2, maxQueue: 10, maxWaitMs: 60_000, refillsYield: () => deletes.busy });
    deletes.onIdle(() => gate.wake());
    const order: string[] = [];
    const teardown = deferred();
    const del = deletes.run(() => teardown.promise);
    const refill = gate.run('refill', async () => void order.push('refill'));
    const request = gate.run('request', async () => void order.push('request'));
    await tick();
    assert.deepEqual([order, gate.refillsQueued, gate.inFlight], [['request'], 1, 0]);
    teardown.resolve();
    await Promise.all([del, refill, request]);
    assert.deepEqual(order, ['request', 'refill']);
    assert.equal(gate.inFlight, 0);
  });

  it('a refill waiting behind a request does not take the freed turn while deletes are busy', async () => {
    const deletes = new DeleteGate(1);
    const gate = new CreateGate({ concurrency: 1, maxQueue: 10, maxWaitMs: 60_000, refillsYield: () => deletes.busy });
    deletes.onIdle(() => gate.wake());
    const first = deferred();
    const teardown = deferred();
    const order: string[] = [];
    const a = gate.run('request', () => first.promise);
    const refill = gate.run('refill', async () => void order.push('refill'));
    const del = deletes.run(() => teardown.promise);
    first.resolve();
    await a;
    await tick();
    assert.deepEqual([order, gate.refillsQueued], [[], 1]);
    teardown.resolve();
    await Promise.all([del, refill]);
    assert.deepEqual(order, ['refill']);
  });
});

describe('coalescer', () => {
  it('runs the first item at once and what arrives meanwhile as one batch', async () => {
    const batches: number[][] = [];
    const hold = deferred();
    const c = new Coalescer<number>(async (items) => {
      batches.push(items);
      if (items[0] === 0) await hold.promise;
    });
    const first = c.run(0);
    await tick();
    const rest = [1, 2, 3].map((i) => c.run(i));
    await tick();
    assert.deepEqual(batches, [[0]]);
    hold.resolve();
    await Promise.all([first, ...rest]);
    assert.deepEqual(batches, [[0], [1, 2, 3]]);
  });

  it('a failed batch runs again item by item: only the bad item fails', async () => {
    const hold = deferred();
    const c = new Coalescer<number>(async (items) => {
      if (items[0] === 0) await hold.promise;
      if (items.includes(2)) throw new Error(`bad ${items.join(',')}`);
    });
    const first = c.run(0);
    await tick();
    const rest = [1, 2, 3].map((i) =>
      c.run(i).then(
        () => 'ok',
        (e: Error) => e.message,
      ),
    );
    hold.resolve();
    await first;
    assert.deepEqual(await Promise.all(rest), ['ok', 'bad 2', 'ok']);
  });
});

describe('deletes through the gate (fake runtime and host, real store)', () => {
  let r: Rig | undefined;
  afterEach(async () => r?.cleanup());
  const NO_AGENT = { template: 't', agent: false, command: ['/bin/sleep', 'infinity'] };

  it('tears down at most `deleteConcurrency` sandboxes at once, in the order asked, and leaves nothing', async () => {
    r = await rig(undefined, { deleteConcurrency: 2 });
    const made = [];
    for (let i = 0; i < 5; i++) made.push(await r.m.create(NO_AGENT));
    const release = r.runtime.gate('forceDelete');
    const deletes = made.map((s) => r!.m.delete(s.id));
    for (let i = 0; i < 50 && r.runtime.calls.filter((c) => c.startsWith('forceDelete')).length < 2; i++) await new Promise((res) => setTimeout(res, 5));
    await tick();
    const started = () => r!.runtime.calls.filter((c) => c.startsWith('forceDelete')).map((c) => c.slice(c.lastIndexOf('-') + 1));
    assert.deepEqual(started(), [made[0]!.id, made[1]!.id], 'two in the runtime, three waiting');
    assert.deepEqual([r.m.deleteGate.inFlight, r.m.deleteGate.queued], [2, 3]);
    // every waiting sandbox is already deleting (its clients were cut)
    for (const s of made) assert.equal(r.store.getSandbox(s.id)?.state, 'deleting');
    release();
    await Promise.all(deletes);
    assert.deepEqual(
      started(),
      made.map((s) => s.id),
      'in the order asked',
    );
    assert.equal(r.store.listSandboxes().length, 0);
    assert.equal(r.m.deleteGate.busy, false);
  });
});
