// Persistent volumes through the published SDK (`Volume`, `volumeMounts`) against a real
// `cubebox serve`: shared between sandboxes, surviving them, refused deletes, team isolation,
// and the content API's handling of hostile paths planted by a sandbox.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { HELPER_BIN } from '../../src/config.js';
import { loopDevicesUnder, mountsUnder } from '../../src/runtime/rootfs.js';
import { runOk } from '../../src/util/exec.js';
import { cli, destroyInstance } from '../helpers/instance.js';
import { sdkService, startService, type E2B, type Service } from '../helpers/service.js';

let e2b: E2B;
let svc: Service;
let dataDir: string;

const VOLUME_MB = 64;

/** Nothing of the volume left on the host: mounts, loop devices, its directory. */
function assertVolumeGone(id: string): void {
  const dir = join(dataDir, 'volumes', id);
  assert.deepEqual(mountsUnder(dir), [], 'no mount of the volume remains');
  assert.deepEqual(loopDevicesUnder(dir), [], 'no loop device of the volume remains');
  assert.equal(existsSync(dir), false, 'the volume directory is gone');
}

/**
 * After a failed test: its sandboxes and volumes go through the API (a volume left mounted
 * would stop the instance's removal).
 */
async function cleanUp(sdk: E2B): Promise<void> {
  for (const s of await sdk.Sandbox.list({ query: { state: ['running', 'paused'] } }).nextItems()) await sdk.Sandbox.kill(s.sandboxId);
  for (const v of await sdk.Volume.list()) await sdk.Volume.destroy(v.volumeId);
}

/** The content API by hand, to see statuses and messages exactly. */
async function content(volumeId: string, token: string | undefined, route: string, init: RequestInit = {}): Promise<{ status: number; body: string }> {
  const headers: Record<string, string> = token ? { authorization: `Bearer ${token}` } : {};
  const r = await fetch(`${svc.url}/volumecontent/${volumeId}/${route}`, { ...init, headers: { ...headers, ...(init.headers as Record<string, string>) } });
  return { status: r.status, body: await r.text() };
}

describe('persistent volumes through the SDK', { timeout: 900_000 }, () => {
  before(async () => {
    ({ svc, dataDir, e2b } = await sdkService({ CUBEBOX_VOLUME_SIZE_MB: String(VOLUME_MB) }));
    process.env.E2B_VOLUME_API_URL = svc.url;
  });
  after(async () => {
    await cleanUp(e2b);
    await svc.stop();
    await destroyInstance(undefined, dataDir);
    delete process.env.E2B_VOLUME_API_URL;
  });

  it('is shared by two sandboxes, outlives them, is read through the volume API, and is deleted without a trace', async () => {
    const vol = await e2b.Volume.create('shared');
    assert.match(vol.volumeId, /^vol_[a-z0-9]{16}$/);
    assert.ok(vol.token.length >= 32);
    assert.ok((await e2b.Volume.list()).some((v) => v.volumeId === vol.volumeId && v.name === 'shared'));
    const info = await e2b.Volume.getInfo(vol.volumeId);
    assert.equal(info.token, vol.token);

    const a = await e2b.Sandbox.create('base', { volumeMounts: { '/mnt/data': vol } });
    const b = await e2b.Sandbox.create('base', { volumeMounts: { '/mnt/data': 'shared' } });
    try {
      assert.deepEqual((await a.getInfo()).volumeMounts, [{ name: 'shared', path: '/mnt/data' }]);
      const listed = (await e2b.Sandbox.list().nextItems()).find((x) => x.sandboxId === b.sandboxId);
      assert.deepEqual(listed?.volumeMounts, [{ name: 'shared', path: '/mnt/data' }]);
      // the sandbox's user writes as itself; the other sandbox (another id block) sees the same owner
      const w = await a.commands.run(
        'echo hello > /mnt/data/greeting && mkdir /mnt/data/sub && echo deep > /mnt/data/sub/f && id -u && stat -c %u:%g /mnt/data/greeting',
      );
      assert.equal(w.stdout, '1000\n1000:1000\n');
      assert.equal((await b.commands.run('cat /mnt/data/greeting /mnt/data/sub/f && stat -c %u:%g /mnt/data/greeting')).stdout, 'hello\ndeep\n1000:1000\n');
      await b.commands.run('echo from-b >> /mnt/data/greeting');
      assert.equal((await a.commands.run('cat /mnt/data/greeting')).stdout, 'hello\nfrom-b\n');
      // root in the sandbox is canonical 0 on the volume; the sandbox cannot see beyond the volume's root
      await a.commands.run('sudo sh -c "echo r > /mnt/data/rootfile"');
      assert.equal((await vol.getInfo('/rootfile')).uid, 0);
      // on the host the files carry canonical ids, not the sandboxes' host ids
      assert.equal(statSync(join(dataDir, 'volumes', vol.volumeId, 'disk', 'data', 'greeting')).uid, 1000);
    } finally {
      await a.kill();
      await b.kill();
    }

    assert.equal(await vol.readFile('/greeting'), 'hello\nfrom-b\n');
    const names = (await vol.list('/', { depth: 2 })).map((e) => e.path).sort();
    assert.deepEqual(names, ['/greeting', '/rootfile', '/sub', '/sub/f']);
    const st = await vol.getInfo('/greeting');
    assert.equal(st.type, 'file');
    assert.equal(st.size, 13);
    assert.equal(st.uid, 1000);
    assert.equal(st.mode, 0o644);

    // the API writes, with owner and mode; a stream is streamed, and bounded by the volume's size
    const dir = await vol.makeDir('/api/nested', { force: true, uid: 0, gid: 0, mode: 0o750 });
    assert.equal(dir.type, 'directory');
    assert.equal(dir.mode, 0o750);
    const chunk = new Uint8Array(1024 * 1024).fill(7);
    let sent = 0;
    const stream = new ReadableStream<Uint8Array>({
      pull(c) {
        if (sent++ < 8) c.enqueue(chunk);
        else c.close();
      },
    });
    const written = await vol.writeFile('/api/nested/blob', stream, { uid: 1000, gid: 1000, mode: 0o600 });
    assert.equal(written.size, 8 * 1024 * 1024);
    assert.equal(written.uid, 1000);
    assert.equal(written.mode, 0o600);
    const back = await vol.readFile('/api/nested/blob', { format: 'bytes' });
    assert.equal(back.length, 8 * 1024 * 1024);
    assert.ok(back.every((x) => x === 7));
    const changed = await vol.updateMetadata('/api/nested/blob', { mode: 0o640, gid: 0 });
    assert.equal(changed.mode, 0o640);
    assert.equal(changed.gid, 0);
    await vol.writeFile('/empty', '');
    assert.equal(await vol.readFile('/empty'), '');

    let big = 0;
    const tooBig = new ReadableStream<Uint8Array>({
      pull(c) {
        if (big++ < VOLUME_MB + 8) c.enqueue(chunk);
        else c.close();
      },
    });
    await assert.rejects(vol.writeFile('/too-big', tooBig), (e: Error) => e instanceof e2b.VolumeError && /(413|507)/.test(e.message));
    assert.equal(await vol.exists('/too-big'), false);
    assert.ok(!(await vol.list('/')).some((e) => e.name.startsWith('.cubebox-upload')), 'no partial upload remains');
    await vol.writeFile('/after-full', 'still fine');
    assert.equal(await vol.readFile('/after-full'), 'still fine');

    await vol.remove('/api');
    assert.equal(await vol.exists('/api/nested/blob'), false);
    await assert.rejects(vol.readFile('/nope'), e2b.VolumePathNotFoundError);

    // a sandbox made later sees everything that was written
    const c = await e2b.Sandbox.create('base', { volumeMounts: { '/data': vol } });
    assert.equal((await c.commands.run('cat /data/after-full')).stdout, 'still fine');
    await c.kill();

    assert.equal(await e2b.Volume.destroy(vol.volumeId), true);
    assertVolumeGone(vol.volumeId);
    await assert.rejects(e2b.Volume.getInfo(vol.volumeId), e2b.VolumeNotFoundError);
    assert.equal(await e2b.Volume.destroy(vol.volumeId), false);
  });

  it('refuses to delete a volume mounted in a running or paused sandbox; a cold resume mounts it again', async () => {
    const vol = await e2b.Volume.create('busy');
    const sbx = await e2b.Sandbox.create('base', { volumeMounts: { '/mnt/v': vol } });
    const refused = (e: Error) => e instanceof e2b.VolumeError && /409/.test(e.message) && e.message.includes(sbx.sandboxId) && /mounted/.test(e.message);
    await sbx.commands.run('echo kept > /mnt/v/f');
    await assert.rejects(e2b.Volume.destroy(vol.volumeId), refused);
    // paused without memory: no process holds the volume, its mount is still the sandbox's
    await sbx.pause({ keepMemory: false });
    await assert.rejects(e2b.Volume.destroy(vol.volumeId), refused);
    const again = await e2b.Sandbox.connect(sbx.sandboxId); // boots it again
    assert.equal((await again.commands.run('cat /mnt/v/f')).stdout, 'kept\n');
    await again.pause();
    await assert.rejects(e2b.Volume.destroy(vol.volumeId), refused);
    await e2b.Sandbox.kill(sbx.sandboxId);
    assert.equal(await e2b.Volume.destroy(vol.volumeId), true);
    assertVolumeGone(vol.volumeId);
    // a deleted volume cannot be mounted any more
    await assert.rejects(e2b.Sandbox.create('base', { volumeMounts: { '/mnt/v': 'busy' } }), /404|not found/);
  });

  it('is mounted again after a restart, and a disk no volume owns is removed', async () => {
    const vol = await e2b.Volume.create('durable');
    await vol.writeFile('/note', 'survives');
    await svc.stop();
    // as after a reboot: the volume's disk is not mounted; and a disk of no volume is
    const disk = join(dataDir, 'volumes', vol.volumeId, 'disk');
    await runOk(HELPER_BIN, ['umount', disk]);
    const orphan = join(dataDir, 'volumes', 'vol_0000000000000000');
    mkdirSync(join(orphan, 'disk'), { recursive: true });
    await runOk('truncate', ['-s', '16M', join(orphan, 'disk.img')]);
    await runOk('mkfs.ext4', ['-q', '-F', join(orphan, 'disk.img')]);
    await runOk(HELPER_BIN, ['mount-disk', join(orphan, 'disk.img'), join(orphan, 'disk')]);
    assert.equal(mountsUnder(orphan).length, 1);

    svc = await startService(dataDir);
    process.env.E2B_API_URL = process.env.E2B_SANDBOX_URL = process.env.E2B_VOLUME_API_URL = svc.url;
    assert.equal(mountsUnder(disk).length, 1, 'the volume disk is mounted again');
    assertVolumeGone('vol_0000000000000000');
    assert.equal(await vol.readFile('/note'), 'survives');
    assert.equal(await e2b.Volume.destroy(vol.volumeId), true);
    assertVolumeGone(vol.volumeId);
  });

  it("keeps teams apart: another team's volume is unknown on both APIs", async () => {
    const mine = await e2b.Volume.create('private');
    const r = await cli(dataDir, ['keys', 'create', '--team', 'other', '--name', 'other']);
    assert.equal(r.code, 0, r.stderr);
    const otherKey = r.stdout.trim().split('\n').pop()!.trim();
    const other = { apiKey: otherKey };
    try {
      await assert.rejects(e2b.Volume.getInfo(mine.volumeId, other), e2b.VolumeNotFoundError);
      assert.ok(!(await e2b.Volume.list(other)).some((v) => v.volumeId === mine.volumeId));
      assert.equal(await e2b.Volume.destroy(mine.volumeId, other), false);
      await assert.rejects(e2b.Sandbox.create('base', { ...other, volumeMounts: { '/mnt/x': 'private' } }), /404|not found/);
      // the other team may use the same name for a volume of its own
      const theirs = await e2b.Volume.create('private', other);
      assert.notEqual(theirs.volumeId, mine.volumeId);
      // its token opens its volume only; no token, no access
      const wrong = await content(mine.volumeId, theirs.token, 'path?path=/');
      assert.equal(wrong.status, 404);
      assert.match(wrong.body, /not found/);
      assert.equal((await content(mine.volumeId, undefined, 'path?path=/')).status, 401);
      assert.equal((await content(mine.volumeId, 'e2b_' + otherKey, 'dir?path=/')).status, 404);
      assert.equal((await content(theirs.volumeId, theirs.token, 'path?path=/')).status, 200);
      // a team whose last key is revoked is blocked on the content API too, until it has a key again
      assert.equal((await cli(dataDir, ['keys', 'revoke', otherKey])).code, 0);
      assert.equal((await content(theirs.volumeId, theirs.token, 'path?path=/')).status, 403);
      const again = await cli(dataDir, ['keys', 'create', '--team', 'other', '--name', 'other-2']);
      other.apiKey = again.stdout.trim().split('\n').pop()!.trim();
      assert.equal((await content(theirs.volumeId, theirs.token, 'path?path=/')).status, 200);
      assert.equal(await e2b.Volume.destroy(theirs.volumeId, other), true);
      assertVolumeGone(theirs.volumeId);
    } finally {
      await e2b.Volume.destroy(mine.volumeId);
    }
    assertVolumeGone(mine.volumeId);
  });

  it('never follows a path out of the volume: .., links planted by a sandbox, FIFOs', async () => {
    const vol = await e2b.Volume.create('hostile');
    const sbx = await e2b.Sandbox.create('base', { volumeMounts: { '/mnt/h': vol } });
    const shadowBefore = statSync('/etc/shadow');
    try {
      await sbx.commands.run(
        'cd /mnt/h && ln -s /etc/shadow shadow && ln -s / root && mkdir d && ln -s /etc d/etc && ln -s ../../../../../etc up && mkfifo fifo && echo ok > d/real',
      );
      const refusedLink = (e: Error) => e instanceof e2b.VolumeError && /400/.test(e.message) && /symbolic link/.test(e.message);
      // '..' may not climb above the volume's root
      const dotdot = await content(vol.volumeId, vol.token, `file?path=${encodeURIComponent('../../../../etc/shadow')}`);
      assert.equal(dotdot.status, 400);
      assert.match(dotdot.body, /escapes the volume/);
      assert.equal((await content(vol.volumeId, vol.token, `file?path=${encodeURIComponent('/d/../../etc/passwd')}`)).status, 400);
      // links are reported, never followed: neither as the last component nor on the way
      await assert.rejects(vol.readFile('/shadow'), refusedLink);
      await assert.rejects(vol.readFile('/root/etc/shadow'), refusedLink);
      await assert.rejects(vol.readFile('/d/etc/shadow'), refusedLink);
      await assert.rejects(vol.readFile('/up/shadow'), refusedLink);
      await assert.rejects(vol.list('/root'), refusedLink);
      await assert.rejects(vol.writeFile('/root/tmp/cubebox-volume-escape', 'x'), refusedLink);
      await assert.rejects(vol.makeDir('/root/tmp/cubebox-volume-escape-dir'), refusedLink);
      await assert.rejects(vol.updateMetadata('/shadow', { mode: 0o666 }), /400/);
      await assert.rejects(vol.updateMetadata('/root', { uid: 1000 }), /400/);
      assert.equal(existsSync('/tmp/cubebox-volume-escape'), false);
      assert.equal(existsSync('/tmp/cubebox-volume-escape-dir'), false);
      // a FIFO is refused at once, not waited on
      const t0 = Date.now();
      await assert.rejects(vol.readFile('/fifo'), /400/);
      await assert.rejects(vol.writeFile('/fifo/x', 'x'), /400/);
      assert.ok(Date.now() - t0 < 5000);
      // a link's own stat is fine, and writing over a link replaces the link, not its target
      const link = await vol.getInfo('/shadow');
      assert.equal(link.type, 'symlink');
      assert.equal(link.target, '/etc/shadow');
      await vol.writeFile('/shadow', 'replaced');
      assert.equal((await vol.getInfo('/shadow')).type, 'file');
      // removing a link to / removes the link only
      await vol.remove('/root');
      await vol.remove('/d');
      assert.equal(await vol.exists('/d/real'), false);
      assert.ok(existsSync('/etc/passwd') && existsSync('/etc/shadow'));
      const shadowAfter = statSync('/etc/shadow');
      assert.equal(shadowAfter.mode, shadowBefore.mode);
      assert.equal(shadowAfter.mtimeMs, shadowBefore.mtimeMs);
      assert.equal(readFileSync('/etc/hostname', 'utf8').length > 0, true);
      // the sandbox sees what the API did
      assert.equal((await sbx.commands.run('cat /mnt/h/shadow; ls /mnt/h | sort | tr "\\n" " "')).stdout, 'replaced' + 'fifo shadow up ');
    } finally {
      await sbx.kill();
    }
    assert.equal(await e2b.Volume.destroy(vol.volumeId), true);
    assertVolumeGone(vol.volumeId);
  });

  it('checks requests: names, mount paths, quota', async () => {
    await assert.rejects(e2b.Volume.create('bad name!'), /400/);
    await assert.rejects(e2b.Sandbox.create('base', { volumeMounts: { 'relative/path': 'x' } }), /400|absolute/);
    const v = await e2b.Volume.create('q');
    await assert.rejects(e2b.Volume.create('q'), /409/);
    await assert.rejects(e2b.Sandbox.create('base', { volumeMounts: { '/proc/x': v } }), /reserved/);
    await assert.rejects(e2b.Sandbox.create('base', { volumeMounts: { '/a': v, '/a/b': v } }), /overlap/);
    const r = await cli(dataDir, ['teams', 'set-quota', 'default', '--volumes', '1']);
    assert.equal(r.code, 0, r.stderr);
    try {
      await assert.rejects(e2b.Volume.create('q2'), (e: Error) => e instanceof e2b.RateLimitError && /volumes/.test(e.message));
    } finally {
      await cli(dataDir, ['teams', 'set-quota', 'default', '--volumes', 'default']);
    }
    assert.equal(await e2b.Volume.destroy(v.volumeId), true);
    assertVolumeGone(v.volumeId);
  });
});

// The same sharing with runc: the views are plain bind sources for any OCI runtime. (Loopback
// only: this checks volumes, not sandbox networking.) runsc serves the views through its gofer;
// its old ptrace build here has no statx, so coreutils' stat and ls fail in it whatever the file.
for (const runtime of ['runc']) {
  describe(`persistent volumes with ${runtime}`, { timeout: 600_000 }, () => {
    let s2: Service;
    let dir2: string;
    let sdk: E2B;
    before(async () => {
      ({
        svc: s2,
        dataDir: dir2,
        e2b: sdk,
      } = await sdkService({ CUBEBOX_VOLUME_SIZE_MB: String(VOLUME_MB), CUBEBOX_RUNTIME: runtime, CUBEBOX_POOL: '', CUBEBOX_NETWORK: 'off' }));
      process.env.E2B_VOLUME_API_URL = s2.url;
    });
    after(async () => {
      await cleanUp(sdk);
      await s2.stop();
      await destroyInstance(undefined, dir2);
      delete process.env.E2B_VOLUME_API_URL;
    });

    it('shares a volume between two sandboxes, as their user', async () => {
      const vol = await sdk.Volume.create('rt');
      const a = await sdk.Sandbox.create('base', { volumeMounts: { '/mnt/data': vol } });
      const b = await sdk.Sandbox.create('base', { volumeMounts: { '/mnt/data': vol } });
      try {
        assert.equal((await a.commands.run('echo via-a > /mnt/data/f && stat -c %u /mnt/data/f')).stdout, '1000\n');
        assert.equal((await b.commands.run('cat /mnt/data/f')).stdout, 'via-a\n');
      } finally {
        await Promise.all([a.kill(), b.kill()]);
      }
      assert.equal(await vol.readFile('/f'), 'via-a\n');
      assert.equal(await sdk.Volume.destroy(vol.volumeId), true);
      assert.deepEqual(mountsUnder(join(dir2, 'volumes')), []);
      assert.deepEqual(loopDevicesUnder(join(dir2, 'volumes')), []);
    });
  });
}
