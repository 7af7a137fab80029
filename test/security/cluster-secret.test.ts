// A cluster node (`serve --role node`) answers its API replicas only: every request on its
// listener without the cluster secret, or with a wrong one, is refused before anything reads it
// (control plane, health, dashboard, data plane by header, by host and signed URL, WebSocket),
// and a node does not start without a secret, or with a short one.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { CLUSTER_SECRET_HEADER } from '../../src/cluster/secret.js';
import { cli, destroyInstance, newDataDir } from '../helpers/instance.js';
import { startPostgres, type TestPostgres } from '../helpers/postgres.js';
import { startService, type Service } from '../helpers/service.js';

describe('a cluster node refuses whatever lacks the cluster secret', { timeout: 600_000 }, () => {
  let db: TestPostgres | undefined;
  let node: Service | undefined;
  let dataDir: string;
  let key: string;
  const secret = randomBytes(32).toString('hex');
  const dir = mkdtempSync(join(tmpdir(), 'cubebox-cluster-secret-'));
  const secretFile = join(dir, 'secret');
  writeFileSync(secretFile, secret, { mode: 0o600 });

  before(async () => {
    db = await startPostgres();
    dataDir = newDataDir();
    node = await startService(dataDir, { env: { CUBEBOX_POOL: '' }, args: ['--role', 'node', '--database', db.url, '--cluster-secret-file', secretFile] });
    const r = await cli(dataDir, ['keys', 'create', '--name', 'k'], { CUBEBOX_DATABASE: db.url });
    assert.equal(r.code, 0, r.stderr);
    key = r.stdout.trim().split('\n').pop()!.trim();
  });

  after(async () => {
    await node?.stop();
    await destroyInstance(undefined, dataDir);
    await db?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('refuses the control plane, the dashboard and the data plane without the secret or with a wrong one', async () => {
    const wrong = `${secret.slice(0, -1)}${secret.endsWith('0') ? '1' : '0'}`;
    const tries: Array<Record<string, string>> = [
      { 'X-API-KEY': key },
      { 'X-API-KEY': key, [CLUSTER_SECRET_HEADER]: wrong },
      { 'X-API-KEY': key, [CLUSTER_SECRET_HEADER]: secret.slice(0, 32) },
      { 'X-API-KEY': key, [CLUSTER_SECRET_HEADER]: '' },
      { 'X-API-KEY': key, Authorization: `Bearer ${secret}` },
      { 'E2b-Sandbox-Id': 'abc', 'E2b-Sandbox-Port': '49983' },
      { Host: '49983-abc.localhost' },
    ];
    for (const headers of tries) {
      for (const path of [
        '/sandboxes',
        '/health',
        '/metrics',
        '/dashboard/',
        '/files?path=/etc/passwd&signature=v1_x',
        `/?${CLUSTER_SECRET_HEADER}=${secret}`,
      ]) {
        const r = await fetch(`${node!.url}${path}`, { headers });
        assert.equal(r.status, 401, `${path} with ${JSON.stringify(Object.keys(headers))}`);
        assert.match(await r.text(), /cluster secret missing or wrong/);
      }
    }
    const upgrade = await new Promise<string>((resolve, reject) => {
      const s = connect(node!.port, '127.0.0.1', () =>
        s.write(
          `GET / HTTP/1.1\r\nHost: 49983-abc.localhost\r\n${CLUSTER_SECRET_HEADER}: ${wrong}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`,
        ),
      );
      let buf = '';
      s.on('data', (d: Buffer) => (buf += d.toString()));
      s.on('close', () => resolve(buf));
      s.on('error', reject);
    });
    assert.match(upgrade, /^HTTP\/1.1 401/);
    // with the secret, the node answers as a node alone does
    const ok = await fetch(`${node!.url}/sandboxes`, { headers: { 'X-API-KEY': key, [CLUSTER_SECRET_HEADER]: secret } });
    assert.equal(ok.status, 200);
    const noKey = await fetch(`${node!.url}/sandboxes`, { headers: { [CLUSTER_SECRET_HEADER]: secret } });
    assert.equal(noKey.status, 401, 'the secret is not an API key: the caller still needs one');
  });

  it('does not start a node without a secret, or with one too short', async () => {
    const other = newDataDir();
    try {
      const none = await cli(other, ['serve', '--role', 'node', '--port', '0', '--database', db!.url]);
      assert.notEqual(none.code, 0);
      assert.match(none.stderr, /--role node needs the cluster secret/);
      const short = join(dir, 'short');
      writeFileSync(short, 'tiny');
      const weak = await cli(other, ['serve', '--role', 'node', '--port', '0', '--database', db!.url, '--cluster-secret-file', short]);
      assert.notEqual(weak.code, 0);
      assert.match(weak.stderr, /too short/);
    } finally {
      rmSync(other, { recursive: true, force: true });
    }
  });
});
