import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parsePool, serveConfig } from '../../src/app/serve.js';

describe('serve configuration', () => {
  it('takes flags over the environment over defaults', () => {
    const c = serveConfig({ port: '4000', dataDir: '/tmp/d' }, { CUBEBOX_PORT: '5000', CUBEBOX_HOST: '0.0.0.0', CUBEBOX_POOL: 'base=1,py=0' });
    assert.deepEqual([c.port, c.host, c.pool, c.runtime, c.buildBase, c.dataPort], [4000, '0.0.0.0', { base: 1, py: 0 }, 'crun', true, undefined]);
    assert.deepEqual(serveConfig({ dataDir: '/tmp/d', base: false }, {}).pool, { base: { min: 2, max: 32 } });
    assert.equal(serveConfig({ dataDir: '/tmp/d', base: false }, {}).buildBase, false);
  });
  it('refuses bad ports, pools and runtimes', () => {
    assert.throws(() => serveConfig({ port: 'x', dataDir: '/tmp/d' }, {}), /bad port 'x'/);
    assert.throws(() => serveConfig({ dataPort: '70000', dataDir: '/tmp/d' }, {}), /bad data port/);
    assert.throws(() => serveConfig({ dataDir: '/tmp/d' }, { CUBEBOX_RUNTIME: 'kata' }), /unknown runtime/);
    assert.throws(() => parsePool('base=100'), /bad --pool entry/);
    assert.deepEqual(parsePool(''), {});
    for (const bad of ['base=3:2', 'base=1:300', 'base=-1:2', 'base=a:b', 'base', 'base=1:2:3']) assert.throws(() => parsePool(bad), /bad --pool entry/, bad);
    assert.throws(() => serveConfig({ dataDir: '/tmp/d', maxCreating: '0' }, {}), /bad max creating '0'/);
    assert.throws(() => serveConfig({ dataDir: '/tmp/d' }, { CUBEBOX_CREATE_QUEUE: 'many' }), /bad create queue 'many'/);
  });
  it('reads adaptive pools and the create limits', () => {
    assert.deepEqual(parsePool('base=2:32,ci=1'), { base: { min: 2, max: 32 }, ci: 1 });
    const c = serveConfig({ dataDir: '/tmp/d', maxCreating: '6' }, { CUBEBOX_CREATE_QUEUE: '10' });
    assert.deepEqual(c.creates, { concurrency: 6, queue: 10 });
    assert.deepEqual(serveConfig({ dataDir: '/tmp/d' }, {}).creates, { concurrency: undefined, queue: undefined });
  });
});
