// The control plane's body schemas answer as the hand-written checks did: E2B's {code, message}
// with status 400 and the same words, after the 404 of a missing sandbox or template, and
// without type coercion. A fake node records what reached it.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import Fastify, { type FastifyInstance } from 'fastify';
import { CONTROL_PLANE_AJV, registerControlPlane, type ControlPlaneOptions } from '../../src/api/control-plane.js';
import { fakeNode, sandboxInfo } from '../helpers/fake-node.js';

const calls: string[] = [];
const info = sandboxInfo();
const template = { id: 't1', name: 'base', layers: [], createdAt: 1, config: { user: 'user', env: {}, cpuCount: 2, memoryMB: 512, diskSizeMB: 1024 } };
const opts: ControlPlaneOptions = {
  node: fakeNode({
    templates: {
      find: (r: string) => (r === 'base' ? template : undefined),
      list: () => [],
      ensure: async () => undefined,
    },
    sandboxes: {
      get: (id: string) => {
        if (id !== info.id) throw new Error('not found');
        return info;
      },
      list: () => [info],
      create: async (r) => (calls.push(`create ${r.timeoutSec} ${JSON.stringify(r.metadata)}`), info),
      resume: async (_id, o) => (calls.push(`resume ${o?.timeoutSec}`), info),
      setTimeout: async (_id, t) => (calls.push(`timeout ${t}`), info),
    },
    keys: { authenticate: async () => ({ keyId: 'k', keyPrefix: 'e2b_x', team: 'default', admin: false }) },
  }),
  domain: 'example.test',
  clientId: 'c',
};

describe('control-plane body schemas', () => {
  let app: FastifyInstance;
  before(async () => {
    app = Fastify({ logger: false, ajv: CONTROL_PLANE_AJV });
    registerControlPlane(app, opts);
    await app.ready();
  });
  after(() => app.close());
  const post = async (url: string, payload?: string) => {
    calls.length = 0;
    const r = await app.inject({
      method: 'POST',
      url,
      payload,
      headers: { 'x-api-key': 'k', ...(payload === undefined ? {} : { 'content-type': 'application/json' }) },
    });
    return [r.statusCode, r.body ? (r.json<{ message?: string }>().message ?? '') : '', calls.join('|')];
  };

  it('refuses malformed create bodies with the old words and creates nothing', async () => {
    for (const body of ['null', '5', '"base"', '[]', 'true'])
      assert.deepEqual(await post('/v2/sandboxes', body), [400, 'request body must be a JSON object', '']);
    assert.deepEqual(await post('/sandboxes', '{"templateID":""}'), [400, 'templateID must be a string', '']);
    assert.deepEqual(await post('/sandboxes', '{"metadata":[]}'), [400, 'metadata must be an object of strings', '']);
    assert.deepEqual(await post('/sandboxes', '{"metadata":{"a/b":1}}'), [400, 'metadata.a/b must be a string', '']);
    assert.deepEqual(await post('/sandboxes', '{"envVars":{"A":true}}'), [400, 'envVars.A must be a string', '']);
    assert.deepEqual(await post('/sandboxes', '{"timeout":"10"}'), [400, 'timeout must be a non-negative number of seconds', ''], 'no coercion');
    assert.deepEqual(await post('/sandboxes', '{"timeout":86401}'), [400, 'timeout cannot be greater than 86400 seconds (24 hours)', '']);
    assert.deepEqual(await post('/sandboxes', '{"templateID":"nope","timeout":-1}'), [404, "template 'nope' not found", ''], 'the 404 comes first');
  });

  it('takes what it took before', async () => {
    assert.deepEqual(await post('/sandboxes'), [201, '', 'create 300 {}']);
    assert.deepEqual(await post('/sandboxes', '{"timeout":null,"metadata":{"a":"b"}}'), [201, '', 'create 300 {"a":"b"}']);
    assert.deepEqual(await post('/sandboxes/sbx1abc/resume', '[1]'), [201, '', 'resume 300'], 'a non-object body is ignored');
    assert.deepEqual(await post('/sandboxes/sbx1abc/timeout', '{"timeout":10.7}'), [204, '', 'timeout 10']);
  });

  it('checks lifecycle bodies after the sandbox', async () => {
    assert.deepEqual(await post('/sandboxes/nosuch/timeout', '{"timeout":-1}'), [404, "sandbox 'nosuch' not found", '']);
    assert.deepEqual(await post('/sandboxes/sbx1abc/timeout', '{"timeout":-1}'), [400, 'timeout must be a non-negative number of seconds', '']);
    assert.deepEqual(await post('/sandboxes/sbx1abc/timeout', '{}'), [400, 'timeout is required', '']);
    assert.deepEqual(await post('/sandboxes/sbx1abc/resume', '{"timeout":[5]}'), [400, 'timeout must be a non-negative number of seconds', '']);
  });
});
