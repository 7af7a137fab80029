// envd's start-up: what loads on first use (the Connect services, /files, /metrics) answers
// concurrent first requests correctly; its own Headers behaves like the Fetch API's; the
// ES-module entry serves the same protocol as the CommonJS bundle.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { EnvdHeaders } from '../../src/envd/headers.js';
import { ENVD_ENV } from '../../src/envd/host-contract.js';
import { BASE_URL, readEnvelopes, socketGet, startTestEnvd, streamRequest, unaryRequest, type TestEnvd } from './helpers.js';

const ROOT = { Authorization: `Basic ${Buffer.from('root:').toString('base64')}` };

async function run(cmd: string, opts: { pty?: boolean; user?: string } = {}): Promise<{ stdout: string; exitCode: unknown }> {
  const auth = opts.user ? { Authorization: `Basic ${Buffer.from(`${opts.user}:`).toString('base64')}` } : ROOT;
  const msg = { process: { cmd: '/bin/bash', args: ['-c', cmd] }, ...(opts.pty ? { pty: { size: { cols: 200, rows: 24 } } } : {}) };
  const res = await streamRequest('/process.Process/Start', msg, auth);
  assert.equal(res.status, 200);
  let stdout = '';
  let exitCode: unknown;
  for await (const e of readEnvelopes(res.body as ReadableStream<Uint8Array>)) {
    const ev = (e.json.event ?? {}) as Record<string, Record<string, Record<string, unknown>>>;
    const out = ev.data?.stdout ?? ev.data?.pty;
    if (typeof out === 'string') stdout += Buffer.from(out, 'base64').toString();
    if (ev.end) exitCode = ev.end.exitCode;
  }
  return { stdout, exitCode };
}

/** Every kind of first request at once, on an envd that has answered nothing but /health. */
async function firstRequestsAtOnce(envd: TestEnvd): Promise<void> {
  writeFileSync(join(envd.rootHome, 'f.txt'), 'hello');
  const [a, b, c, stat, list, file, metrics] = await Promise.all([
    run('echo one'),
    run('echo two'),
    run('echo three'),
    unaryRequest('/filesystem.Filesystem/Stat', { path: join(envd.rootHome, 'f.txt') }, ROOT),
    unaryRequest('/process.Process/List', {}, ROOT),
    fetch(`${BASE_URL}/files?path=${encodeURIComponent(join(envd.rootHome, 'f.txt'))}&username=root`),
    fetch(`${BASE_URL}/metrics`),
  ]);
  assert.deepEqual([a.stdout, b.stdout, c.stdout], ['one\n', 'two\n', 'three\n']);
  for (const r of [a, b, c]) assert.ok(r.exitCode === 0 || r.exitCode === undefined, `exit ${String(r.exitCode)}`);
  assert.equal(stat.status, 200);
  assert.equal(((await stat.json()) as { entry: { size: string } }).entry.size, '5');
  assert.equal(list.status, 200);
  assert.equal(file.status, 200);
  assert.equal(await file.text(), 'hello');
  assert.equal(metrics.status, 200);
  assert.equal(typeof ((await metrics.json()) as { mem_total?: unknown }).mem_total, 'number');
}

describe('envd start-up', () => {
  test('concurrent first requests share one load of the services and all succeed', async () => {
    const envd = await startTestEnvd();
    try {
      await firstRequestsAtOnce(envd);
      assert.equal(envd.stderr(), '');
    } finally {
      await envd.stop();
    }
  });

  test('the ES-module entry (envd.mjs) serves the same protocol', async () => {
    const envd = await startTestEnvd([], undefined, ['envd.mjs']);
    try {
      assert.equal(await socketGet(envd.socket, '/health'), 204);
      await firstRequestsAtOnce(envd);
    } finally {
      await envd.stop();
    }
  });

  test("the host's tuning of envd's environment (MALLOC_ARENA_MAX) does not reach the processes it starts", async () => {
    const envd = await startTestEnvd([], undefined, ['envd.cjs'], { ...ENVD_ENV });
    try {
      for (const opts of [{}, { pty: true }, { user: 'user' }, { user: 'user', pty: true }]) {
        const { stdout } = await run('env; echo END', opts);
        assert.match(stdout, /END/, JSON.stringify(opts));
        assert.match(stdout, /^PATH=/m);
        for (const k of Object.keys(ENVD_ENV)) assert.doesNotMatch(stdout, new RegExp(`^${k}=`, 'm'), JSON.stringify(opts));
      }
    } finally {
      await envd.stop();
    }
  });

  test("envd's Headers behaves like the Fetch API's", () => {
    const ops = (H: typeof Headers) => {
      const h = new H({ 'Content-Type': ' text/plain\t', 'X-A': '1' });
      h.append('x-a', '2');
      h.append('Set-Cookie', 'a=1');
      h.append('set-cookie', 'b=2');
      h.set('X-B', 'z');
      const out: unknown[] = [h.get('x-a'), h.get('CONTENT-TYPE'), h.get('missing'), h.has('X-b'), [...h], [...h.keys()], [...h.values()], h.getSetCookie()];
      h.delete('x-a');
      const seen: [string, string][] = [];
      h.forEach((v, k) => seen.push([k, v]));
      out.push(seen, [...new H(h)], [...new H([['K', 'v']])], String(Object.prototype.toString.call(h)));
      for (const bad of [() => h.set('bad name', 'v'), () => h.append('x', 'a\nb'), () => new H([['only-one']] as unknown as [string, string][])]) {
        try {
          bad();
          out.push('no error');
        } catch (e) {
          out.push((e as Error).constructor.name);
        }
      }
      return out;
    };
    assert.deepEqual(ops(EnvdHeaders as unknown as typeof Headers), ops(Headers));
  });
});
