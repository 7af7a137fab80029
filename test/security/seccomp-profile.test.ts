// The converted profile itself: what the sandboxes' filter says about the syscalls that
// Docker gates on CAP_SYS_ADMIN, whatever the host's podman profile allows.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { describe, it } from 'node:test';
import { SANDBOX_CAPABILITIES } from '../../src/runtime/bundle.js';
import { DEFAULT_PROFILE, defaultSeccomp, type OciSeccomp } from '../../src/runtime/seccomp.js';

/** The actions a profile has for a syscall (with their argument filters). */
function rulesFor(p: OciSeccomp, name: string) {
  return p.syscalls.filter((r) => r.names.includes(name));
}

describe('seccomp profile', () => {
  it('exists on this host (doctor warns where it does not)', () => assert.ok(existsSync(DEFAULT_PROFILE)));

  const plain = defaultSeccomp(SANDBOX_CAPABILITIES)!;
  const nested = defaultSeccomp(SANDBOX_CAPABILITIES, { nestedContainers: true })!;

  it('never allows namespace, mount or keyring syscalls unconditionally without CAP_SYS_ADMIN', () => {
    for (const n of [
      'unshare',
      'setns',
      'mount',
      'umount2',
      'pivot_root',
      'fsopen',
      'open_tree',
      'move_mount',
      'keyctl',
      'add_key',
      'request_key',
      'bpf',
      'perf_event_open',
      'userfaultfd',
      'clone3',
    ]) {
      const rules = rulesFor(plain, n);
      assert.ok(rules.length > 0, `${n} has an explicit rule`);
      assert.ok(
        rules.every((r) => r.action === 'SCMP_ACT_ERRNO'),
        `${n}: ${JSON.stringify(rules)}`,
      );
    }
    assert.equal(rulesFor(plain, 'clone3')[0]!.errnoRet, 38, 'clone3 ENOSYS, so libc falls back to clone');
    const clone = rulesFor(plain, 'clone');
    const allow = clone.filter((r) => r.action === 'SCMP_ACT_ALLOW');
    assert.equal(allow.length, 1);
    assert.deepEqual(allow[0]!.args, [{ index: 0, value: 0x7e020000, valueTwo: 0, op: 'SCMP_CMP_MASKED_EQ' }]);
  });

  it('nested containers get namespaces and mounts, not the keyring, bpf or perf', () => {
    for (const n of ['unshare', 'setns', 'mount', 'umount2', 'clone', 'clone3'])
      assert.ok(
        rulesFor(nested, n).every((r) => r.action === 'SCMP_ACT_ALLOW' && !r.args),
        n,
      );
    for (const n of ['keyctl', 'add_key', 'bpf', 'perf_event_open', 'userfaultfd'])
      assert.ok(
        rulesFor(nested, n).every((r) => r.action === 'SCMP_ACT_ERRNO'),
        n,
      );
  });

  it('keeps the rest of the profile (a few everyday syscalls)', () => {
    for (const n of ['read', 'openat', 'execve', 'ptrace', 'personality'])
      assert.ok(
        rulesFor(plain, n).some((r) => r.action === 'SCMP_ACT_ALLOW'),
        n,
      );
  });
});
