// Secrets through the published SDK (`Secret`) against a real `cubebox serve`: create, read by
// id and by name, list in pages, update, destroy; clear 400s; team isolation (another team's
// secret is 404 on every route); the per-team quota; and the value never leaving the service:
// not in any response, not in its log, not in clear in the store's files.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { cli, CLI, destroyInstance } from '../helpers/instance.js';
import { sdkService, startService, type E2B, type Service } from '../helpers/service.js';

let e2b: E2B;
let svc: Service;
let dataDir: string;
let keyA: string;
let keyB: string;
let log = '';
const values: string[] = []; // every value sent: none may ever come back
const value = () => {
  const v = `s3cr3t-${randomBytes(12).toString('hex')}`;
  values.push(v);
  return v;
};
const bodies: string[] = []; // every raw response body read here

async function api(key: string, path: string, init: { method?: string; body?: string } = {}): Promise<{ status: number; json: () => unknown; text: string }> {
  const r = await fetch(`${svc.url}${path}`, {
    method: init.method ?? 'GET',
    headers: { 'X-API-KEY': key, ...(init.body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: init.body,
  });
  const text = await r.text();
  bodies.push(text);
  return { status: r.status, text, json: () => JSON.parse(text) as unknown };
}

/** The SDK's error for a failed call (its message carries the status and the service's message). */
async function failure(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (err) {
    return err as Error;
  }
  assert.fail('expected the call to fail');
}

describe('secrets', { timeout: 600_000 }, () => {
  before(async () => {
    ({ svc, dataDir, key: keyA, e2b } = await sdkService({ CUBEBOX_POOL: '' }));
    svc.child.stdout!.on('data', (d: Buffer) => (log += d.toString()));
    const r = await cli(dataDir, ['keys', 'create', '--name', 'b', '--team', 'other']);
    assert.equal(r.code, 0, r.stderr);
    keyB = r.stdout.trim().split('\n').pop()!.trim();
  });
  after(async () => {
    await svc.stop();
    await destroyInstance(undefined, dataDir);
  });

  it('creates, reads by id and by name, updates and destroys through the SDK', async () => {
    const { Secret, SecretNotFoundError } = e2b;
    const info = await Secret.create('OpenAI-Key', value(), { metadata: { owner: 'ada' } });
    assert.match(info.secretId, /^sec_[0-9a-f]{24}$/);
    assert.equal(info.name, 'openai-key', 'names are lower-cased');
    assert.equal(info.version, 1);
    assert.deepEqual(info.metadata, { owner: 'ada' });
    assert.ok(Math.abs(info.createdAt.getTime() - Date.now()) < 60_000 && info.updatedAt.getTime() === info.createdAt.getTime());
    assert.deepEqual(await Secret.getInfo(info.secretId), info);
    assert.deepEqual(await Secret.getInfo('OPENAI-KEY'), info, 'by name, any case');
    assert.equal(await Secret.exists('openai-key'), true);
    assert.equal(await Secret.exists('nope'), false);

    const dup = await failure(Secret.create('openai-key', value()));
    assert.match(dup.message, /^409: secret 'openai-key' already exists/);

    const updated = await Secret.update('openai-key', value(), { metadata: { owner: 'grace' } });
    assert.equal(updated.version, 2);
    assert.deepEqual(updated.metadata, { owner: 'grace' }, 'given metadata replaces the old');
    assert.ok(updated.updatedAt >= info.updatedAt && updated.createdAt.getTime() === info.createdAt.getTime());
    const kept = await Secret.update(info.secretId, value());
    assert.equal(kept.version, 3);
    assert.deepEqual(kept.metadata, { owner: 'grace' }, 'metadata left out is kept');
    const patched = await api(keyA, `/secrets/${info.secretId}`, { method: 'PATCH', body: JSON.stringify({ value: value() }) });
    assert.equal(patched.status, 200);
    assert.equal((patched.json() as { currentVersion: number }).currentVersion, 4);
    const raw = (await api(keyA, `/secrets/${info.secretId}`)).json();
    assert.deepEqual(Object.keys(raw as object).sort(), ['createdAt', 'currentVersion', 'metadata', 'name', 'secretID', 'updatedAt']);

    assert.equal(await Secret.destroy('openai-key'), true);
    assert.equal(await Secret.destroy('openai-key'), false);
    await assert.rejects(Secret.getInfo(info.secretId), SecretNotFoundError);
    await assert.rejects(Secret.update(info.secretId, value()), SecretNotFoundError);
  });

  it('lists in pages', async () => {
    const { Secret } = e2b;
    for (const n of ['p-c', 'p-a', 'p-b']) await Secret.create(n, value());
    const pager = Secret.list({ limit: 2 });
    const first = await pager.nextItems();
    assert.deepEqual(
      first.map((s) => s.name),
      ['p-a', 'p-b'],
    );
    assert.equal(pager.hasNext, true);
    const second = await pager.nextItems();
    assert.deepEqual(
      second.map((s) => s.name),
      ['p-c'],
    );
    assert.equal(pager.hasNext, false);
    assert.equal((await api(keyA, '/secrets?limit=0')).status, 400);
    assert.equal((await api(keyA, '/secrets?nextToken=%2F%2F')).status, 400);
    for (const n of ['p-a', 'p-b', 'p-c']) assert.equal(await Secret.destroy(n), true);
  });

  it('refuses bad names, values and metadata with clear 400s', async () => {
    const { Secret } = e2b;
    const bad = async (name: string, v: string, metadata?: Record<string, string>) => (await failure(Secret.create(name, v, { metadata }))).message;
    assert.match(await bad('', value()), /^400: secret name must be 1-128 letters/);
    assert.match(await bad('a{b}', value()), /^400: secret name must be/);
    assert.match(await bad('sec_abc', value()), /reserved for secret ids/);
    assert.match(await bad('x'.repeat(129), value()), /^400: secret name must be 1-128/);
    assert.match(await bad('ok', ''), /^400: value must not be empty/);
    assert.match(await bad('ok', 'v'.repeat(64 * 1024 + 1)), /^400: value must be at most 65536 bytes/);
    const many = Object.fromEntries(Array.from({ length: 33 }, (_, i) => [`k${i}`, 'v']));
    assert.match(await bad('ok', value(), many), /^400: metadata must have at most 32 entries/);
    assert.match(await bad('ok', value(), { ['k'.repeat(129)]: 'v' }), /^400: metadata keys must be 1-128 bytes/);
    assert.match(await bad('ok', value(), { k: 'v'.repeat(1025) }), /^400: metadata values must be at most 1024 bytes/);
    const raw = async (body: string) => {
      const r = await api(keyA, '/secrets', { method: 'POST', body });
      return [r.status, (r.json() as { message: string }).message];
    };
    assert.deepEqual(await raw('{"name":"ok"}'), [400, 'value is required']);
    assert.deepEqual(await raw(`{"name":"ok","value":5}`), [400, 'value must be a string']);
    assert.deepEqual(await raw(`{"name":"ok","value":"${value()}","metadata":{"a":1}}`), [400, 'metadata must be an object of strings']);
    assert.deepEqual(await raw('[1]'), [400, 'request body must be a JSON object']);
    assert.equal(await Secret.exists('ok'), false, 'nothing was stored');
  });

  it("keeps each team's secrets to itself", async () => {
    const { Secret, SecretNotFoundError } = e2b;
    const a = await Secret.create('shared-name', value());
    const asB = { apiKey: keyB };
    await assert.rejects(Secret.getInfo(a.secretId, asB), SecretNotFoundError);
    await assert.rejects(Secret.getInfo('shared-name', asB), SecretNotFoundError);
    assert.equal(await Secret.exists(a.secretId, asB), false);
    await assert.rejects(Secret.update(a.secretId, value(), asB), SecretNotFoundError);
    assert.equal(await Secret.destroy(a.secretId, asB), false);
    assert.equal((await api(keyB, `/secrets/${a.secretId}`, { method: 'PATCH', body: JSON.stringify({ value: 'x' }) })).status, 404);
    assert.deepEqual(await Secret.list(asB).nextItems(), []);

    const b = await Secret.create('shared-name', value(), asB); // names are per team
    assert.notEqual(b.secretId, a.secretId);
    assert.equal((await Secret.getInfo('shared-name')).secretId, a.secretId);
    assert.equal((await Secret.getInfo('shared-name', asB)).secretId, b.secretId);
    assert.equal((await Secret.getInfo(a.secretId)).version, 1, "B's calls changed nothing of A's");
    assert.equal(await Secret.destroy('shared-name', asB), true);
    assert.equal(await Secret.exists('shared-name'), true);
    assert.equal(await Secret.destroy('shared-name'), true);
    assert.equal((await api('e2b_' + '0'.repeat(40), '/secrets')).status, 401);
  });

  it('counts against a per-team quota', async () => {
    const { Secret, RateLimitError } = e2b;
    const r = await cli(dataDir, ['teams', 'set-quota', 'other', '--secrets', '2']);
    assert.equal(r.code, 0, r.stderr);
    const asB = { apiKey: keyB };
    await Secret.create('q1', value(), asB);
    await Secret.create('q2', value(), asB);
    const err = await failure(Secret.create('q3', value(), asB));
    assert.ok(err instanceof RateLimitError, String(err));
    assert.match(err.message, /quota exceeded: secrets of team 'other' would be 3, its limit \(secrets\) is 2/);
    await Secret.create('q3', value()); // another team's quota is its own
    for (const n of ['q1', 'q2']) assert.equal(await Secret.destroy(n, asB), true);
    assert.equal(await Secret.destroy('q3'), true);
  });

  it('never lets a value out: responses, log, store files; the key file is 0600', async () => {
    const { Secret } = e2b;
    const v = value();
    const s = await Secret.create('kept', v, { metadata: { note: 'stays' } });
    bodies.push((await api(keyA, '/secrets')).text, (await api(keyA, `/secrets/${s.secretId}`)).text);
    const key = statSync(join(dataDir, 'secrets.key'));
    assert.equal(key.mode & 0o777, 0o600);
    assert.equal(key.size, 32);
    // the row exists (the store holds it sealed), yet no store file has the value in clear
    const files = readdirSync(dataDir).filter((f) => f.startsWith('cubebox.db'));
    assert.ok(files.includes('cubebox.db'), files.join(' '));
    const store = Buffer.concat(files.map((f) => readFileSync(join(dataDir, f))));
    assert.ok(store.includes(Buffer.from(s.secretId)), 'the secret is in the store');
    for (const x of values) {
      assert.ok(!store.includes(Buffer.from(x)), 'a value is in a store file in clear');
      assert.ok(!log.includes(x), "a value is in the service's log");
      assert.ok(!bodies.some((b) => b.includes(x)), 'a value came back in a response');
    }
    assert.ok(values.length >= 15 && bodies.length >= 10);
    assert.equal(await Secret.destroy('kept'), true);
  });

  it('serves the OpenAPI document with the secret routes, without a key', async () => {
    const r = await fetch(`${svc.url}/openapi.json`);
    assert.equal(r.status, 200);
    const doc = (await r.json()) as { paths: Record<string, Record<string, unknown>> };
    assert.deepEqual(Object.keys(doc.paths['/secrets/{id}'] ?? {}).sort(), ['delete', 'get', 'patch', 'post']);
    assert.deepEqual(Object.keys(doc.paths['/secrets'] ?? {}).sort(), ['get', 'post']);
  });

  it('keeps secrets across restarts with the same key, and refuses to start with an unsound key file', async () => {
    const { Secret } = e2b;
    const s = await Secret.create('durable', value());
    const keyFile = join(dataDir, 'secrets.key');
    const before = readFileSync(keyFile);
    await svc.stop();
    chmodSync(keyFile, 0o644);
    const refused = await serveOnce();
    assert.notEqual(refused.code, 0, 'serve started with a readable key file');
    assert.match(refused.stderr, /secret key file .*secrets\.key has mode 0644: it must be 0600/);
    chmodSync(keyFile, 0o600);
    svc = await startService(dataDir, { env: { CUBEBOX_POOL: '' } });
    process.env.E2B_API_URL = svc.url;
    process.env.E2B_SANDBOX_URL = svc.url;
    assert.deepEqual(readFileSync(keyFile), before, 'the key is kept, not replaced');
    assert.deepEqual(await Secret.getInfo('durable'), s);
    assert.equal(await Secret.destroy('durable'), true);
  });
});

/** Runs `cubebox serve` expecting it to refuse to start: its exit code and stderr (killed after 60 s if it does start). */
function serveOnce(): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, '--data-dir', dataDir, 'serve', '--host', '127.0.0.1', '--port', '0'], {
      env: { ...process.env, CUBEBOX_POOL: '' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGTERM'), 60_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stderr });
    });
  });
}
