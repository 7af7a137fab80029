// The control socket (api/control-socket.ts) and its client (api/control-client.ts), on a real
// unix socket, in front of a fake manager API: routes, schemas, error kinds, exec streaming.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { RemoteApi } from '../../src/api/control-client.js';
import { ControlServer, routes } from '../../src/api/control-socket.js';
import type { LocalApi } from '../../src/api/manager-api.js';
import { CubeboxError } from '../../src/util/errors.js';

const calls: unknown[][] = [];
const fake = {
  list: async () => [{ id: 'a1' }],
  get: async (id: string) => {
    if (id !== 'a1') throw new CubeboxError('not_found', `sandbox '${id}' not found`);
    return { id };
  },
  create: async (req: unknown) => (calls.push(['create', req]), { id: 'new' }),
  delete: async (id: string) => void calls.push(['delete', id]),
  pause: async (id: string, opts: unknown) => (calls.push(['pause', id, opts]), { id, state: 'paused' }),
  resume: async (id: string) => {
    throw new CubeboxError('conflict', `sandbox '${id}' is running`);
  },
  listTemplates: async () => [],
  addTemplate: async (name: string, source: unknown, config: unknown) => (calls.push(['addTemplate', name, source, config]), { id: 't', name }),
  removeTemplate: async (name: string) => void calls.push(['removeTemplate', name]),
  tagTemplate: async (ref: string, what: unknown) => (calls.push(['tag', ref, what]), { id: 't', name: ref }),
  buildRecipe: async (name: string, recipe: unknown, ctx: unknown) => (calls.push(['build', name, recipe, ctx]), { template: { id: 't' }, steps: [] }),
  reconcile: async () => ({ adopted: [] }),
  manager: {
    // a local process stands in for the runtime's exec
    exec: async (id: string, args: string[], opts: { stdio: ['pipe', 'pipe', 'pipe']; env?: Record<string, string> }) => {
      if (id !== 'a1') throw new CubeboxError('not_found', `sandbox '${id}' not found`);
      return spawn(args[0]!, args.slice(1), { stdio: opts.stdio, env: { ...process.env, ...opts.env } });
    },
  },
} as unknown as LocalApi;

let dir: string;
let server: ControlServer;
let client: RemoteApi;
before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'cubebox-control-'));
  server = new ControlServer(fake, join(dir, 'manager.sock'));
  await server.listen();
  client = new RemoteApi(join(dir, 'manager.sock'));
});
after(async () => {
  await server.close(true);
  rmSync(dir, { recursive: true, force: true });
});

function collect(): { stream: PassThrough; text: () => string } {
  const stream = new PassThrough();
  const chunks: Buffer[] = [];
  stream.on('data', (c: Buffer) => chunks.push(c));
  return { stream, text: () => Buffer.concat(chunks).toString('utf8') };
}

describe('control socket', () => {
  it('is 0600 at its path, with no staging directory left, and answers reachable()', async () => {
    assert.equal((statSync(join(dir, 'manager.sock')).mode & 0o777).toString(8), '600');
    assert.deepEqual(readdirSync(dir), ['manager.sock']);
    assert.equal(await RemoteApi.reachable(join(dir, 'manager.sock')), true);
    assert.equal(await RemoteApi.reachable(join(dir, 'none.sock')), false);
  });

  it('routes each operation to the manager API with its arguments', async () => {
    calls.length = 0;
    assert.deepEqual(await client.list(), [{ id: 'a1' }]);
    assert.deepEqual(await client.get('a1'), { id: 'a1' });
    assert.deepEqual(await client.create({ template: 'base', env: { A: '1' } }), { id: 'new' });
    await client.delete('a1');
    await client.pause('a1');
    await client.pause('a1', { memory: false });
    await client.addTemplate('t1', { dir: '/x' }, { user: 'u' });
    await client.tagTemplate('t1', { alias: 'al' });
    await client.buildRecipe('t2', { from: 'base', steps: [{ run: 'true' }] }, '/ctx');
    await client.removeTemplate('t1');
    assert.deepEqual(calls, [
      ['create', { template: 'base', env: { A: '1' } }],
      ['delete', 'a1'],
      ['pause', 'a1', { memory: true }],
      ['pause', 'a1', { memory: false }],
      ['addTemplate', 't1', { dir: '/x', busybox: undefined, base: undefined, codeInterpreter: undefined, image: undefined, ref: undefined }, { user: 'u' }],
      ['tag', 't1', { alias: 'al' }],
      ['build', 't2', { from: 'base', steps: [{ run: 'true' }] }, '/ctx'],
      ['removeTemplate', 't1'],
    ]);
  });

  it('carries error kinds through; schemas refuse bad bodies as invalid_argument', async () => {
    await assert.rejects(client.get('zz'), (e: unknown) => e instanceof CubeboxError && e.kind === 'not_found' && /'zz' not found/.test(e.message));
    await assert.rejects(client.resume('a1'), (e: unknown) => e instanceof CubeboxError && e.kind === 'conflict');
    await assert.rejects(client.create({} as never), (e: unknown) => e instanceof CubeboxError && e.kind === 'invalid_argument' && /template/.test(e.message));
    const app = routes(fake);
    const bad = await app.inject({ method: 'POST', url: '/sandboxes', headers: { 'content-type': 'application/json' }, payload: '{bad' });
    assert.equal(bad.statusCode, 400);
    assert.deepEqual(bad.json(), { kind: 'invalid_argument', message: 'request body is not valid JSON' });
    const none = await app.inject({ method: 'GET', url: '/nowhere' });
    assert.deepEqual([none.statusCode, none.json()], [404, { kind: 'not_found', message: 'no route GET /nowhere' }]);
    await app.close();
  });

  it('exec streams stdin in, stdout and stderr out, and the exit code back', async () => {
    const out = collect();
    const err = collect();
    const code = await client.exec('a1', ['sh', '-c', 'wc -l; echo oops >&2; exit 3'], out.stream, err.stream, { stdin: Readable.from(['a\n', 'b\n', 'c\n']) });
    assert.equal(code, 3);
    assert.equal(out.text().trim(), '3');
    assert.equal(err.text(), 'oops\n');
    const env = collect();
    assert.equal(await client.exec('a1', ['sh', '-c', 'echo $GREETING'], env.stream, collect().stream, { env: { GREETING: 'hi' } }), 0);
    assert.equal(env.text(), 'hi\n');
    await assert.rejects(client.exec('zz', ['true'], collect().stream, collect().stream), (e: unknown) => e instanceof CubeboxError && e.kind === 'not_found');
  });
});
