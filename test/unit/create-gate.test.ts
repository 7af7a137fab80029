import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';
import { CreateGate } from '../../src/sandbox/create-gate.js';
import { PoolSizer } from '../../src/sandbox/pool-sizer.js';
import { CubeboxError, HTTP_STATUS } from '../../src/util/errors.js';
import { rig, type Rig } from './fakes.js';

/** A promise and the function that settles it. */
function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

const tick = () => new Promise((r) => setImmediate(r));

describe('create gate', () => {
  it('runs at most `concurrency` at once and the rest in arrival order', async () => {
    const gate = new CreateGate({ concurrency: 2, maxQueue: 10, maxWaitMs: 60_000 });
    const order: number[] = [];
    let running = 0;
    let most = 0;
    const holds = Array.from({ length: 5 }, deferred);
    const all = holds.map((h, i) =>
      gate.run('request', async () => {
        order.push(i);
        most = Math.max(most, ++running);
        await h.promise;
        running--;
      }),
    );
    await tick();
    assert.deepEqual([gate.inFlight, gate.queued, order], [2, 3, [0, 1]]);
    for (const h of holds) {
      h.resolve();
      await tick();
    }
    await Promise.all(all);
    assert.equal(most, 2);
    assert.deepEqual(order, [0, 1, 2, 3, 4]);
    assert.deepEqual([gate.inFlight, gate.queued], [0, 0]);
  });

  it('gives a free turn to a waiting request before a waiting refill', async () => {
    const gate = new CreateGate({ concurrency: 1, maxQueue: 10, maxWaitMs: 60_000 });
    const first = deferred();
    const order: string[] = [];
    const a = gate.run('request', () => first.promise);
    const refill = gate.run('refill', async () => void order.push('refill'));
    const request = gate.run('request', async () => void order.push('request'));
    await tick();
    assert.deepEqual([gate.queued, gate.refillsQueued], [1, 1]);
    first.resolve();
    await Promise.all([a, refill, request]);
    assert.deepEqual(order, ['request', 'refill']);
  });

  it('refuses a request past the queue with a busy error (429) and a Retry-After; nothing waiting is lost', async () => {
    const gate = new CreateGate({ concurrency: 1, maxQueue: 2, maxWaitMs: 60_000 });
    const hold = deferred();
    const accepted = [gate.run('request', () => hold.promise), gate.run('request', async () => 1), gate.run('request', async () => 2)];
    await tick();
    await assert.rejects(
      gate.run('request', async () => 3),
      (e: unknown) => {
        assert.ok(e instanceof CubeboxError);
        assert.equal(e.kind, 'busy');
        assert.equal(HTTP_STATUS[e.kind], 429);
        assert.match(e.message, /1 in progress and 2 waiting/);
        assert.ok(e.retryAfterSec! >= 1 && Number.isInteger(e.retryAfterSec));
        return true;
      },
    );
    // refills are never refused: they wait
    const refill = gate.run('refill', async () => 'r');
    hold.resolve();
    assert.deepEqual(await Promise.all([...accepted.slice(1), refill]), [1, 2, 'r']);
  });

  it('a request never is refused for turns that refills hold: it waits and goes first', async () => {
    const gate = new CreateGate({ concurrency: 1, maxQueue: 0, maxWaitMs: 60_000 });
    const refill = deferred();
    const order: string[] = [];
    const r1 = gate.run('refill', () => refill.promise);
    const r2 = gate.run('refill', async () => void order.push('refill'));
    const req = gate.run('request', async () => void order.push('request'));
    await tick();
    // a second request is refused: one request already waits and the queue holds none beyond it
    await assert.rejects(
      gate.run('request', async () => 0),
      (e: unknown) => e instanceof CubeboxError && e.kind === 'busy',
    );
    refill.resolve();
    await Promise.all([r1, r2, req]);
    assert.deepEqual(order, ['request', 'refill']);
  });

  it('refuses a request whose wait would pass maxWaitMs, estimated from measured provisioning times', async () => {
    let now = 0;
    const gate = new CreateGate({ concurrency: 1, maxQueue: 100, maxWaitMs: 5000, now: () => now });
    // teach it that a provisioning takes 2 s
    for (let i = 0; i < 30; i++)
      await gate.run('request', async () => {
        now += 2000;
      });
    const hold = deferred();
    const queued = [gate.run('request', () => hold.promise), gate.run('request', async () => 1), gate.run('request', async () => 2)];
    await tick();
    // a fourth would wait for three provisionings of about 2 s: more than 5 s
    await assert.rejects(
      gate.run('request', async () => 3),
      (e: unknown) => e instanceof CubeboxError && e.kind === 'busy' && e.retryAfterSec! >= 5,
    );
    hold.resolve();
    await Promise.all(queued);
  });
});

describe('pool sizer', () => {
  it('sizes an adaptive pool for the busiest burst of the hold period, between its bounds', () => {
    const s = new PoolSizer({ burstWindowMs: 10_000, holdMs: 60_000 });
    const b = { min: 2, max: 30 };
    assert.equal(s.target('base', b, 0), 2);
    for (let i = 0; i < 20; i++) s.record('base', 1000 + i * 10); // a burst of 20
    for (let i = 0; i < 5; i++) s.record('base', 30_000 + i * 2000); // then a trickle
    assert.equal(s.target('base', b, 40_000), 20);
    for (let i = 0; i < 50; i++) s.record('base', 41_000);
    assert.equal(s.target('base', b, 41_000), 30, 'capped at max');
    assert.equal(s.target('other', b, 41_000), 2, 'per template');
    // bursts forgotten after the hold period: back to min
    assert.equal(s.target('base', b, 41_000 + 60_001), 2);
    // a fixed pool does not move
    s.record('fixed', 0);
    assert.equal(s.target('fixed', { min: 3, max: 3 }, 1), 3);
  });

  it('counts creates within one window only', () => {
    const s = new PoolSizer({ burstWindowMs: 1000, holdMs: 100_000 });
    for (let i = 0; i < 10; i++) s.record('t', i * 1000); // one per second: never two in a window
    assert.equal(s.peak('t', 10_000), 1);
  });
});

describe('creates through the gate (fake runtime and host, real store)', () => {
  let r: Rig | undefined;
  afterEach(async () => r?.cleanup());
  const NO_AGENT = { template: 't', agent: false, command: ['/bin/sleep', 'infinity'] };

  it('provisions at most `concurrency` sandboxes at once; past the queue a create is refused and leaves nothing', async () => {
    r = await rig(undefined, { concurrency: 2, queue: 1 });
    const release = r.runtime.gate('run');
    const creates = [r.m.create(NO_AGENT), r.m.create(NO_AGENT), r.m.create(NO_AGENT)];
    for (let i = 0; i < 20 && r.runtime.calls.filter((c) => c.startsWith('run')).length < 2; i++) await new Promise((res) => setTimeout(res, 5));
    await tick();
    assert.equal(r.runtime.calls.filter((c) => c.startsWith('run')).length, 2, 'two in the runtime, one waiting');
    const rows = r.store.listSandboxes().length;
    await assert.rejects(r.m.create(NO_AGENT), (e: unknown) => e instanceof CubeboxError && e.kind === 'busy' && e.retryAfterSec! >= 1);
    assert.equal(r.store.listSandboxes().length, rows, 'a refused create writes no row');
    release();
    const made = await Promise.all(creates);
    assert.deepEqual(
      made.map((s) => s.state),
      ['running', 'running', 'running'],
    );
    for (const s of made) await r.m.delete(s.id);
    assert.equal(r.store.listSandboxes().length, 0);
  });
});
