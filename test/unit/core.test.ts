import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { buildConfig, SANDBOX_CAPABILITIES } from '../../src/runtime/bundle.js';
import { convertProfile } from '../../src/runtime/seccomp.js';
import { openIdRegion } from '../../src/sandbox/id-region.js';
import { idRegionBase } from '../../src/sandbox/manager.js';
import { randomId } from '../../src/util/ids.js';
import { KeyedMutex } from '../../src/util/lock.js';

describe('KeyedMutex', () => {
  it('runs operations on one key one at a time, in order, and other keys in parallel', async () => {
    const mu = new KeyedMutex();
    const log: string[] = [];
    const op = (key: string, name: string, ms: number) =>
      mu.run(key, async () => {
        log.push(`start ${name}`);
        await new Promise((r) => setTimeout(r, ms));
        log.push(`end ${name}`);
      });
    await Promise.all([op('a', 'a1', 30), op('a', 'a2', 1), op('b', 'b1', 1)]);
    assert.deepEqual(log.slice(0, 2), ['start a1', 'start b1']);
    assert.ok(log.indexOf('end a1') < log.indexOf('start a2'));
    assert.equal(mu.isLocked('a'), false);
  });

  it('releases the lock when an operation throws', async () => {
    const mu = new KeyedMutex();
    await assert.rejects(mu.run('k', async () => Promise.reject(new Error('boom'))));
    assert.equal(await mu.run('k', async () => 'next'), 'next');
  });
});

describe('seccomp profile conversion', () => {
  const profile = {
    defaultAction: 'SCMP_ACT_ERRNO',
    defaultErrnoRet: 38,
    archMap: [{ architecture: 'SCMP_ARCH_X86_64', subArchitectures: ['SCMP_ARCH_X86'] }],
    syscalls: [
      { names: ['read', 'write'], action: 'SCMP_ACT_ALLOW' },
      { names: ['arch_prctl'], action: 'SCMP_ACT_ALLOW', includes: { arches: ['amd64'] } },
      { names: ['set_tls'], action: 'SCMP_ACT_ALLOW', includes: { arches: ['arm'] } },
      { names: ['mount'], action: 'SCMP_ACT_ALLOW', includes: { caps: ['CAP_SYS_ADMIN'] } },
      { names: ['chown'], action: 'SCMP_ACT_ALLOW', includes: { caps: ['CAP_CHOWN'] } },
      { names: ['ptrace'], action: 'SCMP_ACT_ERRNO', errnoRet: 1, excludes: { caps: ['CAP_SYS_PTRACE'] } },
    ],
  };
  it('keeps the rules for this architecture and the capabilities sandboxes have', () => {
    const out = convertProfile(profile, SANDBOX_CAPABILITIES, 'x64');
    const names = out.syscalls.flatMap((s) => s.names);
    assert.deepEqual(names, ['read', 'write', 'arch_prctl', 'chown', 'ptrace']);
    assert.deepEqual(out.architectures, ['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86']);
    assert.equal(out.defaultErrnoRet, 38);
    assert.equal(out.syscalls.find((s) => s.names[0] === 'ptrace')?.errnoRet, 1);
  });
});

describe('OCI config', () => {
  const config = buildConfig({
    runtime: 'crun',
    hostname: 'sbx',
    rootfs: '/r',
    command: ['/bin/envd'],
    env: ['PATH=/bin'],
    cwd: '/',
    idMap: { hostId: 2 ** 31, size: 65536 },
    limits: { memoryMB: 512, cpuCount: 1.5, pids: 100 },
    binds: [{ source: '/support', destination: '/.cubebox', readonly: true }],
    cgroupsPath: '/cubebox-i/sbx',
    tiniPath: '/.cubebox/tini',
  }) as Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
  it('has secure defaults', () => {
    const ns = config.linux.namespaces.map((n: { type: string }) => n.type).sort();
    assert.deepEqual(ns, ['cgroup', 'ipc', 'mount', 'network', 'pid', 'user', 'uts']);
    assert.deepEqual(config.linux.uidMappings, [{ containerID: 0, hostID: 2 ** 31, size: 65536 }]);
    assert.ok(!config.process.capabilities.bounding.includes('CAP_SYS_ADMIN'));
    assert.ok(!config.process.capabilities.bounding.includes('CAP_MKNOD'));
    assert.ok(!config.process.capabilities.bounding.includes('CAP_NET_RAW'));
    assert.ok(config.linux.maskedPaths.includes('/proc/kcore'));
    assert.ok(config.linux.readonlyPaths.includes('/proc/sys'));
    assert.equal(config.linux.resources.memory.limit, 512 * 1024 * 1024);
    assert.equal(config.linux.resources.cpu.quota, 150000);
    assert.equal(config.linux.resources.pids.limit, 100);
    assert.deepEqual(config.process.args.slice(0, 2), ['/.cubebox/tini', '-s']);
    const bind = config.mounts.find((m: { destination: string }) => m.destination === '/.cubebox');
    assert.ok(bind.options.includes('ro') && bind.options.includes('nosuid'));
    // no host path is mounted but what cubebox injects
    const binds = config.mounts.filter((m: { type: string }) => m.type === 'bind');
    assert.equal(binds.length, 1);
  });
});

describe('ids', () => {
  it('sandbox ids are 20 [a-z0-9]', () => {
    for (let i = 0; i < 100; i++) assert.match(randomId(), /^[a-z0-9]{20}$/);
  });
  it('instance id regions are unprivileged and inside the 32-bit id space', () => {
    for (const inst of ['aaaaaaaa', 'zzzzzzzz', '12345678', 'q1w2e3r4']) {
      for (const slots of [512, 1024]) {
        const base = idRegionBase(inst, slots);
        assert.ok(base >= 2 ** 31);
        assert.ok(base + slots * 65536 <= 2 ** 32 - 1);
      }
    }
  });
});

describe('id region of an instance', () => {
  it('a new instance gets 1024 slots; one that already had sandboxes keeps its 512-slot region; the record is kept and checked', () => {
    const dir = mkdtempSync(join(tmpdir(), 'cubebox-idregion-'));
    try {
      const fresh = openIdRegion(dir, 'abcdefgh', false);
      assert.deepEqual(fresh, { base: idRegionBase('abcdefgh', 1024), slots: 1024 });
      assert.deepEqual(openIdRegion(dir, 'abcdefgh', true), fresh, 'read back, whatever the store holds now');
      rmSync(join(dir, 'id-region'));
      const legacy = openIdRegion(dir, 'abcdefgh', true);
      // the region instances were given before: 2^31 + (hash % 63) * 512 blocks
      const region = createHash('sha256').update('abcdefgh').digest().readUInt32BE(0) % 63;
      assert.deepEqual(legacy, { base: 2 ** 31 + region * 512 * 65536, slots: 512 });
      writeFileSync(join(dir, 'id-region'), JSON.stringify({ base: 5, slots: 1024 }));
      assert.throws(() => openIdRegion(dir, 'abcdefgh', false), /does not hold an id region/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
