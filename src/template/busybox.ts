import { chmodSync, chownSync, copyFileSync, existsSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runOk } from '../util/exec.js';

/** Writes a tiny root filesystem of busybox-static into dir: sh and the usual applets, root and `user` accounts. */
export async function fillBusybox(dir: string, busybox: string): Promise<void> {
  for (const d of ['bin', 'sbin', 'usr/bin', 'usr/sbin', 'etc', 'proc', 'sys', 'dev', 'root', 'home/user', 'tmp', 'var/tmp', 'run']) {
    mkdirSync(join(dir, d), { recursive: true });
  }
  chmodSync(join(dir, 'tmp'), 0o1777);
  chmodSync(join(dir, 'var/tmp'), 0o1777);
  chmodSync(join(dir, 'root'), 0o700);
  copyFileSync(busybox, join(dir, 'bin/busybox'));
  chmodSync(join(dir, 'bin/busybox'), 0o755);
  const list = await runOk(busybox, ['--list-full']);
  for (const applet of list.split('\n').filter(Boolean)) {
    const target = join(dir, applet);
    if (applet === 'bin/busybox' || existsSync(target)) continue;
    const depth = applet.split('/').length - 1;
    symlinkSync('../'.repeat(depth) + 'bin/busybox', target);
  }
  writeFileSync(join(dir, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n');
  writeFileSync(join(dir, 'etc/group'), 'root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n');
  writeFileSync(join(dir, 'etc/hosts'), '127.0.0.1 localhost\n::1 localhost\n');
  // The E2B SDK runs every command as `/bin/bash -l -c`: busybox's ash takes the same flags.
  writeFileSync(join(dir, 'bin/bash'), '#!/bin/sh\nexec /bin/sh "$@"\n', { mode: 0o755 });
  chownSync(join(dir, 'home/user'), 1000, 1000);
}
