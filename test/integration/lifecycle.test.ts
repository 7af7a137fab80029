import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readdirSync, readFileSync, statfsSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import type { SandboxManager } from '../../src/sandbox/manager.js';
import { CubeboxError } from '../../src/util/errors.js';
import { assertNoSandboxLeaks, destroyInstance, execIn, instanceLeaks, newInstance } from '../helpers/instance.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Whether a PID names a live (non-zombie) process. */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

/** Waits for killed processes to be gone; zombies awaiting their reaper do not count. */
async function waitGone(pids: number[]): Promise<void> {
  for (let i = 0; i < 100 && pids.some(alive); i++) await sleep(20);
  assert.deepEqual(pids.filter(alive), [], 'processes survived the delete');
}

async function rejectsKind(p: Promise<unknown>, kind: string, re?: RegExp): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof CubeboxError, `expected a CubeboxError, got ${String(err)}`);
    assert.equal(err.kind, kind, err.message);
    if (re) assert.match(err.message, re);
    return true;
  });
}

describe('sandbox lifecycle (real runtime)', () => {
  let m: SandboxManager;
  before(async () => {
    m = await newInstance();
  });
  after(async () => {
    await destroyInstance(m);
  });

  it('create -> exec -> pause -> exec refused -> resume -> exec -> delete leaves nothing', async () => {
    const sbx = await m.create({ template: 'busybox' });
    assert.match(sbx.id, /^[a-z0-9]{20}$/);
    assert.equal(sbx.state, 'running');

    const r = await execIn(m, sbx.id, ['sh', '-c', 'echo out; echo err >&2; exit 7']);
    assert.equal(r.stdout, 'out\n');
    assert.equal(r.stderr, 'err\n');
    assert.equal(r.code, 7);

    await m.pause(sbx.id);
    assert.equal(m.get(sbx.id).state, 'paused');
    await rejectsKind(m.exec(sbx.id, ['true']), 'conflict', /paused/);
    await rejectsKind(m.pause(sbx.id), 'conflict', /already paused/);

    await m.resume(sbx.id);
    assert.equal(m.get(sbx.id).state, 'running');
    assert.equal((await execIn(m, sbx.id, ['echo', 'back'])).stdout, 'back\n');
    await rejectsKind(m.resume(sbx.id), 'conflict', /already running/);

    await m.delete(sbx.id);
    assertNoSandboxLeaks(m.paths, sbx.id);
    await rejectsKind(m.delete(sbx.id), 'not_found');
    await rejectsKind(m.exec(sbx.id, ['true']), 'not_found');
  });

  it('deletes a paused sandbox completely (the headline case)', async () => {
    const sbx = await m.create({ template: 'busybox' });
    // a few busy processes, so that the frozen tree is more than PID 1
    await execIn(m, sbx.id, ['sh', '-c', 'for i in 1 2 3 4 5; do (while :; do :; done) >/dev/null 2>&1 & done']);
    await m.pause(sbx.id);
    const pids = m.cgroup(sbx.id).pids();
    assert.ok(pids.length >= 7, `expected tini, sleep and 5 loops in the cgroup, saw ${pids.length}`);
    await m.delete(sbx.id);
    assertNoSandboxLeaks(m.paths, sbx.id);
    await waitGone(pids);
  });

  it('deletes a sandbox whose main process was OOM-killed', async () => {
    const sbx = await m.create({
      template: 'busybox',
      limits: { memoryMB: 32 },
      command: ['/bin/sh', '-c', 'sleep 1; awk \'BEGIN { s = "x"; while (1) s = s s }\''],
    });
    for (let i = 0; i < 200 && (await m.reconcile(), m.get(sbx.id).state) === 'running'; i++) await sleep(100);
    assert.equal(m.get(sbx.id).state, 'stopped', 'the OOM kill should stop the sandbox');
    await m.delete(sbx.id);
    assertNoSandboxLeaks(m.paths, sbx.id);
  });

  it('deletes a sandbox whose PID 1 exited', async () => {
    const sbx = await m.create({ template: 'busybox' });
    await execIn(m, sbx.id, ['kill', '2']); // the main process: tini exits with it
    for (let i = 0; i < 100 && (await m.reconcile(), m.get(sbx.id).state) === 'running'; i++) await sleep(50);
    assert.equal(m.get(sbx.id).state, 'stopped');
    await rejectsKind(m.exec(sbx.id, ['true']), 'conflict', /stopped/);
    await m.delete(sbx.id);
    assertNoSandboxLeaks(m.paths, sbx.id);
  });

  it('never signals a stale stored PID: an innocent process survives every teardown path', async () => {
    const innocent = spawn('sleep', ['600'], { stdio: 'ignore' });
    try {
      const paths: Array<(id: string) => Promise<void>> = [
        async () => undefined, // running
        async (id) => void (await m.pause(id)), // paused
        async (id) => {
          await execIn(m, id, ['kill', '2']); // PID 1 exited
          for (let i = 0; i < 100 && (await m.reconcile(), m.get(id).state) === 'running'; i++) await sleep(50);
        },
        async (id) => m.store.updateSandbox(id, { state: 'deleting' }), // interrupted delete, finished by the reconciler
      ];
      for (const [i, prepare] of paths.entries()) {
        const sbx = await m.create({ template: 'busybox' });
        await prepare(sbx.id);
        m.store.updateSandbox(sbx.id, { pid: innocent.pid! });
        if (i === 3) await m.reconcile();
        else await m.delete(sbx.id);
        assertNoSandboxLeaks(m.paths, sbx.id);
        assert.doesNotThrow(() => process.kill(innocent.pid!, 0), `the innocent process died on teardown path ${i}`);
      }
    } finally {
      innocent.kill('SIGKILL');
    }
  });

  it('serializes concurrent pause/resume/delete storms on one sandbox', async () => {
    for (let round = 0; round < 3; round++) {
      const sbx = await m.create({ template: 'busybox' });
      const ops: Promise<unknown>[] = [];
      for (let i = 0; i < 24; i++) {
        const op = i % 3 === 0 ? m.pause(sbx.id) : i % 3 === 1 ? m.resume(sbx.id) : i === 14 + 3 * round ? m.delete(sbx.id) : execIn(m, sbx.id, ['true']);
        ops.push(op);
      }
      const results = await Promise.allSettled(ops);
      for (const r of results) {
        if (r.status === 'rejected') assert.ok(r.reason instanceof CubeboxError && ['conflict', 'not_found'].includes(r.reason.kind), String(r.reason));
      }
      // the delete was queued behind earlier operations and everything after it saw not_found
      assert.throws(() => m.get(sbx.id), /not found/);
      assertNoSandboxLeaks(m.paths, sbx.id);
    }
    // and without a delete, the stored state always matches the host
    const sbx = await m.create({ template: 'busybox' });
    await Promise.allSettled(Array.from({ length: 30 }, (_, i) => (i % 2 ? m.pause(sbx.id) : m.resume(sbx.id))));
    const st = await m.runtime.state(m.containerId(sbx.id));
    assert.equal(st?.status, m.get(sbx.id).state);
    await m.delete(sbx.id);
    assertNoSandboxLeaks(m.paths, sbx.id);
  });

  it('200 create/pause/delete cycles leave no leaks and a stable open-file count', async () => {
    const fds = () => readdirSync('/proc/self/fd').length;
    // warm up lazily opened handles (statements, the seccomp profile) before counting
    for (let i = 0; i < 3; i++) {
      const s = await m.create({ template: 'busybox' });
      await m.pause(s.id);
      await m.delete(s.id);
    }
    const before = fds();
    for (let i = 0; i < 200; i++) {
      const s = await m.create({ template: 'busybox' });
      await m.pause(s.id);
      await m.delete(s.id);
      if (i % 50 === 0) assertNoSandboxLeaks(m.paths, s.id);
    }
    const afterCount = fds();
    assert.ok(afterCount <= before + 2, `open files grew from ${before} to ${afterCount}`);
    assert.equal(m.list().length, 0);
    assert.equal(readdirSync(m.paths.sandboxesDir).length, 0);
    // network namespaces, veth links, nft chains, slot rows and flow entries included
    assert.deepEqual(instanceLeaks(m.paths), []);
  });
});

describe('limits and isolation', () => {
  let m: SandboxManager;
  before(async () => {
    m = await newInstance();
  });
  after(async () => {
    await destroyInstance(m);
  });

  it('a fork bomb hits the pids limit', async () => {
    const sbx = await m.create({ template: 'busybox', limits: { pids: 32 } });
    const r = await execIn(m, sbx.id, ['sh', '-c', 'i=0; while [ $i -lt 100 ]; do sleep 30 >/dev/null 2>&1 & i=$((i+1)); done 2>/dev/null; ps | wc -l']);
    const procs = m.cgroup(sbx.id).pids().length;
    assert.ok(procs <= 32, `the sandbox has ${procs} processes despite pids=32`);
    assert.ok(Number(r.stdout.trim()) <= 34, `ps saw ${r.stdout.trim()} lines`);
    await m.delete(sbx.id);
    assertNoSandboxLeaks(m.paths, sbx.id);
  });

  it('a memory hog is OOM-killed inside its sandbox only', async () => {
    const sbx = await m.create({ template: 'busybox', limits: { memoryMB: 128 } });
    const r = await execIn(m, sbx.id, ['awk', 'BEGIN { s = "x"; while (1) s = s s }']);
    assert.equal(r.code, 137, `the hog should die of SIGKILL, got ${r.code}: ${r.stderr}`);
    assert.equal(m.get(sbx.id).state, 'running');
    assert.equal((await execIn(m, sbx.id, ['echo', 'alive'])).stdout, 'alive\n', 'the sandbox survives its OOM kill');
    await m.delete(sbx.id);
    assertNoSandboxLeaks(m.paths, sbx.id);
  });

  it('sandbox root cannot mknod, mount, or see host processes, and is unprivileged on the host', async () => {
    const sbx = await m.create({ template: 'busybox' });
    assert.notEqual((await execIn(m, sbx.id, ['mknod', '/tmp/null', 'c', '1', '3'])).code, 0, 'mknod must fail');
    assert.notEqual((await execIn(m, sbx.id, ['mount', '-t', 'tmpfs', 'none', '/mnt'])).code, 0, 'mount must fail');
    const ps = await execIn(m, sbx.id, ['sh', '-c', 'ls /proc | grep -c "^[0-9]"']);
    assert.ok(Number(ps.stdout.trim()) < 10, `the sandbox sees ${ps.stdout.trim()} processes`);
    const map = (await execIn(m, sbx.id, ['cat', '/proc/self/uid_map'])).stdout.trim().split(/\s+/).map(Number);
    assert.equal(map[0], 0);
    assert.ok(map[1]! >= 2 ** 31, `sandbox root must map to an unprivileged host uid, got ${map[1]}`);
    // root of the sandbox can still write its own root filesystem
    assert.equal((await execIn(m, sbx.id, ['sh', '-c', 'echo hi > /etc/motd && cat /etc/motd'])).stdout, 'hi\n');
    // and the host sees those files owned by the unprivileged range, not by root
    const hostUid = map[1]!;
    const st = (await import('node:fs')).statSync(`${m.sandboxDir(sbx.id)}/disk/upper/etc/motd`);
    assert.equal(st.uid, hostUid);
    await m.delete(sbx.id);
    assertNoSandboxLeaks(m.paths, sbx.id);
  });

  it('a sandbox has its loopback and its own link only: host services are out of reach', async () => {
    const net = await import('node:net');
    const server = net.createServer((c) => c.end('host service\n'));
    await new Promise<void>((r) => server.listen(0, '0.0.0.0', () => r()));
    const port = (server.address() as { port: number }).port;
    try {
      const sbx = await m.create({ template: 'busybox' });
      const links = await execIn(m, sbx.id, ['sh', '-c', "ip -o link | awk -F': ' '{print $2}' | cut -d@ -f1 | sort | tr '\\n' ' '"]);
      assert.equal(links.stdout.trim(), 'eth0 lo');
      assert.equal((await execIn(m, sbx.id, ['sh', '-c', 'ls /sys/class/net | wc -l'])).stdout.trim(), '0', "the host's network devices are masked");
      const gateway = m.network()!.lease(sbx.id)!.gateway;
      for (const addr of ['127.0.0.1', gateway]) {
        const reach = await execIn(m, sbx.id, ['sh', '-c', `nc -w 2 ${addr} ${port} </dev/null; echo rc=$?`]);
        assert.ok(!reach.stdout.includes('host service'), `the host service answered inside the sandbox at ${addr}`);
      }
      await m.delete(sbx.id);
      assertNoSandboxLeaks(m.paths, sbx.id);
    } finally {
      server.close();
    }
  });

  it('refuses bad input clearly and changes nothing', async () => {
    await rejectsKind(m.create({ template: 'no-such-template' }), 'not_found', /template 'no-such-template' not found/);
    await rejectsKind(m.create({ template: 'busybox', limits: { memoryMB: 1 } }), 'invalid_argument', /memory/);
    await rejectsKind(m.create({ template: 'busybox', limits: { pids: 2.5 } }), 'invalid_argument', /pids/);
    await rejectsKind(m.pause('doesnotexist'), 'not_found');
    await rejectsKind(m.delete('../../etc'), 'not_found');
    await rejectsKind(m.templates.add('Bad Name', '/tmp'), 'invalid_argument', /bad template name/);
    await rejectsKind(m.templates.add('x', '/nonexistent/dir'), 'invalid_argument', /does not exist/);
    assert.equal(m.list().length, 0);
  });
});

describe('sandbox disks', () => {
  let m: SandboxManager;
  before(async () => {
    m = await newInstance();
    await m.templates.addBusybox('small-disk', { diskSizeMB: 64 });
  });
  after(async () => {
    await destroyInstance(m);
  });

  it('a sandbox writing past its disk size gets ENOSPC and the host loses at most that size', async () => {
    const sbx = await m.create({ template: 'small-disk' });
    const freeBefore = statfsSync(m.paths.dataDir);
    const r = await execIn(m, sbx.id, ['sh', '-c', 'dd if=/dev/zero of=/big bs=1M count=200 2>&1; sync']);
    assert.match(r.stdout, /No space left on device/);
    const df = await execIn(m, sbx.id, ['sh', '-c', 'ls -l /big']);
    const written = Number(df.stdout.trim().split(/\s+/)[4]);
    assert.ok(written > 40 * 1024 * 1024 && written <= 64 * 1024 * 1024, `wrote ${written} bytes into a 64 MB disk`);
    const freeAfter = statfsSync(m.paths.dataDir);
    const lost = (freeBefore.bavail - freeAfter.bavail) * freeBefore.bsize;
    assert.ok(lost < 64 * 1024 * 1024 + 16 * 1024 * 1024, `the host lost ${lost} bytes for a 64 MB sandbox disk`);
    // the sandbox still works, and can free space again
    assert.equal((await execIn(m, sbx.id, ['sh', '-c', 'rm /big && echo freed'])).stdout, 'freed\n');
    await m.delete(sbx.id);
    assertNoSandboxLeaks(m.paths, sbx.id);
  });
});

describe('several instances on one host', () => {
  it("one instance's reconciler never touches another's sandboxes", async () => {
    const a = await newInstance();
    const b = await newInstance();
    try {
      assert.notEqual(a.paths.instanceId, b.paths.instanceId);
      const sa = await a.create({ template: 'busybox' });
      const sb = await b.create({ template: 'busybox' });
      await b.pause(sb.id);
      // names carry the instance: an operator can tell whose a resource is
      assert.ok(
        a
          .cgroup(sa.id)
          .existing()
          .every((d) => d.includes(`/cubebox-${a.paths.instanceId}/`)),
      );
      assert.ok(b.containerId(sb.id).startsWith(`cubebox-${b.paths.instanceId}-`));
      const report = await a.reconcile({ startup: true });
      assert.deepEqual(report.orphansRemoved, []);
      assert.deepEqual(report.tornDown, []);
      assert.equal((await b.runtime.state(b.containerId(sb.id)))?.status, 'paused');
      await b.resume(sb.id);
      assert.equal((await execIn(b, sb.id, ['echo', 'b-alive'])).stdout, 'b-alive\n');
      assert.equal((await execIn(a, sa.id, ['echo', 'a-alive'])).stdout, 'a-alive\n');
    } finally {
      await destroyInstance(a);
      await destroyInstance(b);
    }
  });
});

describe('warm pool', () => {
  it('hands out prepared sandboxes, refills, and gives them back when the pool shrinks', async () => {
    const m = await newInstance();
    try {
      const pooled = () => m.list().filter((s) => s.state === 'pooled');
      m.setPool({ busybox: 2 });
      for (let i = 0; i < 600 && pooled().length < 2; i++) await sleep(50);
      const ready = pooled().map((s) => s.id);
      assert.equal(ready.length, 2);
      const sbx = await m.create({ template: 'busybox', metadata: { who: 'first' }, envVars: { X: '1' } });
      assert.ok(ready.includes(sbx.id), 'the create claimed a prepared sandbox');
      assert.equal(sbx.state, 'running');
      assert.deepEqual(m.get(sbx.id).metadata, { who: 'first' });
      for (let i = 0; i < 600 && pooled().length < 2; i++) await sleep(50);
      assert.equal(pooled().length, 2, 'the pool refills');
      // a request that changes how the sandbox is built is not served from the pool
      const custom = await m.create({ template: 'busybox', limits: { memoryMB: 256 } });
      assert.ok(!ready.includes(custom.id));
      // a template with pooled sandboxes (and no user's) can be deleted: the pool gives them back
      await m.templates.addBusybox('short-lived');
      m.setPool({ busybox: 2, 'short-lived': 1 });
      for (let i = 0; i < 600 && !pooled().some((s) => s.templateId === m.templates.get('short-lived').id); i++) await sleep(50);
      await m.removeTemplate('short-lived');
      assert.equal(m.templates.find('short-lived'), undefined);
      m.setPool({});
      // the pool's own sandboxes go (a refill in flight finishes first, then goes too)
      for (let i = 0; i < 400 && m.list().length > 2; i++) await sleep(50);
      assert.deepEqual(
        m
          .list()
          .map((s) => s.id)
          .sort(),
        [sbx.id, custom.id].sort(),
        'an emptied pool gives its sandboxes back',
      );
      for (const id of ready) if (id !== sbx.id) assertNoSandboxLeaks(m.paths, id);
    } finally {
      await destroyInstance(m);
    }
  });
});
