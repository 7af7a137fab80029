import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { childrenCpuMs, CpuAccount, kindOf } from '../../src/bench/cpu-account.js';
import { run } from '../../src/util/exec.js';
import { faultPoint } from '../../src/util/fault.js';

describe('the bench CPU account', () => {
  it('names a spawn by its program, the runtime verb (also through the helper) and the object of ip', () => {
    assert.equal(
      kindOf('/usr/lib/cubebox/cubebox-helper', ['run-runtime', '--oom-score-adj', '300', '/usr/bin/crun', '--root', '/run/x', 'run', '--detach', 'c1']),
      'crun run (via cubebox-helper)',
    );
    assert.equal(kindOf('/usr/bin/runc', ['--root', '/run/x', 'delete', '--force', 'c1']), 'runc delete');
    assert.equal(kindOf('ip', ['-n', 'ns1', 'link', 'set', 'lo', 'up']), 'ip link');
    assert.equal(kindOf('nft', ['-f', '-']), 'nft');
  });

  it("charges every reaped child's CPU to its kind, all of it, and splits the JS by the phases passed", async () => {
    const acc = new CpuAccount();
    try {
      acc.take();
      const before = childrenCpuMs();
      for (let i = 0; i < 3; i++) await run('/bin/sh', ['-c', 'i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done']);
      faultPoint('create:after-dir');
      await run('/bin/true', []);
      acc.endPhase('last');
      const w = acc.take();
      assert.equal(w.kinds.get('sh')?.count, 3);
      assert.equal(w.kinds.get('true')?.count, 1);
      assert.equal(acc.live, 0);
      // what the children used, as the kernel counts it, is all charged to the kinds (10 ms ticks)
      const sum = [...w.kinds.values()].reduce((a, k) => a + k.cpuMs, 0) + w.unattributedMs;
      assert.equal(w.childrenMs, childrenCpuMs() - before);
      assert.ok(Math.abs(sum - w.childrenMs) < 1e-6, `${sum} vs ${w.childrenMs}`);
      assert.ok(w.kinds.get('sh')!.cpuMs > 0, 'the busy shells used some CPU');
      assert.deepEqual([...w.phases.keys()], ['row + directory', 'last']);
      assert.equal(w.phases.get('row + directory')!.childrenMs + w.phases.get('last')!.childrenMs, w.childrenMs);
    } finally {
      acc.close();
    }
  });
});
