// envd's REST routes with plain HTTP: /files errors, Range, gzip, upload shapes, /envs, /metrics,
// /init and the access token rules (contract section 5).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import { gunzipSync, gzipSync } from 'node:zlib';
import { fileSignature } from '../../src/protocol/signature.js';
import { BASE_URL, initEnvd, sdk, startTestEnvd, streamRequest, readEnvelopes, unaryRequest, type TestEnvd } from './helpers.js';

type Json = Record<string, unknown>;

function rawGet(path: string, headers: Record<string, string>): Promise<{ status: number; headers: Record<string, unknown>; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = request(`${BASE_URL}${path}`, { headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (d: Buffer) => chunks.push(d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('envd HTTP routes', () => {
  let envd: TestEnvd;

  before(async () => {
    envd = await startTestEnvd();
    writeFileSync(join(envd.home, 'data.txt'), '0123456789');
  });
  after(async () => {
    await envd?.stop();
  });

  test('/health is 204', async () => {
    const r = await fetch(`${BASE_URL}/health`);
    assert.equal(r.status, 204);
  });

  test('/files download errors are JSON', async () => {
    const missing = await fetch(`${BASE_URL}/files?path=nope.txt`);
    assert.equal(missing.status, 404);
    assert.equal(missing.headers.get('content-type'), 'application/json');
    const body = (await missing.json()) as Json;
    assert.equal(body.code, 404);
    assert.equal(typeof body.message, 'string');
    const dir = await fetch(`${BASE_URL}/files?path=${encodeURIComponent(envd.home)}`);
    assert.equal(dir.status, 400);
    assert.equal(((await dir.json()) as Json).code, 400);
    const user = await fetch(`${BASE_URL}/files?path=data.txt&username=ghost`);
    assert.equal(user.status, 401);
    const other = await fetch(`${BASE_URL}/nothing`);
    assert.equal(other.status, 404);
    assert.equal(((await other.json()) as Json).code, 404);
  });

  test('Range requests', async () => {
    const part = await fetch(`${BASE_URL}/files?path=data.txt`, { headers: { Range: 'bytes=2-5' } });
    assert.equal(part.status, 206);
    assert.equal(part.headers.get('content-range'), 'bytes 2-5/10');
    assert.equal(await part.text(), '2345');
    const suffix = await fetch(`${BASE_URL}/files?path=data.txt`, { headers: { Range: 'bytes=-3' } });
    assert.equal(await suffix.text(), '789');
    const open = await fetch(`${BASE_URL}/files?path=data.txt`, { headers: { Range: 'bytes=7-' } });
    assert.equal(await open.text(), '789');
    const bad = await fetch(`${BASE_URL}/files?path=data.txt`, { headers: { Range: 'bytes=50-' } });
    assert.equal(bad.status, 416);
    await bad.arrayBuffer();
  });

  test('gzip download only when asked', async () => {
    const gz = await rawGet('/files?path=data.txt', { 'Accept-Encoding': 'gzip' });
    assert.equal(gz.status, 200);
    assert.equal(gz.headers['content-encoding'], 'gzip');
    assert.equal(gunzipSync(gz.body).toString(), '0123456789');
    const plain = await rawGet('/files?path=data.txt', {});
    assert.equal(plain.headers['content-encoding'], undefined);
    assert.equal(plain.headers['content-length'], '10');
    assert.equal(plain.body.toString(), '0123456789');
  });

  test('upload shapes: multipart with path query, octet-stream, gzip, duplicates', async () => {
    const form = new FormData();
    form.append('file', new Blob(['multipart body']), 'ignored.txt');
    const r1 = await fetch(`${BASE_URL}/files?path=up/one.txt`, { method: 'POST', body: form });
    assert.equal(r1.status, 200);
    const j1 = (await r1.json()) as Json[];
    assert.deepEqual(j1, [{ name: 'one.txt', path: join(envd.home, 'up/one.txt'), type: 'file' }]);
    assert.equal(readFileSync(join(envd.home, 'up/one.txt'), 'utf8'), 'multipart body');

    const r2 = await fetch(`${BASE_URL}/files?path=up/raw.bin`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/octet-stream' },
      body: new Uint8Array([1, 2, 3]),
    });
    assert.equal(r2.status, 200);
    assert.deepEqual(readFileSync(join(envd.home, 'up/raw.bin')), Buffer.from([1, 2, 3]));

    const r3 = await fetch(`${BASE_URL}/files?path=up/gz.txt`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/octet-stream', 'Content-Encoding': 'gzip', 'X-Metadata-Kind': 'zipped' },
      body: new Uint8Array(gzipSync('inflated')),
    });
    assert.equal(r3.status, 200);
    assert.deepEqual(((await r3.json()) as Json[])[0]?.metadata, { kind: 'zipped' });
    assert.equal(readFileSync(join(envd.home, 'up/gz.txt'), 'utf8'), 'inflated');

    const badGz = await fetch(`${BASE_URL}/files?path=up/bad.txt`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/octet-stream', 'Content-Encoding': 'gzip' },
      body: 'not gzip',
    });
    assert.equal(badGz.status, 400);

    const dup = new FormData();
    dup.append('file', new Blob(['a']), 'up/same.txt');
    dup.append('file', new Blob(['b']), 'up/same.txt');
    const r4 = await fetch(`${BASE_URL}/files`, { method: 'POST', body: dup });
    assert.equal(r4.status, 400);
    assert.equal(((await r4.json()) as Json).code, 400);

    const noPath = await fetch(`${BASE_URL}/files`, { method: 'POST', headers: { 'Content-Type': 'application/octet-stream' }, body: 'x' });
    assert.equal(noPath.status, 400);

    const onDir = await fetch(`${BASE_URL}/files?path=up`, { method: 'POST', headers: { 'Content-Type': 'application/octet-stream' }, body: 'x' });
    assert.equal(onDir.status, 400);

    const asRoot = await fetch(`${BASE_URL}/files?path=~/mine.txt&username=root`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/octet-stream' },
      body: 'r',
    });
    assert.equal(((await asRoot.json()) as Json[])[0]?.path, join(envd.rootHome, 'mine.txt'));
  });

  test('failed uploads leave the connection usable (bodies are drained, not reset)', async () => {
    const opts = (body: BodyInit, headers: Record<string, string> = { 'Content-Type': 'application/octet-stream' }) => ({
      method: 'POST',
      headers,
      body,
      signal: AbortSignal.timeout(20_000),
    });
    for (let i = 0; i < 40; i++) {
      const dup = new FormData();
      dup.append('file', new Blob(['a']), 'up/same.txt');
      dup.append('file', new Blob(['b']), 'up/same.txt');
      assert.equal((await fetch(`${BASE_URL}/files`, { method: 'POST', body: dup, signal: AbortSignal.timeout(20_000) })).status, 400);
      assert.equal((await fetch(`${BASE_URL}/files`, opts('x'))).status, 400);
      assert.equal((await fetch(`${BASE_URL}/files?path=up`, opts(new Uint8Array(300_000)))).status, 400);
      assert.equal(
        (await fetch(`${BASE_URL}/files?path=up/bad.gz`, opts('not gzip', { 'Content-Type': 'application/octet-stream', 'Content-Encoding': 'gzip' }))).status,
        400,
      );
    }
  });

  test('/metrics shape', async () => {
    const r = await fetch(`${BASE_URL}/metrics`);
    assert.equal(r.status, 200);
    const m = (await r.json()) as Record<string, number>;
    for (const k of ['ts', 'cpu_count', 'cpu_used_pct', 'mem_used', 'mem_total', 'mem_used_mib', 'mem_total_mib', 'mem_cache', 'disk_used', 'disk_total']) {
      assert.equal(typeof m[k], 'number', k);
    }
    assert.ok((m.cpu_count as number) >= 1);
    assert.ok((m.mem_total as number) > 0);
    assert.ok((m.mem_used as number) <= (m.mem_total as number));
    assert.equal(m.mem_total_mib, Math.floor((m.mem_total as number) / 1048576));
    assert.ok((m.disk_total as number) > 0 && (m.disk_used as number) <= (m.disk_total as number));
    assert.ok((m.cpu_used_pct as number) >= 0 && (m.cpu_used_pct as number) <= 100);
  });

  test('/init: env vars, default user and workdir; /envs', async () => {
    assert.equal(
      await initEnvd(envd.socket, { envVars: { FROM_INIT: '1' }, defaultUser: 'root', defaultWorkdir: '/tmp', timestamp: new Date().toISOString() }),
      204,
    );
    const envs = (await (await fetch(`${BASE_URL}/envs`)).json()) as Json;
    assert.equal(envs.FROM_INIT, '1');
    const sbx = await sdk();
    const r = await sbx.commands.run('id -u; pwd; echo $FROM_INIT');
    assert.equal(r.stdout, '0\n/tmp\n1\n');
    // A stale init (older timestamp) is ignored.
    assert.equal(await initEnvd(envd.socket, { defaultUser: 'user', timestamp: '2000-01-01T00:00:00Z' }), 204);
    assert.equal((await sbx.commands.run('id -u')).stdout, '0\n');
    assert.equal(await initEnvd(envd.socket, { defaultUser: 'user', timestamp: new Date(Date.now() + 1000).toISOString() }), 204);
    assert.equal((await sbx.commands.run('id -u')).stdout, `${envd.uid}\n`);
  });

  test('access token rules and URL signatures', async () => {
    const token = '0tQG31xiMp0IOQfaz9dcwi72L1CPo8e0';
    assert.equal(fileSignature('hello.txt', 'read', 'user', token), 'v1_gUtH/s9YCJWgCizjfUxuWfhFE4QSydOWEIIvfLwDr6E');
    assert.equal(await initEnvd(envd.socket, { accessToken: token }), 204);
    const withToken = { 'X-Access-Token': token };

    assert.equal((await fetch(`${BASE_URL}/health`)).status, 204);
    const noTok = await fetch(`${BASE_URL}/envs`);
    assert.equal(noTok.status, 401);
    assert.equal(((await noTok.json()) as Json).code, 401);
    assert.equal((await fetch(`${BASE_URL}/envs`, { headers: { 'X-Access-Token': 'wrong' } })).status, 401);
    assert.equal((await fetch(`${BASE_URL}/envs`, { headers: withToken })).status, 200);
    assert.equal((await fetch(`${BASE_URL}/metrics`)).status, 401);

    // Connect: unauthenticated without the token, for unary and streams.
    const u = await unaryRequest('/process.Process/List', {});
    assert.equal(u.status, 401);
    assert.equal(((await u.json()) as Json).code, 'unauthenticated');
    assert.equal((await unaryRequest('/process.Process/List', {}, withToken)).status, 200);
    const s = await streamRequest('/process.Process/Start', { process: { cmd: '/bin/true' } });
    const envs = [];
    for await (const e of readEnvelopes(s.body as ReadableStream<Uint8Array>)) envs.push(e);
    assert.equal((envs[envs.length - 1]?.json as { error: Json }).error.code, 'unauthenticated');

    // /files: the token, or a valid signature.
    assert.equal((await fetch(`${BASE_URL}/files?path=data.txt`)).status, 401);
    assert.equal((await fetch(`${BASE_URL}/files?path=data.txt`, { headers: withToken })).status, 200);
    const sig = fileSignature('data.txt', 'read', undefined, token);
    const ok = await fetch(`${BASE_URL}/files?path=data.txt&signature=${encodeURIComponent(sig)}`);
    assert.equal(ok.status, 200);
    assert.equal(await ok.text(), '0123456789');
    // A valid signature with a wrong token present is refused.
    assert.equal((await fetch(`${BASE_URL}/files?path=data.txt&signature=${encodeURIComponent(sig)}`, { headers: { 'X-Access-Token': 'wrong' } })).status, 401);
    // The signature is bound to the operation and the user.
    assert.equal((await fetch(`${BASE_URL}/files?path=data.txt&signature=${encodeURIComponent(sig)}`, { method: 'POST', body: 'x' })).status, 401);
    const userSig = fileSignature('data.txt', 'read', 'user', token);
    assert.equal((await fetch(`${BASE_URL}/files?path=data.txt&username=user&signature=${encodeURIComponent(userSig)}`)).status, 200);
    assert.equal((await fetch(`${BASE_URL}/files?path=data.txt&username=root&signature=${encodeURIComponent(userSig)}`)).status, 401);
    // Expiration.
    const future = Math.floor(Date.now() / 1000) + 60;
    const fsig = fileSignature('data.txt', 'read', undefined, token, future);
    assert.equal((await fetch(`${BASE_URL}/files?path=data.txt&signature=${encodeURIComponent(fsig)}&signature_expiration=${future}`)).status, 200);
    const past = Math.floor(Date.now() / 1000) - 60;
    const psig = fileSignature('data.txt', 'read', undefined, token, past);
    const expired = await fetch(`${BASE_URL}/files?path=data.txt&signature=${encodeURIComponent(psig)}&signature_expiration=${past}`);
    assert.equal(expired.status, 401);
    assert.deepEqual(await expired.json(), { code: 401, message: 'signature is already expired' });
    // Upload signature.
    const wsig = fileSignature('signed-up.txt', 'write', undefined, token);
    const up = await fetch(`${BASE_URL}/files?path=signed-up.txt&signature=${encodeURIComponent(wsig)}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/octet-stream' },
      body: 'w',
    });
    assert.equal(up.status, 200);
    // /init over envd's own TCP listener: test/security/envd-users.test.ts.
  });
});
