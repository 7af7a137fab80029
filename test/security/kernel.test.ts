// Kernel attack surface: inside real sandboxes, the syscalls that most
// kernel privilege escalations start with are refused the way Docker's default profile
// refuses them, and a template that allows nested containers gets user namespaces back.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import type { RuntimeName } from '../../src/runtime/registry.js';
import type { SandboxManager } from '../../src/sandbox/manager.js';
import { assertNoSandboxLeaks, cli, destroyInstance, newInstance } from '../helpers/instance.js';
import { buildProbe, installProbe, probe, sh } from './helpers.js';

/** op -> the errno the sandbox must get. EPERM as if CAP_SYS_ADMIN were missing; clone3 ENOSYS so libc falls back to clone. */
const REFUSED: Record<string, string> = {
  'unshare-user': 'EPERM',
  'unshare-user-mount': 'EPERM', // unshare -Urm, then mount -t tmpfs
  'unshare-net': 'EPERM',
  'unshare-time': 'EPERM',
  'clone-newuser': 'EPERM',
  'clone-newns': 'EPERM',
  'clone3-newuser': 'ENOSYS',
  // the probe passes arguments the kernel itself would answer with EFAULT/EINVAL/EBADF:
  // EPERM here means the filter, not a capability check, stopped the call
  mount: 'EPERM',
  umount2: 'EPERM',
  setns: 'EPERM',
  'pivot-root': 'EPERM',
  keyctl: 'EPERM',
  'add-key': 'EPERM',
  'request-key': 'EPERM',
  bpf: 'EPERM',
  'perf-event-open': 'EPERM',
  userfaultfd: 'EPERM',
  fsopen: 'EPERM',
  'open-tree': 'EPERM',
};
/** What nested containers get back (the keyring, bpf and perf stay refused). */
const NESTED_ALLOWED = ['unshare-user', 'unshare-user-mount', 'clone-newuser', 'clone3-newuser'];
const NESTED_REFUSED = ['keyctl', 'add-key', 'bpf', 'perf-event-open', 'userfaultfd'];

let binary: Buffer;
let cleanupProbe: () => void;
before(() => {
  ({ binary, cleanup: cleanupProbe } = buildProbe());
});
after(() => cleanupProbe?.());

for (const runtime of ['crun', 'runc'] as RuntimeName[]) {
  describe(`kernel attack surface (${runtime})`, () => {
    let m: SandboxManager;
    let plain: string;
    let nested: string;
    before(async () => {
      m = await newInstance({ runtime });
      await m.templates.addBusybox('busybox-nested', { nestedContainers: true });
      plain = (await m.create({ template: 'busybox' })).id;
      nested = (await m.create({ template: 'busybox-nested' })).id;
      await installProbe(m, plain, binary);
      await installProbe(m, nested, binary);
    });
    after(async () => {
      for (const id of [plain, nested]) {
        if (!id) continue;
        await m.delete(id);
        assertNoSandboxLeaks(m.paths, id);
      }
      await destroyInstance(m);
    });

    it('refuses namespaces, mounts, the keyring, bpf, perf and userfaultfd to sandbox root', async () => {
      const got: Record<string, string> = {};
      for (const op of Object.keys(REFUSED)) got[op] = await probe(m, plain, op);
      assert.deepEqual(got, REFUSED);
    });

    it('refuses them to an unprivileged user in the sandbox too', async () => {
      for (const op of ['unshare-user', 'unshare-user-mount', 'clone-newuser', 'keyctl']) assert.equal(await probe(m, plain, op, true), REFUSED[op], op);
    });

    it('the real tools fail: unshare -U, unshare -Urm, mount -t tmpfs', async () => {
      for (const cmd of ['unshare -U true', 'unshare -Urm true', 'mount -t tmpfs none /tmp', "su user -s /bin/sh -c 'unshare -Ur true'"]) {
        const r = await sh(m, plain, cmd);
        assert.notEqual(r.code, 0, `${cmd} succeeded: ${r.out}`);
        assert.match(r.out, /Operation not permitted|permission denied/i, cmd);
      }
    });

    it('still forks, spawns threads through clone and runs setuid programs', async () => {
      assert.equal(await probe(m, plain, 'clone-plain'), 'ok');
      assert.equal(await probe(m, plain, 'clone3-plain'), 'ENOSYS'); // what makes libc use clone
      assert.deepEqual(await sh(m, plain, 'echo a | (read x; echo $x-b) & wait'), { code: 0, out: 'a-b' });
      // sudo in templates needs setuid: the sandbox's root stays reachable for its users
      const r = await sh(m, plain, "cp /tmp/syscall-probe /tmp/suid && chmod 4755 /tmp/suid && su user -s /bin/sh -c '/tmp/suid ids'");
      assert.equal(r.out, 'uid=1000 euid=0');
    });

    it('a template with nestedContainers gets user namespaces and mounts in them, nothing more', async () => {
      for (const op of NESTED_ALLOWED) assert.equal(await probe(m, nested, op), 'ok', op);
      assert.equal(await probe(m, nested, 'unshare-user', true), 'ok');
      assert.deepEqual(await sh(m, nested, 'unshare -U true'), { code: 0, out: '' });
      for (const op of NESTED_REFUSED) assert.equal(await probe(m, nested, op), REFUSED[op], op);
      // no capability over the sandbox's own mounts comes with it
      assert.equal(await probe(m, nested, 'mount'), 'EFAULT'); // reaches the kernel now...
      assert.notEqual((await sh(m, nested, 'mount -t tmpfs none /tmp')).code, 0); // ...which refuses it
    });

    if (runtime === 'crun') {
      it('cubebox doctor names the templates that allow nested containers and warns about host settings', async () => {
        const r = await cli(m.paths.dataDir, ['doctor', '--json']);
        const report = JSON.parse(r.stdout) as {
          nestedTemplates?: string[];
          isolation: { name: string; ok: boolean; detail: string }[];
          runtimes: { name: string; works: boolean; userns?: boolean }[];
        };
        assert.deepEqual(report.nestedTemplates, ['busybox-nested']);
        const check = (name: string) => report.isolation.find((c) => c.name === name);
        assert.equal(check('nested containers')?.ok, false);
        assert.match(check('nested containers')!.detail, /busybox-nested/);
        // this host lets every user create user namespaces: doctor must say so
        const maxNs = Number(readFileSync('/proc/sys/user/max_user_namespaces', 'utf8'));
        assert.equal(check('unprivileged user namespaces')?.ok, !(maxNs > 0), check('unprivileged user namespaces')?.detail);
        assert.equal(check('seccomp profile')?.ok, true);
        for (const rt of report.runtimes.filter((x) => x.works && x.name !== 'runsc')) assert.equal(rt.userns, true, `${rt.name} in a user namespace`);
        const text = await cli(m.paths.dataDir, ['doctor']);
        assert.match(text.stdout, /warn {2}nested containers: allowed in template\(s\) busybox-nested/);
      });
    }
  });
}
