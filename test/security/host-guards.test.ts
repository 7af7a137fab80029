// Host-wide guards: all of an instance's sandboxes together stay inside a
// pids budget (fork bombs in many sandboxes cannot exhaust the host's pid_max), and they
// weigh less than the host's own work for CPU and block IO. Per sandbox, no CPU quota is the
// whole host.
import assert from 'node:assert/strict';
import { availableParallelism } from 'node:os';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { naming } from '../../src/config.js';
import type { SandboxManager } from '../../src/sandbox/manager.js';
import { destroyInstance, newInstance } from '../helpers/instance.js';
import { sh } from './helpers.js';

const BUDGET = 120;

describe('host-wide guards', { timeout: 300_000 }, () => {
  let m: SandboxManager;
  before(async () => {
    process.env.CUBEBOX_SANDBOX_PIDS_BUDGET = String(BUDGET);
    try {
      m = await newInstance();
    } finally {
      delete process.env.CUBEBOX_SANDBOX_PIDS_BUDGET;
    }
  });
  after(async () => destroyInstance(m));

  it('fork bombs in two sandboxes together stop at the pids budget, below each sandbox own limit', async () => {
    const a = await m.create({ template: 'busybox', agent: false, limits: { pids: 1000 } });
    const b = await m.create({ template: 'busybox', agent: false, limits: { pids: 1000 } });
    const parent = naming.cgroupParent(m.paths.instanceId);
    const pidsMax = join('/sys/fs/cgroup', m.cgroupMode === 'v2' ? '' : 'pids', parent, 'pids.max');
    assert.equal(readFileSync(pidsMax, 'utf8').trim(), String(BUDGET));
    // each tries 100 long-lived processes: 200 would fit each sandbox's own limit, not the budget
    const bomb = 'i=0; while [ $i -lt 100 ]; do sleep 600 </dev/null >/dev/null 2>&1 & i=$((i+1)); done 2>/dev/null; echo started';
    await Promise.all([sh(m, a.id, bomb), sh(m, b.id, bomb)]);
    const total = m.cgroup(a.id).pids().length + m.cgroup(b.id).pids().length;
    assert.ok(total <= BUDGET, `${total} processes, budget ${BUDGET}`);
    assert.ok(total >= BUDGET - 10, `the budget, not something else, stopped them: ${total}`);
    await m.delete(a.id);
    await m.delete(b.id);
  });

  it("the sandboxes weigh less than the host's own work, and no sandbox gets every CPU", async () => {
    const s = await m.create({ template: 'busybox', agent: false, limits: { cpuCount: availableParallelism() } });
    const parent = naming.cgroupParent(m.paths.instanceId);
    if (m.cgroupMode !== 'v2') {
      assert.equal(readFileSync(join('/sys/fs/cgroup/cpu', parent, 'cpu.shares'), 'utf8').trim(), '512');
      const quota = Number(readFileSync(join('/sys/fs/cgroup/cpu', parent, s.id, 'cpu.cfs_quota_us'), 'utf8'));
      assert.ok(quota > 0 && quota < availableParallelism() * 100_000, `quota ${quota}`);
    } else {
      assert.equal(readFileSync(join('/sys/fs/cgroup', parent, 'cpu.weight'), 'utf8').trim(), '50');
      const [quota] = readFileSync(join('/sys/fs/cgroup', parent, s.id, 'cpu.max'), 'utf8')
        .trim()
        .split(' ');
      assert.ok(quota !== 'max' && Number(quota) < availableParallelism() * 100_000, `cpu.max ${quota}`);
    }
    await m.delete(s.id);
  });
});
