// The code-interpreter server (port 49999) through the data plane, as anyone who knows a
// sandbox's id reaches it: running code takes the sandbox's access token, context calls take it
// when sent (the SDK sends none: they are as open as the sandbox's ports), and the number of
// contexts (kernels) a sandbox holds is bounded, so that no flood of contexts exhausts its
// memory.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { destroyInstance } from '../helpers/instance.js';
import { sdkService, type Service } from '../helpers/service.js';

type CI = typeof import('@e2b/code-interpreter');

let svc: Service;
let dataDir: string;
let sbx: InstanceType<CI['Sandbox']>;

/** A request to the sandbox's port 49999 through the data plane, with the SDK's routing headers. */
async function call(method: string, path: string, token: string | undefined, body?: unknown): Promise<{ status: number; text: string }> {
  const headers: Record<string, string> = { 'content-type': 'application/json', 'e2b-sandbox-id': sbx.sandboxId, 'e2b-sandbox-port': '49999' };
  if (token !== undefined) headers['x-access-token'] = token;
  const res = await fetch(`${svc.url}${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  return { status: res.status, text: await res.text() };
}

// the token the SDK holds (and sends on /execute only)
const owner = () => (sbx as unknown as { envdAccessToken: string }).envdAccessToken;
const listIds = async () => (JSON.parse((await call('GET', '/contexts', owner())).text) as { id: string }[]).map((c) => c.id);

describe('code interpreter through the data plane', { timeout: 900_000 }, () => {
  before(async () => {
    const subnet = `10.${201 + Math.floor(Math.random() * 50)}.${Math.floor(Math.random() * 250)}.0/24`;
    ({ svc, dataDir } = await sdkService({ CUBEBOX_SUBNET: subnet }));
    const ci = (await import('@e2b/code-interpreter')) as unknown as CI;
    sbx = await ci.Sandbox.create({ requestTimeoutMs: 300_000 });
  });
  after(async () => {
    await sbx?.kill().catch(() => undefined);
    await svc.stop();
    await destroyInstance(undefined, dataDir);
  });

  it('a wrong access token is refused on every route, a missing one on every route but the contexts the SDK calls without one', async () => {
    assert.ok(owner(), 'the sandbox has an access token');
    const victim = JSON.parse((await call('POST', '/contexts', owner(), { language: 'python' })).text) as { id: string };
    assert.equal((await sbx.runCode('kept = 7', { context: victim as never })).error, undefined);
    const before = await listIds();
    const contextRoutes: [string, string, unknown?][] = [
      ['GET', '/contexts'],
      ['POST', '/contexts', { language: 'python' }],
      ['POST', `/contexts/${victim.id}/restart`],
      ['DELETE', `/contexts/${victim.id}`],
    ];
    const codeRoutes: [string, string, unknown?][] = [
      ['POST', '/execute', { code: 'kept = 0' }],
      ['POST', '/execute', { code: 'kept = 0', context_id: victim.id }],
      ['GET', '/openapi.json'],
    ];
    for (const token of [undefined, '', 'wrong', `${owner()}x`]) {
      for (const [method, path, body] of token === undefined ? codeRoutes : [...contextRoutes, ...codeRoutes]) {
        const r = await call(method, path, token, body);
        assert.equal(r.status, 401, `${method} ${path} with token ${JSON.stringify(token)}: ${r.status} ${r.text}`);
        assert.match(r.text, /access token/);
      }
    }
    assert.deepEqual(await listIds(), before, 'no context was made or removed');
    assert.equal((await sbx.runCode('kept', { context: victim as never })).text, '7', 'the context kept its state');
    // the SDK's own context calls (no access token) work, as on E2B
    assert.ok((await sbx.listCodeContexts()).some((c) => c.id === victim.id));
    // the owner's token works on each of them
    assert.equal((await call('POST', `/contexts/${victim.id}/restart`, owner())).status, 200);
    assert.equal((await call('DELETE', `/contexts/${victim.id}`, owner())).status, 200);
    assert.equal((await call('GET', '/health', undefined)).status, 200, 'health stays open (the readiness check)');
  });

  it('a sandbox without public traffic refuses context calls that lack its traffic token', async () => {
    const ci = (await import('@e2b/code-interpreter')) as unknown as CI;
    const closed = await ci.Sandbox.create({ requestTimeoutMs: 300_000, network: { allowPublicTraffic: false } });
    try {
      const headers = { 'content-type': 'application/json', 'e2b-sandbox-id': closed.sandboxId, 'e2b-sandbox-port': '49999' };
      for (const [method, path] of [
        ['GET', '/contexts'],
        ['POST', '/contexts'],
      ]) {
        const r = await fetch(`${svc.url}${path}`, { method, headers, body: method === 'POST' ? '{}' : undefined });
        assert.equal(r.status, 403, `${method} ${path}: ${r.status}`);
      }
      // the SDK sends the traffic token itself: its context calls work
      const ctx = await closed.createCodeContext({ language: 'python' });
      assert.ok((await closed.listCodeContexts()).some((c) => c.id === ctx.id));
    } finally {
      await closed.kill();
    }
  });

  it('a sandbox holds a bounded number of contexts: past it, 429 naming the limit; a removal frees a place', async () => {
    const made: string[] = [];
    let refused: { status: number; text: string } | undefined;
    for (let i = 0; i < 40 && !refused; i++) {
      const r = await call('POST', '/contexts', owner(), { language: 'bash' });
      if (r.status === 200) made.push((JSON.parse(r.text) as { id: string }).id);
      else refused = r;
    }
    assert.equal(refused?.status, 429, refused?.text);
    const limit = Number(/at most (\d+)/.exec(refused!.text)?.[1]);
    assert.equal((await listIds()).length, limit, refused!.text);
    assert.ok(limit >= 8 && limit < 40, `limit ${limit}`);
    // a language's first run needs a context of its own: refused the same way
    const js = await call('POST', '/execute', owner(), { code: 'echo hi', language: 'typescript' });
    assert.equal(js.status, 429, js.text);
    // parallel creations do not overshoot the bound
    for (const id of made.splice(0, 2)) assert.equal((await call('DELETE', `/contexts/${id}`, owner())).status, 200);
    const burst = await Promise.all([0, 1, 2, 3, 4].map(() => call('POST', '/contexts', owner(), { language: 'bash' })));
    assert.deepEqual(burst.map((r) => r.status).sort(), [200, 200, 429, 429, 429]);
    for (const r of burst) if (r.status === 200) made.push((JSON.parse(r.text) as { id: string }).id);
    assert.equal((await listIds()).length, limit);
    for (const id of made) assert.equal((await call('DELETE', `/contexts/${id}`, owner())).status, 200);
    assert.equal((await sbx.runCode('1 + 1')).text, '2', 'the default context still runs');
  });
});
