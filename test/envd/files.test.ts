// files.* of the real e2b SDK (debug mode) against a standalone envd.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { FileType, InvalidArgumentError, NotFoundError, type Sandbox } from 'e2b';
import { initEnvd, sdk, startTestEnvd, type TestEnvd } from './helpers.js';

function streamOf(parts: Uint8Array[]): ReadableStream<Uint8Array> {
  let i = 0;
  return new ReadableStream({
    pull(c) {
      if (i < parts.length) c.enqueue(parts[i++] as Uint8Array);
      else c.close();
    },
  });
}

describe('envd files through the SDK', () => {
  let envd: TestEnvd;
  let sbx: Sandbox;

  before(async () => {
    envd = await startTestEnvd();
    sbx = await sdk();
  });
  after(async () => {
    await envd?.stop();
  });

  test('write and read text; relative paths are in the home; owner is the user', async () => {
    const info = await sbx.files.write('notes/hello.txt', 'hello world\n');
    assert.equal(info.name, 'hello.txt');
    assert.equal(info.path, join(envd.home, 'notes/hello.txt'));
    assert.equal(info.type, FileType.FILE);
    assert.equal(await sbx.files.read('notes/hello.txt'), 'hello world\n');
    assert.equal(await sbx.files.read(join(envd.home, 'notes/hello.txt')), 'hello world\n');
    assert.equal(await sbx.files.read('~/notes/hello.txt'), 'hello world\n');
    const st = statSync(join(envd.home, 'notes/hello.txt'));
    assert.equal(st.uid, envd.uid);
    assert.equal(st.gid, envd.gid);
    assert.equal(st.mode & 0o777, 0o644);
    const dir = statSync(join(envd.home, 'notes'));
    assert.equal(dir.uid, envd.uid);
    assert.equal(dir.mode & 0o777, 0o755);
    // Overwrite.
    await sbx.files.write('notes/hello.txt', 'short');
    assert.equal(await sbx.files.read('notes/hello.txt'), 'short');
    // As root, the owner is root and ~ is root's home.
    const r = await sbx.files.write('~/r.txt', 'r', { user: 'root' });
    assert.equal(r.path, join(envd.rootHome, 'r.txt'));
    assert.equal(statSync(r.path).uid, 0);
    // Empty file.
    await sbx.files.write('empty.txt', '');
    assert.equal(await sbx.files.read('empty.txt'), '');
  });

  test('binary data, blob and bytes', async () => {
    const data = new Uint8Array(70_000).map((_, i) => (i * 7 + 3) & 0xff);
    await sbx.files.write('bin.dat', data.buffer);
    const back = await sbx.files.read('bin.dat', { format: 'bytes' });
    assert.deepEqual(Buffer.from(back), Buffer.from(data));
    const blob = await sbx.files.read('bin.dat', { format: 'blob' });
    assert.equal(blob.size, data.length);
    assert.deepEqual(readFileSync(join(envd.home, 'bin.dat')), Buffer.from(data));
  });

  test('streams both ways', async () => {
    const parts = [new Uint8Array(100_000).fill(65), new Uint8Array(50_000).fill(66)];
    await sbx.files.write('stream.dat', streamOf(parts));
    const s = await sbx.files.read('stream.dat', { format: 'stream' });
    const chunks: Buffer[] = [];
    for await (const c of s as unknown as AsyncIterable<Uint8Array>) chunks.push(Buffer.from(c));
    const all = Buffer.concat(chunks);
    assert.equal(all.length, 150_000);
    assert.equal(all[0], 65);
    assert.equal(all[149_999], 66);
  });

  test('gzip upload and download', async () => {
    const text = 'compress me '.repeat(10_000);
    await sbx.files.write('gz.txt', text, { gzip: true });
    assert.equal(readFileSync(join(envd.home, 'gz.txt'), 'utf8'), text);
    assert.equal(await sbx.files.read('gz.txt', { gzip: true }), text);
  });

  test('octet-stream upload', async () => {
    await sbx.files.write('octet.txt', 'via octet', { useOctetStream: true });
    assert.equal(await sbx.files.read('octet.txt'), 'via octet');
  });

  test('several files in one upload, in order', async () => {
    const res = await sbx.files.write([
      { path: 'multi/a.txt', data: 'A' },
      { path: '/tmp/../' + envd.home.slice(1) + '/multi/deep/b.txt', data: 'B' },
      { path: 'multi/c "quoted".txt', data: new Uint8Array([0, 1, 2]).buffer },
    ]);
    assert.deepEqual(
      res.map((r) => r.path),
      [join(envd.home, 'multi/a.txt'), join(envd.home, 'multi/deep/b.txt'), join(envd.home, 'multi/c "quoted".txt')],
    );
    assert.equal(await sbx.files.read('multi/a.txt'), 'A');
    assert.equal(await sbx.files.read('multi/deep/b.txt'), 'B');
    assert.deepEqual(readFileSync(join(envd.home, 'multi/c "quoted".txt')), Buffer.from([0, 1, 2]));
  });

  test('metadata is stored and returned by getInfo and list', async () => {
    const w = await sbx.files.write('meta.txt', 'm', { metadata: { Owner: 'alice', 'build-id': '42' } });
    assert.deepEqual(w.metadata, { owner: 'alice', 'build-id': '42' });
    const info = await sbx.files.getInfo('meta.txt');
    assert.deepEqual(info.metadata, { owner: 'alice', 'build-id': '42' });
    const listed = (await sbx.files.list('.')).find((e) => e.name === 'meta.txt');
    assert.deepEqual(listed?.metadata, { owner: 'alice', 'build-id': '42' });
    // New metadata replaces the old; renames keep it.
    await sbx.files.write('meta.txt', 'm2', { metadata: { only: 'this' } });
    await sbx.files.rename('meta.txt', 'meta2.txt');
    assert.deepEqual((await sbx.files.getInfo('meta2.txt')).metadata, { only: 'this' });
    // Without metadata, nothing is reported.
    assert.equal((await sbx.files.getInfo('notes/hello.txt')).metadata, undefined);
  });

  test('reading a missing file or a directory', async () => {
    await assert.rejects(sbx.files.read('no/such/file'), NotFoundError);
    await assert.rejects(sbx.files.read('.'), InvalidArgumentError);
  });

  test('exists, getInfo fields, makeDir, rename, remove', async () => {
    assert.equal(await sbx.files.exists('nothing-here'), false);
    assert.equal(await sbx.files.makeDir('made/deep/dir'), true);
    assert.equal(await sbx.files.makeDir('made/deep/dir'), false);
    assert.equal(await sbx.files.exists('made/deep/dir'), true);
    assert.equal(statSync(join(envd.home, 'made/deep')).uid, envd.uid);

    const d = await sbx.files.getInfo('made');
    assert.equal(d.type, FileType.DIR);
    assert.equal(d.name, 'made');
    assert.equal(d.path, join(envd.home, 'made'));
    assert.equal(d.size, 4096);
    assert.equal(d.permissions, 'drwxr-xr-x');
    assert.equal(d.mode, 0o755);
    assert.equal(d.owner, 'user');
    assert.equal(d.group, 'user');

    await sbx.files.write('made/f.txt', '12345');
    const f = await sbx.files.getInfo('made/f.txt');
    assert.equal(f.type, FileType.FILE);
    assert.equal(f.size, 5);
    assert.equal(f.mode, 420);
    assert.equal(f.permissions, '-rw-r--r--');
    assert.ok(f.modifiedTime instanceof Date);
    assert.equal(f.modifiedTime?.getTime(), Math.floor(statSync(join(envd.home, 'made/f.txt')).mtimeMs));

    symlinkSync(join(envd.home, 'made/f.txt'), join(envd.home, 'made/link'));
    const l = await sbx.files.getInfo('made/link');
    assert.equal(l.type, FileType.SYMLINK);
    assert.equal(l.symlinkTarget, join(envd.home, 'made/f.txt'));
    assert.equal(l.permissions[0], 'l');

    const moved = await sbx.files.rename('made/f.txt', 'made/moved/g.txt');
    assert.equal(moved.path, join(envd.home, 'made/moved/g.txt'));
    assert.equal(await sbx.files.read('made/moved/g.txt'), '12345');
    await assert.rejects(sbx.files.rename('made/nope', 'made/x'), NotFoundError);

    await sbx.files.remove('made/moved');
    assert.equal(await sbx.files.exists('made/moved/g.txt'), false);
    await sbx.files.remove('made/already-gone');
    await assert.rejects(sbx.files.getInfo('made/moved'), NotFoundError);
  });

  test("a write creates its missing parents for the user wherever the path is; what exists stays the owner's", async () => {
    // envd.dir is root's (0755): the user cannot create anything in it by themselves
    const made = join(envd.dir, 'made-for-user');
    const w = await sbx.files.write(join(made, 'deeper/x.txt'), 'x');
    assert.equal(w.path, join(made, 'deeper/x.txt'));
    assert.equal(await sbx.files.read(w.path), 'x');
    for (const p of [made, join(made, 'deeper'), w.path]) {
      const st = statSync(p);
      assert.deepEqual([st.uid, st.gid], [envd.uid, envd.gid], p);
    }
    assert.equal(statSync(made).mode & 0o777, 0o755);
    assert.equal(await sbx.files.makeDir(join(envd.dir, 'dir-for-user/sub')), true);
    assert.equal(statSync(join(envd.dir, 'dir-for-user')).uid, envd.uid);
    assert.equal(await sbx.files.rename(w.path, join(envd.dir, 'moved-for-user/x.txt')).then((e) => e.name), 'x.txt');
    assert.equal(statSync(join(envd.dir, 'moved-for-user')).uid, envd.uid);

    // an existing directory or file of root's stays closed to the user, through a link too
    const closed = join(envd.dir, 'roots');
    mkdirSync(closed, { mode: 0o755 });
    writeFileSync(join(closed, 'secret'), 'root', { mode: 0o644 });
    await assert.rejects(sbx.files.write(join(envd.dir, 'x.txt'), 'no'), /permission denied/);
    await assert.rejects(sbx.files.write(join(closed, 'secret'), 'no'), /permission denied/);
    symlinkSync(closed, join(envd.home, 'to-roots'));
    await assert.rejects(sbx.files.write('to-roots/secret', 'no'), /permission denied/);
    assert.equal(readFileSync(join(closed, 'secret'), 'utf8'), 'root');
    // a missing directory behind the link is made (as by its real path), never the link's target changed
    await sbx.files.write('to-roots/new/y.txt', 'y');
    assert.equal(statSync(join(closed, 'new')).uid, envd.uid);
    assert.deepEqual([statSync(closed).uid, statSync(join(closed, 'secret')).uid], [0, 0]);
    // nothing is made where the user could not reach it: root's 0700 home stays closed and untouched
    await assert.rejects(sbx.files.write(join(envd.rootHome, 'new/x.txt'), 'no'), /permission denied/);
    await assert.rejects(sbx.files.makeDir(join(envd.rootHome, 'made')));
    assert.deepEqual(
      readdirSync(envd.rootHome).filter((n) => n === 'new' || n === 'made'),
      [],
    );
    // a file where a directory is needed is refused, not replaced
    await assert.rejects(sbx.files.write(join(closed, 'secret/z.txt'), 'no'));
    assert.equal(readFileSync(join(closed, 'secret'), 'utf8'), 'root');
  });

  test('list with depth, lexical depth-first order', async () => {
    const root = join(envd.home, 'tree');
    mkdirSync(join(root, 'b/inner/deepest'), { recursive: true });
    mkdirSync(join(root, 'a'), { recursive: true });
    writeFileSync(join(root, 'a/1.txt'), '1');
    writeFileSync(join(root, 'b/inner/2.txt'), '2');
    writeFileSync(join(root, 'c.txt'), 'c');
    const names1 = (await sbx.files.list('tree')).map((e) => e.path.slice(root.length + 1));
    assert.deepEqual(names1, ['a', 'b', 'c.txt']);
    const names2 = (await sbx.files.list('tree', { depth: 2 })).map((e) => e.path.slice(root.length + 1));
    assert.deepEqual(names2, ['a', 'a/1.txt', 'b', 'b/inner', 'c.txt']);
    const names9 = (await sbx.files.list('tree', { depth: 9 })).map((e) => e.path.slice(root.length + 1));
    assert.deepEqual(names9, ['a', 'a/1.txt', 'b', 'b/inner', 'b/inner/2.txt', 'b/inner/deepest', 'c.txt']);
    const entry = (await sbx.files.list('tree')).find((e) => e.name === 'c.txt');
    assert.equal(entry?.type, FileType.FILE);
    await assert.rejects(sbx.files.list('tree', { depth: 0 }), InvalidArgumentError);
    await assert.rejects(sbx.files.list('no-such-dir'), NotFoundError);
    await assert.rejects(sbx.files.list('tree/c.txt'), InvalidArgumentError);
  });

  test('signed download and upload URLs with an access token', async () => {
    const token = 'tok-' + Math.random().toString(36).slice(2);
    assert.equal(await initEnvd(envd.socket, { accessToken: token }), 204);
    try {
      const secure = await sdk(token);
      await secure.files.write('signed.txt', 'signed content');
      assert.equal(await secure.files.read('signed.txt'), 'signed content');

      const down = await secure.downloadUrl('signed.txt');
      assert.ok(down.includes('signature=v1_'));
      const r = await fetch(down);
      assert.equal(r.status, 200);
      assert.equal(await r.text(), 'signed content');

      const exp = await secure.downloadUrl('signed.txt', { useSignatureExpiration: 60 });
      assert.ok(exp.includes('signature_expiration='));
      assert.equal((await fetch(exp)).status, 200);

      const up = await secure.uploadUrl('uploaded-by-url.txt');
      const form = new FormData();
      form.append('file', new Blob(['from url']), 'ignored-name.txt');
      const u = await fetch(up, { method: 'POST', body: form });
      assert.equal(u.status, 200);
      assert.equal(readFileSync(join(envd.home, 'uploaded-by-url.txt'), 'utf8'), 'from url');

      // Tampering with the path invalidates the signature; no token at all is refused.
      const bad = new URL(down);
      bad.searchParams.set('path', 'notes/hello.txt');
      assert.equal((await fetch(bad)).status, 401);
      const plain = new URL(down);
      plain.searchParams.delete('signature');
      assert.equal((await fetch(plain)).status, 401);
      // The SDK without the token cannot list.
      const anon = await sdk();
      await assert.rejects(anon.files.list('.'), (e: unknown) => (e as Error).name === 'AuthenticationError');
    } finally {
      // Leave the token set: later tests in this file use their own envd instance anyway.
    }
  });
});
