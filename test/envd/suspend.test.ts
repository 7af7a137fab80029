// envd letting go of its socket before a checkpoint (a runtime cannot save a socket bound on the
// host) and listening again on SIGCONT after the restore; only the host, with the boot's secret,
// may ask.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { INIT_SECRET_FILE_ENV, INIT_SECRET_HEADER, SUSPEND_SOCKET_PATH } from '../../src/envd/host-contract.js';
import { eventually, isAlive, socketGet, startTestEnvd, type TestEnvd } from './helpers.js';

const SECRET = 'host-secret-0123456789abcdef';

function suspend(socketPath: string, headers: Record<string, string>): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path: SUSPEND_SOCKET_PATH, method: 'POST', headers }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('envd suspends its socket for a checkpoint', () => {
  let envd: TestEnvd;
  let secretDir: string;
  before(async () => {
    secretDir = mkdtempSync(join(tmpdir(), 'envd-secret-'));
    writeFileSync(join(secretDir, 'secret'), SECRET, { mode: 0o600 });
    envd = await startTestEnvd([], undefined, ['envd.cjs'], { [INIT_SECRET_FILE_ENV]: join(secretDir, 'secret') });
  });
  after(async () => {
    await envd?.stop();
    rmSync(secretDir, { recursive: true, force: true });
  });

  test('without the boot secret, or with a wrong one, the request is refused and the socket keeps serving', async () => {
    assert.equal(await suspend(envd.socket, {}), 401);
    assert.equal(await suspend(envd.socket, { [INIT_SECRET_HEADER]: 'not-the-secret-0123456789' }), 401);
    assert.equal(await socketGet(envd.socket, '/health'), 204);
  });

  test('with it the socket closes (envd stays up) and SIGCONT opens it again; a second SIGCONT changes nothing', async () => {
    assert.equal(await suspend(envd.socket, { [INIT_SECRET_HEADER]: SECRET }), 204);
    assert.equal(await socketGet(envd.socket, '/health'), 0, 'nothing listens');
    await new Promise((r) => setTimeout(r, 300));
    assert.ok(isAlive(envd.pid), 'envd does not exit with no listener left');
    process.kill(envd.pid, 'SIGCONT');
    assert.ok(await eventually(async () => (await socketGet(envd.socket, '/health')) === 204));
    process.kill(envd.pid, 'SIGCONT');
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(await socketGet(envd.socket, '/health'), 204);
    assert.doesNotMatch(envd.stderr(), /cannot listen/);
  });

  test('restored as a new sandbox, it takes the new /init secret the host left before SIGCONT; a SIGCONT without suspension takes none', async () => {
    const next = 'next-secret-0123456789abcdef';
    const init = (secret: string) => initWith(envd.socket, secret);
    writeFileSync(join(secretDir, 'secret'), 'unasked-secret-0123456789ab', { mode: 0o600 });
    process.kill(envd.pid, 'SIGCONT'); // not suspended: the file is not read
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(await init(SECRET), 204);
    assert.equal(await suspend(envd.socket, { [INIT_SECRET_HEADER]: SECRET }), 204);
    writeFileSync(join(secretDir, 'secret'), next, { mode: 0o600 });
    process.kill(envd.pid, 'SIGCONT');
    assert.ok(await eventually(async () => (await socketGet(envd.socket, '/health')) === 204));
    assert.equal(await init(SECRET), 401, 'the old secret is refused');
    assert.equal(await init(next), 204);
    assert.equal(existsSync(join(secretDir, 'secret')), false, 'the file is taken');
  });
});

function initWith(socketPath: string, secret: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path: '/init', method: 'POST', headers: { [INIT_SECRET_HEADER]: secret, 'content-type': 'application/json' } }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', reject);
    req.end('{}');
  });
}
