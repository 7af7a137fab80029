// Bursts of creates through the real service and the published SDK: a bounded number is
// provisioned at once, a create past the queue gets 429 with Retry-After (which the SDK
// honours), and an adaptive pool grows after a burst so that the next one is served from it.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { destroyInstance } from '../helpers/instance.js';
import { sdkService, type E2B, type Service } from '../helpers/service.js';

let e2b: E2B;
let svc: Service;
let dataDir: string;
let key: string;

/** One sample of the service's Prometheus text, by metric name and labels. */
async function metric(name: string, labels = ''): Promise<number> {
  const text = await (await fetch(`${svc.url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name}${labels} `) || (labels === '' && l.startsWith(`${name} `)));
  return line ? Number(line.split(' ').pop()) : NaN;
}

async function until(what: string, fn: () => Promise<boolean>, ms = 180_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await fn())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

const poolReady = () => metric('cubebox_pool_ready', '{template="base"}');

describe('bursts of creates', { timeout: 900_000 }, () => {
  before(async () => {
    // one sandbox provisioned at a time and no queue: any create beyond it is refused
    ({ svc, dataDir, e2b, key } = await sdkService({ CUBEBOX_POOL: 'base=1:4', CUBEBOX_MAX_CREATING: '1', CUBEBOX_CREATE_QUEUE: '0' }));
    await until('the pool to hold one sandbox', async () => (await poolReady()) >= 1);
  });
  after(async () => {
    await svc.stop();
    await destroyInstance(undefined, dataDir);
  });

  it('past the bound a create is refused at once with 429 and Retry-After; the SDK waits that long and succeeds', async () => {
    const post = () =>
      fetch(`${svc.url}/sandboxes`, {
        method: 'POST',
        headers: { 'x-api-key': key, 'content-type': 'application/json' },
        body: JSON.stringify({ templateID: 'base' }),
      });
    const answers = await Promise.all(Array.from({ length: 5 }, post));
    const made: string[] = [];
    let refused = 0;
    for (const res of answers) {
      const body = (await res.json()) as { sandboxID?: string; code?: number; message?: string };
      if (res.status === 201) made.push(body.sandboxID!);
      else {
        assert.equal(res.status, 429, JSON.stringify(body));
        assert.equal(body.code, 429);
        assert.match(body.message!, /too many sandboxes are being created: \d+ in progress and \d+ waiting/);
        const retryAfter = Number(res.headers.get('retry-after'));
        assert.ok(Number.isInteger(retryAfter) && retryAfter >= 1, `Retry-After ${res.headers.get('retry-after')}`);
        refused++;
      }
    }
    assert.ok(made.length >= 1 && refused >= 1, `${made.length} made, ${refused} refused`);
    assert.ok((await metric('cubebox_creates', '{outcome="refused"}')) >= refused);
    for (const id of made) await e2b.Sandbox.kill(id);

    // the SDK retries a 429 after its Retry-After: every create of a burst succeeds
    const sbxs = await Promise.all(Array.from({ length: 3 }, () => e2b.Sandbox.create('base')));
    for (const s of sbxs) assert.equal((await s.commands.run('echo ok')).stdout, 'ok\n');
    await Promise.all(sbxs.map((s) => s.kill()));
    // without retries the SDK reports the refusal as a rate limit
    const noRetry = await Promise.allSettled(Array.from({ length: 4 }, () => e2b.Sandbox.create('base', { retries: 0 } as never)));
    for (const r of noRetry) {
      if (r.status === 'fulfilled') await r.value.kill();
      else assert.ok(r.reason instanceof e2b.RateLimitError, String(r.reason));
    }
    assert.ok(noRetry.some((r) => r.status === 'fulfilled'));
  });

  it('an adaptive pool grows after a burst, serves the next burst from it, and every sandbox works', async () => {
    // the bursts above asked for more than four sandboxes within seconds: the pool's size is now its max
    assert.equal(await metric('cubebox_pool_target', '{template="base"}'), 4);
    await until('the pool to grow to four', async () => (await poolReady()) >= 4);
    const fromPool = await metric('cubebox_creates', '{outcome="pool"}');
    const sbxs = await Promise.all(Array.from({ length: 4 }, () => e2b.Sandbox.create('base')));
    assert.equal((await metric('cubebox_creates', '{outcome="pool"}')) - fromPool, 4, 'all four claimed from the pool');
    assert.equal(new Set(sbxs.map((s) => s.sandboxId)).size, 4);
    const outs = await Promise.all(sbxs.map((s) => s.commands.run('hostname')));
    assert.deepEqual(
      outs.map((o) => o.stdout.trim()),
      sbxs.map((s) => s.sandboxId),
    );
    await Promise.all(sbxs.map((s) => s.kill()));
  });
});
