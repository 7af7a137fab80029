// Makes a debootstrapped tree into `base`: the user and passwordless sudo, the recipe's
// files, PATH for login shells, and no caches, documentation, logs or device nodes.
import fs from 'node:fs/promises';
import path from 'node:path';
import { CubeboxError } from '../../util/errors.js';
import { checkAborted, emptyDir, exists, runCapture, tail, type Ctx } from './exec.js';
import { BASE_USER, FILES, FULL_PATH } from './recipe.js';

/** Makes the debootstrapped tree into `base`. */
export async function configure(ctx: Ctx): Promise<void> {
  checkAborted(ctx.signal);
  const t = ctx.target;
  const inTarget = async (args: string[]) => {
    const r = await runCapture('chroot', [t, ...args], ctx.signal);
    if (r.code !== 0) throw new CubeboxError('internal', `${args.join(' ')} in the new root failed: ${tail(r.output, 5)}`);
  };
  ctx.step(`creating user ${BASE_USER.name} (${BASE_USER.uid}:${BASE_USER.gid}, ${BASE_USER.home}, passwordless sudo)`);
  await inTarget(['/usr/sbin/groupadd', '--gid', String(BASE_USER.gid), BASE_USER.name]);
  await inTarget([
    '/usr/sbin/useradd',
    '--uid',
    String(BASE_USER.uid),
    '--gid',
    String(BASE_USER.gid),
    '--create-home',
    '--home-dir',
    BASE_USER.home,
    '--shell',
    BASE_USER.shell,
    BASE_USER.name,
  ]);
  for (const [file, f] of Object.entries(FILES)) {
    const p = path.join(t, file);
    await fs.rm(p, { force: true }); // never write through a symlink or into a copied host file
    await fs.mkdir(path.dirname(p), { recursive: true });
    await fs.writeFile(p, f.content, { mode: f.mode, flag: 'wx' });
    await fs.chmod(p, f.mode);
  }
  await inTarget(['/usr/sbin/visudo', '--check', '--quiet']);
  const nss = path.join(t, 'etc/nsswitch.conf');
  const nssText = await fs.readFile(nss, 'utf8');
  if (!/^hosts:.*\bmyhostname\b/m.test(nssText)) {
    await fs.writeFile(nss, nssText.replace(/^(hosts:\s*files)\b/m, '$1 myhostname'));
  }
  // su / runuser -l: the same PATH as the login shell.
  const loginDefs = path.join(t, 'etc/login.defs');
  const defs = await fs.readFile(loginDefs, 'utf8');
  await fs.writeFile(loginDefs, defs.replace(/^ENV_PATH\s.*$/m, `ENV_PATH\tPATH=${FULL_PATH}`));
  // Home: the skeleton files, owned by the user.
  for (const f of ['.bashrc', '.profile', '.bash_logout']) {
    const p = path.join(t, BASE_USER.home, f);
    if (!(await exists(p))) {
      await fs.copyFile(path.join(t, 'etc/skel', f), p);
      await fs.chown(p, BASE_USER.uid, BASE_USER.gid);
    }
  }

  ctx.step('removing apt caches, documentation, logs and device nodes');
  await emptyDir(path.join(t, 'var/cache/apt/archives'), (n) => n !== 'partial');
  await emptyDir(path.join(t, 'var/cache/apt/archives/partial'));
  await emptyDir(path.join(t, 'var/cache/apt'), (n) => n.endsWith('.bin'));
  await emptyDir(path.join(t, 'var/lib/apt/lists'));
  await emptyDir(path.join(t, 'var/cache/debconf'), (n) => n.endsWith('-old'));
  await emptyDir(path.join(t, 'var/lib/dpkg'), (n) => n.endsWith('-old'));
  for (const log of ['bootstrap.log', 'dpkg.log', 'alternatives.log', 'apt']) await fs.rm(path.join(t, 'var/log', log), { recursive: true, force: true });
  await slim(t);
  await emptyDir(path.join(t, 'dev')); // the runtime mounts its own /dev
  await fs.rm(path.join(t, 'debootstrap'), { recursive: true, force: true });
  for (const f of ['etc/machine-id', 'var/lib/dbus/machine-id']) await fs.rm(path.join(t, f), { force: true });
  await fs.chmod(path.join(t, 'tmp'), 0o1777);

  const missing = await missingEssentials(t);
  if (missing) throw new CubeboxError('internal', `the built tree lacks ${missing}`);
}

/** Deletes documentation, manual pages and translations (dpkg's excludes keep them out later). */
async function slim(root: string): Promise<void> {
  const walk = async (dir: string, keep: (rel: string) => boolean, rel = ''): Promise<void> => {
    let entries;
    try {
      entries = await fs.readdir(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const p = path.join(dir, e.name);
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) await walk(p, keep, r);
      else if (!keep(r)) await fs.rm(p, { force: true });
    }
  };
  const removeEmptyDirs = async (dir: string, top: boolean): Promise<void> => {
    const entries = await fs.readdir(dir, { withFileTypes: true }).catch(() => null);
    if (!entries) return;
    for (const e of entries) if (e.isDirectory()) await removeEmptyDirs(path.join(dir, e.name), false);
    if (!top && (await fs.readdir(dir)).length === 0) await fs.rmdir(dir);
  };
  const doc = path.join(root, 'usr/share/doc');
  await walk(doc, (r) => /^[^/]+\/copyright$/.test(r));
  await removeEmptyDirs(doc, true);
  const locale = path.join(root, 'usr/share/locale');
  await walk(locale, (r) => r === 'locale.alias');
  await removeEmptyDirs(locale, true);
  // Manual page directories stay: some package scripts expect /usr/share/man/man1 to exist.
  await walk(path.join(root, 'usr/share/man'), () => false);
  await walk(path.join(root, 'usr/share/info'), () => false);
}

export async function missingEssentials(root: string): Promise<string | null> {
  for (const f of ['bin/bash', 'usr/bin/python3', 'usr/bin/python', 'usr/bin/pip', 'usr/bin/git', 'usr/bin/sudo', 'etc/sudoers.d/user', 'home/user/.bashrc']) {
    try {
      await fs.lstat(path.join(root, f));
    } catch {
      return `/${f}`;
    }
  }
  return null;
}
