// The volume content API's file operations on a temporary directory standing in for a volume's
// data directory: how paths are read (always inside the volume, `..` never above its root),
// and that a planted symbolic link, FIFO or directory is refused or acted on as itself, never
// followed out of the volume.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { text } from 'node:stream/consumers';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { checkAttrs, ContentError, VolumeFs } from '../../src/volume/content.js';
import { MAX_DEPTH, pathParts } from '../../src/volume/entries.js';

let dir: string;
let root: string;
let outside: string;
let fs: VolumeFs;

/** A ContentError of that status whose message matches. */
const refused = (status: number, message: RegExp) => (err: unknown) => err instanceof ContentError && err.status === status && message.test(err.message);
const body = (s: string) => Readable.from(s ? [Buffer.from(s)] : []);
const read = async (path: string) => {
  const r = fs.read(path);
  return r.stream ? text(r.stream) : '';
};
/** Everything under the volume's root, as paths, for "nothing else changed" checks. */
const tree = (d = root, prefix = ''): string[] =>
  readdirSync(d, { withFileTypes: true }).flatMap((e) => [
    prefix + e.name,
    ...(e.isDirectory() && !e.isSymbolicLink() ? tree(join(d, e.name), prefix + e.name + '/') : []),
  ]);

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'cubebox-volume-'));
  root = join(dir, 'volume');
  outside = join(dir, 'outside');
  mkdirSync(root);
  mkdirSync(outside);
  writeFileSync(join(outside, 'secret'), 'host secret');
  fs = new VolumeFs(root, statSync(root).dev);
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe('volume paths', () => {
  it("are split into components, dropping empty ones and '.', and resolving '..' lexically", () => {
    assert.deepEqual(pathParts('/a/./b//c/'), ['a', 'b', 'c']);
    assert.deepEqual(pathParts('a/b'), ['a', 'b'], 'relative and absolute paths are both from the root');
    assert.deepEqual(pathParts('/a/x/../b'), ['a', 'b']);
    assert.deepEqual(pathParts('/a/..'), []);
    assert.deepEqual(pathParts('/'), []);
    assert.deepEqual(pathParts('/...'), ['...'], "'...' is a name");
  });

  it("refuse '..' above the root, a missing path, NUL bytes and names too long", () => {
    for (const p of ['..', '/..', '/../etc/passwd', '/a/../../etc', 'a/b/../../../x']) {
      assert.throws(() => pathParts(p), refused(400, /escapes the volume/), p);
    }
    assert.throws(() => pathParts(''), refused(400, /path is required/));
    assert.throws(() => pathParts(undefined), refused(400, /path is required/));
    assert.throws(() => pathParts('/a\0b'), refused(400, /NUL/));
    assert.throws(() => pathParts('/' + 'a/'.repeat(2048) + 'b'), refused(400, /too long/));
    assert.deepEqual(pathParts('/' + 'n'.repeat(255)), ['n'.repeat(255)]);
    assert.throws(() => pathParts('/' + 'n'.repeat(256)), refused(400, /longer than 255 bytes/));
    assert.throws(() => pathParts('/' + 'é'.repeat(128)), refused(400, /longer than 255 bytes/), 'bytes, not characters');
  });

  it("an absolute path names a file in the volume, never the host's", async () => {
    assert.throws(() => fs.stat('/etc/passwd'), refused(404, /'\/etc' does not exist/));
    assert.throws(() => fs.read(join(outside, 'secret')), refused(404, /does not exist/));
    await fs.write('/etc/passwd', body('volume file'), 100, {}, true);
    assert.equal(readFileSync(join(root, 'etc', 'passwd'), 'utf8'), 'volume file');
    assert.equal(await read('etc/passwd'), 'volume file');
  });
});

describe('owner and mode given with a request', () => {
  it('are integers in range: ids up to 65535, modes up to 0o7777', () => {
    const ok = { uid: 0, gid: 65535, mode: 0o7777 };
    assert.equal(checkAttrs(ok), ok);
    assert.deepEqual(checkAttrs({}), {});
    for (const bad of [{ uid: -1 }, { uid: 65536 }, { gid: 1.5 }, { gid: NaN }, { mode: -1 }, { mode: 0o10000 }, { mode: 0.5 }]) {
      assert.throws(() => checkAttrs(bad), refused(400, /must be an integer/), JSON.stringify(bad));
    }
  });
});

describe('files in a volume', () => {
  it('are written whole, read back, listed and stat-ed with their volume paths', async () => {
    const e = await fs.write('/dir/a.txt', body('hello'), 100, { mode: 0o600 }, true);
    assert.deepEqual([e.name, e.path, e.type, e.size, e.mode], ['a.txt', '/dir/a.txt', 'file', 5, 0o600]);
    assert.equal(await read('dir/a.txt'), 'hello');
    assert.equal(fs.stat('/dir').type, 'directory');
    assert.equal(fs.stat('/dir').mode, 0o755, 'parents made by force get the usual mode');
    assert.deepEqual([fs.stat('/').path, fs.stat('/').type], ['/', 'directory']);
    assert.deepEqual(
      fs.list('/').map((x) => x.path),
      ['/dir'],
    );
    assert.deepEqual(
      fs.list('/', 2).map((x) => x.path),
      ['/dir', '/dir/a.txt'],
    );
    await fs.write('/dir/a.txt', body(''), 100, {}, false);
    assert.deepEqual(fs.read('/dir/a.txt'), { size: 0, stream: undefined });
  });

  it('an upload larger than the volume is refused and leaves the old file and no temporary behind', async () => {
    await fs.write('/f', body('old'), 10, {}, false);
    await assert.rejects(fs.write('/f', Readable.from([Buffer.alloc(6), Buffer.alloc(6)]), 10, {}, false), refused(413, /larger than the volume/));
    assert.equal(await read('/f'), 'old');
    assert.deepEqual(tree(), ['f']);
  });

  it('a write into a missing directory needs force; over a directory it fails and leaves no temporary', async () => {
    await assert.rejects(fs.write('/no/such/f', body('x'), 10, {}, false), refused(404, /'\/no' does not exist/));
    mkdirSync(join(root, 'd'));
    await assert.rejects(fs.write('/d', body('x'), 10, {}, false), { code: 'EISDIR' });
    await assert.rejects(fs.write('/', body('x'), 10, {}, false), refused(400, /is a directory/));
    assert.deepEqual(tree(), ['d']);
  });

  it('mkdir: an existing name is a conflict unless force and a directory; a file is not a parent', () => {
    assert.equal(fs.mkdir('/m', { mode: 0o700 }, false).mode, 0o700);
    assert.throws(() => fs.mkdir('/m', {}, false), refused(409, /'\/m' exists/));
    assert.equal(fs.mkdir('/m', {}, true).type, 'directory');
    writeFileSync(join(root, 'file'), '');
    assert.throws(() => fs.mkdir('/file', {}, true), refused(409, /exists/));
    assert.throws(() => fs.mkdir('/file/sub', {}, true), refused(400, /'\/file' is not a directory/));
    assert.throws(() => fs.mkdir('/x/y', {}, false), refused(404, /'\/x' does not exist/));
    assert.equal(fs.mkdir('/x/y/z', {}, true).path, '/x/y/z');
    assert.throws(() => fs.mkdir('/', {}, true), refused(409, /'\/' exists/));
  });

  it('remove takes a directory with everything in it; the root and missing names are refused', async () => {
    await fs.write('/r/s/t', body('x'), 10, {}, true);
    fs.remove('/r');
    assert.deepEqual(tree(), []);
    assert.throws(() => fs.remove('/r'), refused(404, /does not exist/));
    assert.throws(() => fs.remove('/'), refused(400, /root cannot be removed/));
    assert.throws(() => fs.remove('/a/..'), refused(400, /root cannot be removed/));
    assert.throws(() => fs.setattr('/', { mode: 0o777 }), refused(400, /root cannot be changed/));
  });

  it('listing depth is bounded', () => {
    for (const depth of [0, -1, 1.5, MAX_DEPTH + 1]) assert.throws(() => fs.list('/', depth), refused(400, /depth must be an integer/), String(depth));
    assert.deepEqual(fs.list('/', MAX_DEPTH), []);
  });
});

describe('what a sandbox plants in a volume', () => {
  beforeEach(() => {
    symlinkSync(outside, join(root, 'dir-link'));
    symlinkSync(join(outside, 'secret'), join(root, 'file-link'));
    symlinkSync('/', join(root, 'host-root'));
  });
  const untouched = () => {
    assert.deepEqual(readdirSync(outside), ['secret']);
    assert.equal(readFileSync(join(outside, 'secret'), 'utf8'), 'host secret');
  };

  it('a link is stat-ed and listed as a link, with its target, never followed', () => {
    const e = fs.stat('/file-link');
    assert.deepEqual([e.type, e.target], ['symlink', join(outside, 'secret')]);
    assert.deepEqual(
      fs.list('/', MAX_DEPTH).map((x) => [x.path, x.type]),
      [
        ['/dir-link', 'symlink'],
        ['/file-link', 'symlink'],
        ['/host-root', 'symlink'],
      ],
    );
  });

  it('a link is never a directory on the way, whatever the operation', async () => {
    const link = refused(400, /is a symbolic link: the volume API does not follow links/);
    assert.throws(() => fs.list('/dir-link'), link);
    assert.throws(() => fs.stat('/dir-link/secret'), link);
    assert.throws(() => fs.read('/dir-link/secret'), link);
    assert.throws(() => fs.read('/host-root/etc/passwd'), link);
    assert.throws(() => fs.mkdir('/dir-link/new', {}, true), link);
    assert.throws(() => fs.remove('/dir-link/secret'), link);
    assert.throws(() => fs.setattr('/dir-link/secret', { mode: 0o777 }), link);
    await assert.rejects(fs.write('/dir-link/new', body('x'), 10, {}, true), link);
    await assert.rejects(fs.write('/dir-link/sub/new', body('x'), 10, {}, true), link);
    untouched();
  });

  it('a link as the last name is not read, nor chmod-ed, and a write replaces the link itself', async () => {
    assert.throws(() => fs.read('/file-link'), refused(400, /symbolic link/));
    const mode = statSync(join(outside, 'secret')).mode;
    assert.throws(() => fs.setattr('/file-link', { mode: 0o777 }), refused(400, /symbolic link/));
    assert.equal(statSync(join(outside, 'secret')).mode, mode);
    const e = await fs.write('/file-link', body('mine'), 10, {}, false);
    assert.equal(e.type, 'file');
    assert.equal(await read('/file-link'), 'mine');
    untouched();
  });

  it('removing a link, or a directory holding links, removes the links and not their targets', async () => {
    fs.remove('/file-link');
    await fs.write('/d/x', body('x'), 10, {}, true);
    symlinkSync(outside, join(root, 'd', 'inner-link'));
    fs.remove('/d');
    assert.equal(existsSync(join(root, 'd')), false);
    fs.remove('/dir-link');
    untouched();
    assert.deepEqual(tree(), ['host-root']);
  });

  it("'..' after a link climbs back lexically, without following the link", () => {
    assert.equal(fs.stat('/dir-link/..').path, '/');
    assert.equal(fs.stat('/dir-link/../file-link').type, 'symlink');
  });

  it('a FIFO is refused as not a regular file, without waiting for a writer', () => {
    execFileSync('mkfifo', [join(root, 'fifo')]);
    // in a child process: an open that waits for a writer fails the test instead of hanging it
    const content = new URL('../../src/volume/content.js', import.meta.url).href;
    const script = `const { VolumeFs } = await import(${JSON.stringify(content)});
      try { new VolumeFs(process.argv[1], Number(process.argv[2])).read('/fifo'); } catch (e) { console.log(e.status, e.message); }`;
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', script, root, String(statSync(root).dev)], { timeout: 20_000, encoding: 'utf8' });
    assert.equal(out.trim(), "400 '/fifo' is not a regular file");
    assert.equal(fs.stat('/fifo').type, 'unknown');
    mkdirSync(join(root, 'sub'));
    assert.throws(() => fs.read('/sub'), refused(400, /not a regular file/));
  });

  it('a directory on another filesystem than the volume is refused', async () => {
    const elsewhere = new VolumeFs(root, statSync(root).dev + 1);
    assert.throws(() => elsewhere.list('/'), refused(400, /'\/' is not a directory of this volume/));
    await assert.rejects(elsewhere.write('/x', body('x'), 10, {}, false), refused(400, /not a directory of this volume/));
    assert.equal(existsSync(join(root, 'x')), false);
  });
});
