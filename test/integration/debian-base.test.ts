// Builds the `base` root filesystem with debootstrap through the host's Debian mirror, checks
// it the way agents use E2B's `base`, rebuilds it from the cache, and checks that failures
// (unknown package, unreachable mirror, full disk, abort with a corrupt cache entry) are
// reported clearly and leave nothing behind: no files, no temporary cache entries, no mounts;
// a build running meanwhile keeps no disk of the host (a sandbox's) alive.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:net';
import fs from 'node:fs/promises';
import path from 'node:path';
import { buildDebianBase, findDebianMirror, type BaseBuildResult } from '../../src/template/debian-base.js';
import { mountsBelow as mountsUnder } from '../../src/runtime/mountinfo.js';
import { loopDevicesUnder } from '../../src/runtime/rootfs.js';
import { removeTree } from '../../src/runtime/remove-tree.js';

const BUILD_TIMEOUT = 30 * 60_000;

let root = '';
let cacheDir = '';

before(async () => {
  root = await fs.mkdtemp('/var/tmp/cubebox-debian-base-test-');
  cacheDir = path.join(root, 'cache');
});

after(async () => {
  if (!root) return;
  // The test mounts things itself (tmpfs for the full-disk case); none may survive.
  await removeTree(root, false);
  assert.deepEqual(await mountsUnder(root), []);
  await assert.rejects(fs.lstat(root), { code: 'ENOENT' });
});

function sh(file: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
}

// Runs cmd with `/bin/bash -l -c` as root inside the tree, the way the SDK runs commands,
// in a private mount and UTS namespace: the /dev it needs is a tmpfs that disappears with
// the namespace, and the hostname is one the tree has never heard of.
const IN_ROOT = `set -e
root=$1; cmd=$2
mount -t tmpfs -o mode=755,size=1m tmpfs "$root/dev"
for n in "null 1 3" "zero 1 5" "full 1 7" "random 1 8" "urandom 1 9" "tty 5 0"; do
  set -- $n; mknod -m 666 "$root/dev/$1" c "$2" "$3"
done
hostname sbx-$$
exec /usr/sbin/chroot "$root" /usr/bin/env -i TERM=xterm HOME=/root /bin/bash -l -c "$cmd"`;

async function inRoot(tree: string, cmd: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return sh('unshare', ['--mount', '--propagation', 'private', '--uts', '/bin/sh', '-c', IN_ROOT, 'in-root', tree, cmd]);
}

async function expectOutput(tree: string, cmd: string, expected: RegExp): Promise<void> {
  const r = await inRoot(tree, cmd);
  assert.equal(r.code, 0, `${cmd}: exit ${r.code}\n${r.stdout}${r.stderr}`);
  assert.match(r.stdout.trim(), expected, `${cmd}: stdout`);
  assert.equal(r.stderr.trim(), '', `${cmd}: stderr`);
}

async function assertNoMountsUnder(dir: string): Promise<void> {
  assert.deepEqual(await mountsUnder(dir), [], `mounts left under ${dir}`);
}

/** The cache directory's entries (none before the first build has made it). */
async function cacheEntries(): Promise<string[]> {
  try {
    return (await fs.readdir(cacheDir)).sort();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
}

async function build(target: string, extra: Partial<Parameters<typeof buildDebianBase>[1]> = {}) {
  const lines: string[] = [];
  const result = await buildDebianBase(target, { cacheDir, onProgress: (l) => lines.push(l), ...extra });
  return { result, lines };
}

function describe(r: BaseBuildResult): string {
  return `${r.source}: ${r.seconds.toFixed(1)} s, ${(r.bytes / 1e6).toFixed(0)} MB`;
}

interface FreshBuild {
  tree: string;
  result: BaseBuildResult;
  lines: string[];
  /** The cache's entries right after the build. */
  entries: string[];
}

let freshMade: Promise<FreshBuild> | undefined;

/**
 * The first build, from the mirror into an empty cache (made once, by whichever test needs it
 * first): it fills the cache the later tests use.
 */
function freshBuild(): Promise<FreshBuild> {
  return (freshMade ??= (async () => {
    const tree = path.join(root, 'fresh');
    const { result, lines } = await build(tree);
    return { tree, result, lines, entries: await cacheEntries() };
  })());
}

test('a fresh build gives what agents expect of E2B base', { timeout: BUILD_TIMEOUT }, async () => {
  const { tree, result, lines, entries } = await freshBuild();
  console.log(`fresh build of base: ${describe(result)}`);
  assert.equal(result.source, 'mirror');
  assert.ok(
    lines.some((l) => l.startsWith('I: Retrieving ')),
    'debootstrap output is streamed',
  );
  assert.ok(
    lines.some((l) => l.startsWith('base: ')),
    'own steps are reported',
  );
  assert.ok(result.bytes > 50e6 && result.bytes < 600e6, `size ${result.bytes}`);
  await assertNoMountsUnder(root);

  // Files, owners and leanness, seen from the host.
  const home = await fs.stat(path.join(tree, 'home/user'));
  assert.equal(home.uid, 1000);
  assert.equal(home.gid, 1000);
  for (const f of ['.bashrc', '.profile']) assert.equal((await fs.stat(path.join(tree, 'home/user', f))).uid, 1000);
  assert.equal((await fs.stat(path.join(tree, 'usr/bin/python3'))).uid, 0);
  const sudoers = path.join(tree, 'etc/sudoers.d/user');
  assert.equal(await fs.readFile(sudoers, 'utf8'), 'user ALL=(ALL:ALL) NOPASSWD: ALL\n');
  assert.equal((await fs.stat(sudoers)).mode & 0o7777, 0o440);
  assert.match(await fs.readFile(path.join(tree, 'etc/passwd'), 'utf8'), /^user:x:1000:1000:[^:]*:\/home\/user:\/bin\/bash$/m);
  assert.deepEqual(
    (await fs.readdir(path.join(tree, 'var/cache/apt/archives'))).filter((n) => n.endsWith('.deb')),
    [],
  );
  assert.deepEqual(await fs.readdir(path.join(tree, 'var/lib/apt/lists')), []);
  assert.deepEqual(await fs.readdir(path.join(tree, 'dev')), []);
  assert.equal(await fs.readFile(path.join(tree, 'etc/resolv.conf'), 'utf8'), '');
  assert.equal((await fs.stat(path.join(tree, 'tmp'))).mode & 0o7777, 0o1777);

  // The cache now holds the packages and the finished tree, and nothing temporary.
  assert.equal(entries.filter((n) => /^debs-bookworm-[a-z0-9]+-[0-9a-f]+\.tgz$/.test(n)).length, 1, entries.join());
  assert.equal(entries.filter((n) => /^rootfs-bookworm-[a-z0-9]+-[0-9a-f]+\.tar\.(zst|gz)$/.test(n)).length, 1, entries.join());
  assert.equal(entries.length, 2, entries.join());

  // What agents run, the way the SDK runs it.
  await expectOutput(tree, 'id -un', /^root$/);
  await expectOutput(tree, 'runuser -u user -- id -un', /^user$/);
  await expectOutput(tree, "su user -c 'id -un'", /^user$/);
  await expectOutput(
    tree,
    "runuser -u user -- /bin/bash -l -c 'whoami; id -u; id -g; echo $HOME; cd && pwd'",
    /^user\n1000\n1000\n\/home\/user\n\/home\/user$/,
  );
  await expectOutput(tree, "runuser -u user -- /bin/bash -l -c 'sudo -n true && sudo -n id -un'", /^root$/);
  await expectOutput(tree, "su - user -c 'sudo -n true && echo ok'", /^ok$/);
  await expectOutput(tree, "python3 -c 'print(1)'", /^1$/);
  // what E2B's base has beyond that: python and pip by those names, venv, pip installs for
  // the user, common archive and network tools, and `python -m http.server` (E2B's own tests use it)
  await expectOutput(tree, 'python --version; pip --version | cut -d" " -f1', /^Python 3\.\d+\.\d+\npip$/);
  await expectOutput(tree, 'python -m venv --without-pip /tmp/v && /tmp/v/bin/python -c "import sys; print(sys.prefix)"', /^\/tmp\/v$/);
  await expectOutput(tree, 'pip config list', /^global\.break-system-packages='true'$/);
  await expectOutput(tree, 'for c in wget unzip xz bzip2 file gpg ssh patch; do command -v $c >/dev/null || echo missing $c; done; echo ok', /^ok$/);
  await expectOutput(
    tree,
    'cd /tmp && echo served > i.txt && (python -m http.server 8765 --bind 127.0.0.1 >/dev/null 2>&1 & echo $! > pid) && for i in $(seq 50); do curl -s http://127.0.0.1:8765/i.txt && break; sleep 0.2; done; kill $(cat pid)',
    /^served$/,
  );
  await expectOutput(tree, 'git --version', /^git version \d/);
  await expectOutput(tree, 'curl --version', /^curl \d/);
  await expectOutput(tree, 'TERM=xterm tput cols', /^\d+$/);
  await expectOutput(tree, 'command -v ps', /^\/usr\/bin\/ps$/);
  await expectOutput(tree, "runuser -u user -- /bin/bash -l -c 'echo $PATH'", /^\/usr\/local\/sbin:\/usr\/local\/bin:\/usr\/sbin:\/usr\/bin:\/sbin:\/bin(:|$)/);
  await assertNoMountsUnder(root);
});

test('a second build comes from the cached root filesystem', { timeout: BUILD_TIMEOUT }, async () => {
  const fresh = (await freshBuild()).result;
  const tree = path.join(root, 'cached');
  const { result, lines } = await build(tree);
  console.log(`base from cache: ${describe(result)} (fresh: ${describe(fresh)})`);
  assert.equal(result.source, 'rootfs-cache');
  assert.ok(
    lines.some((l) => /^base: used cached root filesystem rootfs-bookworm-/.test(l)),
    lines.join('\n'),
  );
  assert.ok(!lines.some((l) => l.startsWith('I: ')), 'debootstrap did not run');
  assert.ok(Math.abs(result.bytes - fresh.bytes) < fresh.bytes * 0.02, `${result.bytes} vs ${fresh.bytes}`);
  assert.equal((await fs.stat(path.join(tree, 'home/user'))).uid, 1000);
  assert.equal((await fs.stat(path.join(tree, 'etc/sudoers.d/user'))).mode & 0o7777, 0o440);
  await expectOutput(tree, "runuser -u user -- /bin/bash -l -c 'sudo -n true && whoami'", /^user$/);
  await assertNoMountsUnder(root);
  await removeTree(tree, false);
});

test('a full disk fails clearly, keeps the good cache entry and leaves nothing behind', { timeout: BUILD_TIMEOUT }, async () => {
  await freshBuild(); // the good cache entries
  const small = path.join(root, 'small');
  await fs.mkdir(small);
  const m = await sh('mount', ['-t', 'tmpfs', '-o', 'size=48m', 'tmpfs', small]);
  assert.equal(m.code, 0, m.stderr);
  try {
    const before = await cacheEntries();
    const err = await build(path.join(small, 'rootfs')).then(
      () => assert.fail('the build should fail'),
      (e: unknown) => e as Error,
    );
    console.log(`full disk error: ${err.message.split('\n')[0]}`);
    assert.match(err.message, /No space left on device/);
    assert.match(err.message, /MB free on /);
    assert.deepEqual(await fs.readdir(small), []);
    assert.deepEqual(await cacheEntries(), before, 'a full target disk does not discard the cache');
  } finally {
    const u = await sh('umount', [small]);
    assert.equal(u.code, 0, u.stderr);
  }
  await assertNoMountsUnder(root);
});

async function abortedBuild(tree: string, abortOn: RegExp, onAbort?: () => Promise<void>) {
  const ac = new AbortController();
  const lines: string[] = [];
  const err = await buildDebianBase(tree, {
    cacheDir,
    signal: ac.signal,
    onProgress: (l) => {
      lines.push(l);
      if (abortOn.test(l) && !ac.signal.aborted) {
        void (onAbort ?? (async () => undefined))().finally(() => ac.abort(new Error('test abort')));
      }
    },
  }).then(
    () => assert.fail('the build should be aborted'),
    (e: unknown) => e as Error,
  );
  assert.match(err.message, /aborted: test abort/);
  await assert.rejects(fs.lstat(tree), { code: 'ENOENT' });
  await assertNoMountsUnder(root);
  const entries = await cacheEntries();
  assert.ok(
    entries.some((n) => n.startsWith('debs-')),
    'the package cache stays',
  );
  assert.ok(!entries.some((n) => n.startsWith('.tmp-')), entries.join());
  return lines;
}

test('corrupt cache entries are skipped and deleted; an abort mid-install leaves nothing behind', { timeout: BUILD_TIMEOUT }, async () => {
  await freshBuild(); // the cache entries to corrupt
  const entry = (await cacheEntries()).find((n) => n.startsWith('rootfs-'));
  assert.ok(entry);
  const p = path.join(cacheDir, entry);
  const gone = async () => assert.ok(!(await cacheEntries()).includes(entry), 'the bad entry is deleted');

  // A truncated entry fails its compression check.
  await fs.truncate(p, Math.floor((await fs.stat(p)).size / 2));
  let lines = await abortedBuild(path.join(root, 'aborted-1'), /^base: installing packages from debs-/);
  assert.ok(
    lines.some((l) => /^base: cached rootfs-.* is corrupt: deleting it$/.test(l)),
    lines.join('\n'),
  );
  await gone();

  // An intact compressed file that is not a tar archive fails extraction.
  await fs.writeFile(`${p}.raw`, randomBytes(64 * 1024));
  const zstd = p.endsWith('.zst');
  const c = await sh(zstd ? 'zstd' : 'gzip', zstd ? ['-q', '--rm', `${p}.raw`, '-o', p] : ['-q', `${p}.raw`]);
  assert.equal(c.code, 0, c.stderr);
  if (!zstd) await fs.rename(`${p}.raw.gz`, p);
  // debootstrap has mounted /proc in the tree once it installs the core packages: in its
  // own mount namespace, never on the host.
  let mountsSeen: string[] | undefined;
  const tree = path.join(root, 'aborted-2');
  lines = await abortedBuild(tree, /^I: Installing core packages/, async () => {
    mountsSeen = await mountsUnder(tree);
  });
  assert.ok(
    lines.some((l) => /^base: cannot extract rootfs-.*: deleting it$/.test(l)),
    lines.join('\n'),
  );
  assert.ok(
    lines.some((l) => /^base: installing packages from debs-/.test(l)),
    'fell back to the package cache',
  );
  assert.deepEqual(mountsSeen, [], 'debootstrap mounts are private to its namespace');
  await gone();
});

test('a build pins no disk of the host: one unmounted while debootstrap runs lets its loop device go at once', { timeout: BUILD_TIMEOUT }, async () => {
  await freshBuild();
  // a cache with the packages only, so that debootstrap runs
  const debsOnly = path.join(root, 'debs-only');
  await fs.mkdir(debsOnly);
  const debs = (await cacheEntries()).find((n) => n.startsWith('debs-'));
  assert.ok(debs);
  await fs.link(path.join(cacheDir, debs), path.join(debsOnly, debs));
  // a loop-backed disk mounted before the build starts, as a sandbox's disk is
  const img = path.join(root, 'pinned.img');
  const disk = path.join(root, 'pinned');
  await fs.mkdir(disk);
  for (const [cmd, args] of [
    ['truncate', ['-s', '16M', img]],
    ['mkfs.ext4', ['-q', img]],
    ['mount', ['-o', 'loop', img, disk]],
  ] as const) {
    const r = await sh(cmd, [...args]);
    assert.equal(r.code, 0, `${cmd}: ${r.stderr}`);
  }
  const ac = new AbortController();
  let released: boolean | undefined;
  try {
    const err = await buildDebianBase(path.join(root, 'pinning'), {
      cacheDir: debsOnly,
      signal: ac.signal,
      onProgress: (l) => {
        if (!/^I: Installing core packages/.test(l) || released !== undefined) return;
        released = false;
        void (async () => {
          assert.equal((await sh('umount', [disk])).code, 0);
          for (let i = 0; i < 100 && loopDevicesUnder(img).length; i++) await new Promise((r) => setTimeout(r, 100));
          released = loopDevicesUnder(img).length === 0;
        })().finally(() => ac.abort(new Error('test abort')));
      },
    }).then(
      () => assert.fail('the build should be aborted'),
      (e: unknown) => e as Error,
    );
    assert.match(err.message, /aborted: test abort/);
    assert.equal(released, true, 'the loop device went while debootstrap was running');
  } finally {
    await sh('umount', [disk]); // already unmounted unless the test failed early
    for (const l of loopDevicesUnder(img)) await sh('losetup', ['-d', l.split(' ')[0]!]);
  }
  await assertNoMountsUnder(root);
});

test("an unknown package fails with debootstrap's reason and leaves nothing behind", { timeout: BUILD_TIMEOUT }, async () => {
  const before = await cacheEntries();
  const tree = path.join(root, 'unknown-package');
  const err = await build(tree, { extraPackages: ['cubebox-no-such-package'] }).then(
    () => assert.fail('the build should fail'),
    (e: unknown) => e as Error,
  );
  console.log(`unknown package error: ${err.message.split('\n')[0]}`);
  assert.match(err.message, /^debootstrap failed \(exit \d+\) downloading packages for bookworm\//);
  assert.match(err.message, /cubebox-no-such-package/);
  assert.match(err.message, /--- last lines of debootstrap/);
  await assert.rejects(fs.lstat(tree), { code: 'ENOENT' });
  assert.deepEqual(await cacheEntries(), before);
  await assertNoMountsUnder(root);
});

test('an unreachable mirror fails clearly and leaves an existing target empty', { timeout: BUILD_TIMEOUT }, async () => {
  // A loopback port that refuses connections.
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  await new Promise<void>((r) => server.close(() => r()));
  const mirror = `http://127.0.0.1:${port}/debian`;

  const tree = path.join(root, 'no-mirror');
  await fs.mkdir(tree);
  const before = await cacheEntries();
  const err = await build(tree, { mirror }).then(
    () => assert.fail('the build should fail'),
    (e: unknown) => e as Error,
  );
  console.log(`unreachable mirror error: ${err.message.split('\n')[0]}`);
  assert.match(err.message, /^debootstrap failed/);
  assert.ok(err.message.includes(mirror), err.message);
  assert.match(err.message, /Failed getting release file|Connection refused|unable to/i);
  assert.deepEqual(await fs.readdir(tree), [], 'the target the caller made stays, empty');
  assert.deepEqual(await cacheEntries(), before);
  await assertNoMountsUnder(root);
  await fs.rmdir(tree);
});

test('a non-empty target is refused untouched', async () => {
  const tree = path.join(root, 'busy');
  await fs.mkdir(tree);
  await fs.writeFile(path.join(tree, 'keep'), 'x');
  await assert.rejects(build(tree), /is not empty/);
  assert.deepEqual(await fs.readdir(tree), ['keep']);
  await fs.rm(tree, { recursive: true });
});

test('the mirror comes from the host apt sources, one-line or deb822', async () => {
  const apt = path.join(root, 'apt');
  await fs.mkdir(path.join(apt, 'sources.list.d'), { recursive: true });
  await fs.writeFile(
    path.join(apt, 'sources.list.d', 'debian.sources'),
    'Types: deb\n# a comment\nURIs: http://mirror.invalid/debian/\nSuites: bookworm bookworm-updates\nComponents: main\n\n' +
      'Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\nComponents: main\n',
  );
  await fs.writeFile(path.join(apt, 'sources.list.d', 'other.list.disabled'), 'deb http://wrong.invalid/debian trixie main\n');
  assert.equal(await findDebianMirror('bookworm', apt), 'http://mirror.invalid/debian');
  await fs.writeFile(path.join(apt, 'sources.list'), 'deb [arch=amd64 signed-by=/k.gpg] http://one.invalid/debian trixie main # x\n');
  assert.equal(await findDebianMirror('trixie', apt), 'http://one.invalid/debian');
  await assert.rejects(findDebianMirror('sid', apt), /no Debian mirror for "sid"/);
  await fs.rm(apt, { recursive: true });
});

test('cleanup unmounts what is mounted below a tree before deleting it', async () => {
  const tree = path.join(root, 'mounted');
  await fs.mkdir(path.join(tree, 'a'), { recursive: true });
  await fs.writeFile(path.join(tree, 'file'), 'x');
  assert.equal((await sh('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', path.join(tree, 'a')])).code, 0);
  try {
    await fs.mkdir(path.join(tree, 'a', 'b'));
    assert.equal((await sh('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', path.join(tree, 'a', 'b')])).code, 0);
    assert.equal((await mountsUnder(tree)).length, 2);
    await removeTree(tree, false);
  } finally {
    for (const mp of await mountsUnder(tree)) await sh('umount', [mp]);
  }
  await assertNoMountsUnder(root);
  await assert.rejects(fs.lstat(tree), { code: 'ENOENT' });
});
