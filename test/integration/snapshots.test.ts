import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { SandboxCore } from '../../src/sandbox/core.js';
import type { SandboxManager } from '../../src/sandbox/manager.js';
import { collectEphemeralTemplates } from '../../src/sandbox/snapshots.js';
import { CubeboxError } from '../../src/util/errors.js';
import { Volumes } from '../../src/volume/volumes.js';
import { assertNoSandboxLeaks, destroyInstance, execIn, newInstance } from '../helpers/instance.js';

const MiB = 1024 * 1024;

describe('snapshots (real runtime)', () => {
  let m: SandboxManager;
  before(async () => {
    m = await newInstance();
  });
  after(async () => {
    await destroyInstance(m);
  });

  /** The layer store's size on disk (a hard-linked file counts once). */
  const layersBytes = () => Number(execFileSync('du', ['-s', '--block-size=1', m.paths.layersDir]).toString().split('\t')[0]);
  const run = async (id: string, script: string) => {
    const r = await execIn(m, id, ['sh', '-c', script]);
    assert.equal(r.code, 0, r.stderr);
    return r.stdout;
  };

  it('snapshots of snapshots keep working generation after generation, their default names bounded', async () => {
    let template = 'busybox';
    for (let g = 0; g < 7; g++) {
      const s = await m.create({ template });
      await run(s.id, `echo ${g} >> /generations`);
      const snap = await m.snapshot(s.id);
      assert.ok(snap.name.length <= 63, snap.name);
      await m.delete(s.id);
      template = snap.id;
    }
    assert.match(m.templates.get(template).name, /^busybox-snap-[a-z0-9]{8}$/);
    const last = await m.create({ template });
    assert.equal(await run(last.id, 'cat /generations'), '0\n1\n2\n3\n4\n5\n6\n');
    await m.delete(last.id);
    assertNoSandboxLeaks(m.paths, last.id);
  });

  it('a snapshot costs what the sandbox changed since its last one: unchanged files are shared with it', async () => {
    const s = await m.create({ template: 'busybox' });
    const grows = async () => {
      const before = layersBytes();
      const t = await m.snapshot(s.id);
      return { t, grew: layersBytes() - before };
    };
    const empty = await grows();
    await run(s.id, 'head -c 20971520 /dev/urandom > /big && mkdir /d && head -c 1048576 /dev/urandom > /d/same-size && echo one > /small');
    const first = await grows();
    const second = await grows();
    // rewrite a file with the same size, then give it its old mtime back (to the nanosecond): still a change
    const upperFile = join(m.paths.sandboxesDir, s.id, 'disk', 'upper', 'd', 'same-size');
    const mtime = execFileSync('stat', ['-c', '%.9Y', upperFile]).toString().trim();
    await run(s.id, 'head -c 1048576 /dev/urandom > /d/same-size && echo two > /small && head -c 5242880 /dev/urandom > /more && sync');
    execFileSync('touch', ['-m', '-d', `@${mtime}`, upperFile]);
    const third = await grows();
    process.stdout.write(
      `# layer growth: no writes ${empty.grew} B; after 21 MiB written ${first.grew} B; again unchanged ${second.grew} B; after 6 MiB more ${third.grew} B\n`,
    );
    assert.ok(empty.grew < MiB, `a snapshot of a sandbox that wrote nothing took ${empty.grew} bytes`);
    assert.ok(first.grew >= 21 * MiB, `${first.grew}`);
    assert.ok(second.grew < MiB, `a second snapshot of an unchanged sandbox took ${second.grew} bytes`);
    assert.ok(third.grew >= 6 * MiB && third.grew < 8 * MiB, `${third.grew}`);
    const ino = (t: typeof first.t, f: string) => statSync(join(t.layers[0]!, f)).ino;
    assert.equal(ino(second.t, 'big'), ino(first.t, 'big'), 'the unchanged file is one inode');
    assert.notEqual(ino(third.t, 'd/same-size'), ino(second.t, 'd/same-size'));

    const sums = await run(s.id, 'md5sum /big /d/same-size /more; cat /small; stat -c %U /big');
    for (const [t, small] of [
      [third.t, 'two'],
      [second.t, 'one'],
    ] as const) {
      const c = await m.create({ template: t.id });
      if (t === third.t) assert.equal(await run(c.id, 'md5sum /big /d/same-size /more; cat /small; stat -c %U /big'), sums);
      else assert.equal(await run(c.id, 'cat /small'), `${small}\n`);
      await m.delete(c.id);
    }
    await m.delete(s.id);
    for (const t of [third.t, second.t, first.t, empty.t]) m.templates.remove(t.id);
  });

  it("a fork's template outlives a collector pass in the middle of the fork, and a refused removal is not retried every pass", async () => {
    const core = (m as unknown as { core: SandboxCore }).core;
    const src = await m.create({ template: 'busybox' });
    await run(src.id, 'echo forked > /f');
    // the collector runs (as the reconciler's pass may) while the snapshot thaws the source
    const rt = m.runtimeOf(src.id);
    rt.resume = async function (this: typeof rt, cid: string) {
      collectEphemeralTemplates(core);
      return Object.getPrototypeOf(this).resume.call(this, cid);
    };
    let results;
    try {
      results = await m.fork(src.id, 1);
    } finally {
      delete (rt as { resume?: unknown }).resume;
    }
    const forked = results[0]!.info;
    assert.ok(forked, `the fork failed: ${results[0]!.error?.message}`);
    assert.equal(await run(forked.id, 'cat /f'), 'forked\n');
    const forkTemplate = m.templates.get(forked.templateId);

    // a snapshot of the forked sandbox is the fork template's child: the collector keeps the parent, trying once
    const child = await m.snapshot(forked.id);
    await m.delete(forked.id);
    const tries: string[] = [];
    const remove = m.templates.remove.bind(m.templates);
    m.templates.remove = (ref: string) => {
      tries.push(ref);
      remove(ref);
    };
    try {
      for (let i = 0; i < 5; i++) collectEphemeralTemplates(core);
      assert.equal(tries.filter((t) => t === forkTemplate.id).length, 1, `tried ${tries.length} times`);
      remove(child.id);
      collectEphemeralTemplates(core);
    } finally {
      delete (m.templates as { remove?: unknown }).remove;
    }
    assert.equal(m.templates.find(forkTemplate.id), undefined, 'once its child is gone, it goes');
    assert.ok(!existsSync(forkTemplate.layers[0]!), 'with its layer');
    await m.delete(src.id);
  });

  it('a volume mount path that is a symlink (or a file) in the template is refused with a clear error, not a failed create', async () => {
    const volumes = new Volumes(m.store, m.paths, m.log, 64);
    const vol = await volumes.create('team_snap', 'vol', () => undefined);
    const s = await m.create({ template: 'busybox' });
    await run(s.id, 'ln -s /etc /data && mkdir -p /x && echo hi > /x/file && ln -s /x /y');
    const snap = await m.snapshot(s.id);
    await m.delete(s.id);
    for (const [path, why] of [
      ['/data', /'\/data' is a symbolic link/],
      ['/data/sub', /symbolic link in the template \(at \/data\)/],
      ['/y/inner', /symbolic link/],
      ['/x/file', /not a directory/],
    ] as const) {
      await assert.rejects(m.create({ template: snap.id, team: 'team_snap', volumeMounts: [{ name: 'vol', path }] }), (err: unknown) => {
        assert.ok(err instanceof CubeboxError && err.kind === 'invalid_argument', String(err));
        assert.match(err.message, why);
        return true;
      });
    }
    // a path that is a directory, or that is not there, mounts as before
    const ok = await m.create({ template: snap.id, team: 'team_snap', volumeMounts: [{ name: 'vol', path: '/x/mnt' }] });
    assert.equal(await run(ok.id, 'echo v > /x/mnt/f && cat /x/mnt/f && readlink /data'), 'v\n/etc\n');
    await m.delete(ok.id);
    assert.equal(m.list().length, 0, 'a refused create left a sandbox');
    await volumes.delete(vol.id);
    m.templates.remove(snap.id);
  });
});
