import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { openPaths } from '../../src/config.js';
import { detectCgroupMode } from '../../src/runtime/cgroups.js';
import type { HostReport } from '../../src/runtime/probe.js';
import { cli, destroyInstance, instanceLeaks, newDataDir, openManager, startServe, waitExit } from '../helpers/instance.js';

/** Last non-empty line of a command's stdout: where `sandbox create` prints the id. */
const lastLine = (s: string) => s.trim().split('\n').pop()!.trim();

describe('crashes and restarts', () => {
  let dataDir: string;
  before(async () => {
    dataDir = newDataDir();
    const r = await cli(dataDir, ['template', 'build', 'busybox']);
    assert.equal(r.code, 0, r.stderr);
  });
  after(async () => {
    await destroyInstance(undefined, dataDir);
  });

  for (const point of [
    'create:after-dir',
    'create:after-disk',
    'create:after-mount',
    'create:after-network',
    'create:before-run',
    'create:after-run',
    'create:after-agent',
  ]) {
    it(`a manager SIGKILLed at ${point} leaves a half-created sandbox that the next start removes`, async () => {
      const r = await cli(dataDir, ['sandbox', 'create', '--template', 'busybox'], { CUBEBOX_FAULT: point });
      assert.equal(r.signal, 'SIGKILL', `the CLI should have died at ${point}: ${r.stderr}`);
      const paths = openPaths(dataDir, false);
      const leftovers = instanceLeaks(paths);
      assert.ok(leftovers.length > 0, 'the crash should leave resources behind');
      // the next manager's start-up reconciliation removes them
      const m = await openManager(dataDir);
      try {
        assert.equal(m.list().length, 0);
      } finally {
        await m.close();
      }
      assert.deepEqual(instanceLeaks(paths), []);
    });
  }

  it('a manager killed with SIGKILL and restarted re-adopts running and paused sandboxes', async () => {
    let serve = await startServe(dataDir);
    try {
      const a = lastLine((await cli(dataDir, ['sandbox', 'create', '--template', 'busybox'])).stdout);
      const b = lastLine((await cli(dataDir, ['sandbox', 'create', '--template', 'busybox'])).stdout);
      assert.match(a, /^[a-z0-9]{20}$/);
      assert.equal((await cli(dataDir, ['sandbox', 'exec', b, '--', 'sh', '-c', 'echo state > /tmp/keep'])).code, 0);
      assert.equal((await cli(dataDir, ['sandbox', 'pause', b])).code, 0);

      serve.kill('SIGKILL');
      await waitExit(serve);
      serve = await startServe(dataDir);

      const list = JSON.parse((await cli(dataDir, ['sandbox', 'list', '--json'])).stdout) as { id: string; state: string }[];
      assert.equal(list.find((s) => s.id === a)?.state, 'running');
      assert.equal(list.find((s) => s.id === b)?.state, 'paused');
      const ex = await cli(dataDir, ['sandbox', 'exec', a, '--', 'echo', 'alive']);
      assert.equal(ex.stdout, 'alive\n');
      assert.equal((await cli(dataDir, ['sandbox', 'exec', b, '--', 'true'])).code, 4, 'exec on the paused sandbox is refused');
      assert.equal((await cli(dataDir, ['sandbox', 'resume', b])).code, 0);
      assert.equal((await cli(dataDir, ['sandbox', 'exec', b, '--', 'cat', '/tmp/keep'])).stdout, 'state\n');
      for (const id of [a, b]) assert.equal((await cli(dataDir, ['sandbox', 'rm', id])).code, 0);
    } finally {
      serve.kill('SIGTERM');
      await waitExit(serve);
    }
    assert.deepEqual(instanceLeaks(openPaths(dataDir, false)), []);
  });

  it('a manager killed in the middle of a delete finishes it on restart', async () => {
    const id = lastLine((await cli(dataDir, ['sandbox', 'create', '--template', 'busybox'])).stdout);
    // simulate the crash: the row says deleting, the sandbox still runs
    const m = await openManager(dataDir);
    m.store.updateSandbox(id, { state: 'deleting' });
    await m.close(); // no reconcile happens on close
    const m2 = await openManager(dataDir);
    await m2.close();
    assert.deepEqual(instanceLeaks(openPaths(dataDir, false)), []);
  });
});

describe('cubebox CLI', () => {
  let dataDir: string;
  before(async () => {
    dataDir = newDataDir();
    assert.equal((await cli(dataDir, ['template', 'build', 'busybox'])).code, 0);
  });
  after(async () => {
    await destroyInstance(undefined, dataDir);
  });

  it('create prints the id last, exec passes stdout, stderr and exit code through, rm deletes', async () => {
    const c = await cli(dataDir, ['sandbox', 'create', '--template', 'busybox', '--memory', '64', '--env', 'GREETING=hello']);
    assert.equal(c.code, 0, c.stderr);
    const id = lastLine(c.stdout);
    const ex = await cli(dataDir, ['sandbox', 'exec', id, '--', 'sh', '-c', 'echo $GREETING; echo oops >&2; exit 42']);
    assert.equal(ex.stdout, 'hello\n');
    assert.equal(ex.stderr, 'oops\n');
    assert.equal(ex.code, 42);
    const piped = await cli(dataDir, ['sandbox', 'exec', '-i', id, '--', 'sh', '-c', 'wc -l; exit 3'], {}, 'a\nb\nc\n');
    assert.equal(piped.stdout.trim(), '3', 'exec -i passes stdin through');
    assert.equal(piped.code, 3);
    const list = await cli(dataDir, ['sandbox', 'list']);
    assert.match(list.stdout, new RegExp(`${id}\\s+running`));
    assert.equal((await cli(dataDir, ['sandbox', 'pause', id])).code, 0);
    const refused = await cli(dataDir, ['sandbox', 'exec', id, '--', 'true']);
    assert.equal(refused.code, 4);
    assert.match(refused.stderr, /paused; resume it/);
    assert.equal((await cli(dataDir, ['sandbox', 'rm', id])).code, 0);
    const again = await cli(dataDir, ['sandbox', 'rm', id]);
    assert.equal(again.code, 3);
    assert.match(again.stderr, /not found/);
  });

  it('gives clear errors and non-zero exits for bad input', async () => {
    const t = await cli(dataDir, ['sandbox', 'create', '--template', 'nope']);
    assert.equal(t.code, 3);
    assert.match(t.stderr, /template 'nope' not found/);
    const mem = await cli(dataDir, ['sandbox', 'create', '--template', 'busybox', '--memory', 'lots']);
    assert.notEqual(mem.code, 0);
    assert.match(mem.stderr, /--memory must be a number/);
    const add = await cli(dataDir, ['template', 'add', 'busybox', '/tmp']);
    assert.equal(add.code, 4);
    assert.match(add.stderr, /already exists/);
    const tar = await cli(dataDir, ['template', 'add', 'broken', '/etc/hostname']);
    assert.equal(tar.code, 2);
    assert.match(tar.stderr, /cannot extract/);
    const pause = await cli(dataDir, ['sandbox', 'pause', 'abc']);
    assert.equal(pause.code, 3);
    const inUse = await cli(dataDir, ['sandbox', 'create', '--template', 'busybox']);
    const rmT = await cli(dataDir, ['template', 'rm', 'busybox']);
    assert.equal(rmT.code, 4);
    assert.match(rmT.stderr, /used by 1 sandbox/);
    assert.equal((await cli(dataDir, ['sandbox', 'rm', lastLine(inUse.stdout)])).code, 0);
  });

  it('resolves templates by alias and name:tag', async () => {
    assert.equal((await cli(dataDir, ['template', 'alias', 'busybox', 'bb'])).code, 0);
    assert.equal((await cli(dataDir, ['template', 'tag', 'busybox', 'v1'])).code, 0);
    for (const ref of ['bb', 'busybox:latest', 'busybox:v1', 'bb:v1']) {
      const c = await cli(dataDir, ['sandbox', 'create', '--template', ref]);
      assert.equal(c.code, 0, `${ref}: ${c.stderr}`);
      assert.equal((await cli(dataDir, ['sandbox', 'rm', lastLine(c.stdout)])).code, 0);
    }
    const missing = await cli(dataDir, ['sandbox', 'create', '--template', 'busybox:v2']);
    assert.equal(missing.code, 3);
    assert.match((await cli(dataDir, ['template', 'list'])).stdout, /also: bb, busybox:v1/);
    const taken = await cli(dataDir, ['template', 'alias', 'busybox', 'busybox']);
    assert.equal(taken.code, 4);
  });

  it('registers a tarball as a template', async () => {
    const src = newDataDir();
    try {
      execFileSync('sh', [
        '-c',
        `mkdir -p ${src}/root/bin && cp /bin/busybox ${src}/root/bin/ && ln -s busybox ${src}/root/bin/sh && ln -s busybox ${src}/root/bin/sleep && ln -s busybox ${src}/root/bin/cat && echo tarred > ${src}/root/marker && tar -C ${src}/root -czf ${src}/t.tgz .`,
      ]);
      assert.equal((await cli(dataDir, ['template', 'add', 'fromtar', `${src}/t.tgz`])).code, 0);
      const id = lastLine((await cli(dataDir, ['sandbox', 'create', '--template', 'fromtar'])).stdout);
      assert.equal((await cli(dataDir, ['sandbox', 'exec', id, '--', 'cat', '/marker'])).stdout, 'tarred\n');
      assert.equal((await cli(dataDir, ['sandbox', 'rm', id])).code, 0);
      assert.equal((await cli(dataDir, ['template', 'rm', 'fromtar'])).code, 0);
    } finally {
      execFileSync('rm', ['-rf', src]);
    }
  });

  it('concurrent CLI calls on one data directory queue behind a single manager', async () => {
    const results = await Promise.all(Array.from({ length: 4 }, () => cli(dataDir, ['sandbox', 'create', '--template', 'busybox'])));
    const ids = results.map((r) => {
      assert.equal(r.code, 0, r.stderr);
      return lastLine(r.stdout);
    });
    assert.equal(new Set(ids).size, 4);
    await Promise.all(ids.map((id) => cli(dataDir, ['sandbox', 'rm', id])));
  });
});

describe('cubebox doctor', () => {
  it('reports this host as it is', async () => {
    const r = await cli(newDataDirOnce(), ['doctor', '--json']);
    const report = JSON.parse(r.stdout) as HostReport;
    // independent evidence from the host
    const mountinfo = readFileSync('/proc/self/mountinfo', 'utf8');
    const rootIsV2 = / \/sys\/fs\/cgroup [^-]*- cgroup2 /.test(mountinfo);
    const unified = / \/sys\/fs\/cgroup\/unified [^-]*- cgroup2 /.test(mountinfo);
    const expected = rootIsV2 ? 'v2' : unified ? 'hybrid' : 'v1';
    assert.equal(report.cgroupMode, expected);
    assert.equal(detectCgroupMode(), expected);
    const crun = report.runtimes.find((x) => x.name === 'crun')!;
    assert.equal(crun.works, true, crun.detail);
    assert.equal(crun.needsWrapper, expected === 'hybrid', crun.detail);
    const criuBin = ['/usr/sbin/criu', '/usr/bin/criu'].find((p) => existsSync(p));
    let criuOk = false;
    if (criuBin) {
      try {
        execFileSync(criuBin, ['check'], { stdio: 'ignore' });
        criuOk = true;
      } catch {
        criuOk = false;
      }
    }
    assert.equal(report.criu.usable, criuOk, report.criu.detail);
    assert.equal(report.ready, true);
    assert.equal(r.code, 0);
    const text = await cli(newDataDirOnce(), ['doctor']);
    assert.match(text.stdout, new RegExp(`cgroups\\s+${expected}`));
  });
});

let scratch: string | undefined;
/** doctor needs no data directory; hand it one path that is never created. */
function newDataDirOnce(): string {
  scratch ??= '/var/tmp/cubebox-doctor-never-created';
  return scratch;
}

describe('states with deadlines', () => {
  it('a pause or resume interrupted by a crash settles to what the host shows', async () => {
    const { newInstance, destroyInstance } = await import('../helpers/instance.js');
    const m = await newInstance();
    try {
      const a = await m.create({ template: 'busybox' });
      const b = await m.create({ template: 'busybox' });
      await m.pause(b.id);
      // as if the manager died between the state write and the runtime call
      m.store.updateSandbox(a.id, { state: 'pausing', stateDeadline: Date.now() - 1 });
      m.store.updateSandbox(b.id, { state: 'resuming', stateDeadline: Date.now() - 1 });
      await m.reconcile();
      assert.equal(m.get(a.id).state, 'running');
      assert.equal(m.get(b.id).state, 'paused');
      // a create that outlived its deadline is torn down
      const c = await m.create({ template: 'busybox' });
      m.store.updateSandbox(c.id, { state: 'creating', stateDeadline: Date.now() - 1 });
      await m.reconcile();
      assert.throws(() => m.get(c.id), /not found/);
    } finally {
      await destroyInstance(m);
    }
  });
});
