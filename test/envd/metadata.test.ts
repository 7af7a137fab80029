// File metadata as user.e2b.* extended attributes through the built helper (dist/envd/envd-exec
// --xattr): exact replacement, never following a symlink at the path, bounded answers, and a
// malformed request ending the helper (the client starts a new one). No envd port needed.
import assert from 'node:assert/strict';
import { spawnSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { XattrClient } from '../../src/envd/fs/metadata.js';
import { LocalFs } from '../../src/envd/fs/ops.js';
import { bundleDir } from './helpers.js';

const HELPER = join(bundleDir, 'envd-exec');
let dir: string;
let client: XattrClient;

/** Sets or reads attributes with python (the host's own xattr calls, independent of the helper). */
function py(code: string): string {
  const r = spawnSync('python3', ['-c', `import os\n${code}`], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout;
}

describe('file metadata through envd-exec --xattr', () => {
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'envd-xattr-'));
    client = new XattrClient(HELPER);
  });
  after(() => {
    client.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('sets exactly the given metadata and reads back user.e2b.* only', async () => {
    const f = join(dir, 'a.txt');
    writeFileSync(f, 'a');
    assert.equal(await client.get(f), undefined);
    await client.set(f, { author: 'alice', 'build-id': '42' });
    assert.deepEqual(await client.get(f), { author: 'alice', 'build-id': '42' });
    assert.equal(py(`print(os.getxattr(${JSON.stringify(f)}, 'user.e2b.author').decode())`), 'alice\n');
    py(`os.setxattr(${JSON.stringify(f)}, 'user.e2b.Reviewer', b'bob'); os.setxattr(${JSON.stringify(f)}, 'user.other', b'x')`);
    assert.deepEqual(await client.get(f), { author: 'alice', 'build-id': '42', Reviewer: 'bob' });
    await client.set(f, { only: 'this' });
    assert.deepEqual(await client.get(f), { only: 'this' });
    assert.equal(py(`print(sorted(os.listxattr(${JSON.stringify(f)})))`), "['user.e2b.only', 'user.other']\n");
    await client.set(f, {});
    assert.equal(await client.get(f), undefined);
  });

  it('never follows a symlink at the path', async () => {
    const target = join(dir, 'target.txt');
    const link = join(dir, 'link.txt');
    writeFileSync(target, 't');
    symlinkSync(target, link);
    await client.set(target, { k: 'v' });
    assert.equal(await client.get(link), undefined, "the link's own attributes (none), not its target's");
    await assert.rejects(client.set(link, { k: 'w' }), (e: NodeJS.ErrnoException) => e.code === 'EPERM');
    assert.deepEqual(await client.get(target), { k: 'v' }, 'the target is untouched');
    // LocalFs: a write through the link tags the file that was written, resolved first
    const fs = new LocalFs(HELPER);
    await fs.setMetadata(link, { via: 'link' });
    await fs.closeAll();
    assert.deepEqual(await client.get(target), { via: 'link' });
    await assert.rejects(client.get('relative/path'), (e: NodeJS.ErrnoException) => e.code === 'EINVAL');
    await assert.rejects(client.get(join(dir, 'missing')), (e: NodeJS.ErrnoException) => e.code === 'ENOENT');
  });

  it('answers are bounded: 64 attributes at most, values over 4 KiB left out', async () => {
    // on tmpfs: ext4 keeps about one block of attributes, tmpfs up to 64 KiB values
    const shm = mkdtempSync('/dev/shm/envd-xattr-');
    try {
      const f = join(shm, 'many.txt');
      writeFileSync(f, 'm');
      py(`os.setxattr(${JSON.stringify(f)}, 'user.e2b.big', b'x' * 5000); os.setxattr(${JSON.stringify(f)}, 'user.e2b.small', b'ok')`);
      assert.deepEqual(await client.get(f), { small: 'ok' });
      py(`[os.setxattr(${JSON.stringify(f)}, 'user.e2b.k%d' % i, b'v') for i in range(80)]`);
      assert.equal(Object.keys((await client.get(f)) ?? {}).length, 64);
      const tooMany = Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`k${i}`, 'v']));
      await assert.rejects(client.set(f, tooMany), (e: NodeJS.ErrnoException) => e.code === 'E2BIG');
    } finally {
      rmSync(shm, { recursive: true, force: true });
    }
  });

  it('a malformed request ends the helper; the client starts a new one', async () => {
    const bad = spawn(HELPER, ['--xattr'], { stdio: ['pipe', 'pipe', 'ignore'] });
    const code = new Promise<number | null>((resolve) => bad.on('exit', resolve));
    bad.stdin.end(Buffer.from([0x47, 0xff, 0xff, 0xff, 0xff])); // 'G' claiming a 4 GiB path
    assert.equal(await code, 1);
    const f = join(dir, 'again.txt');
    writeFileSync(f, 'x');
    client.close();
    await client.set(f, { after: 'restart' });
    assert.deepEqual(await client.get(f), { after: 'restart' });
  });
});
