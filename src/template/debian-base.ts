/**
 * Builds the E2B-style `base` root filesystem from Debian packages with debootstrap.
 *
 * The result is a plain directory owned by real uids (root 0, `user` 1000) holding a lean
 * Debian (minbase + bash, python3, git, curl, ca-certificates, sudo, tput, procps), a user
 * `user` with home /home/user and passwordless sudo, no apt caches, no device nodes and no
 * host-specific files (hostname, resolv.conf).
 *
 * Two cache entries make rebuilds fast, both keyed by what they are made from and written
 * under a temporary name that is renamed only when complete:
 *   - `debs-<suite>-<arch>-<key>.tgz`: debootstrap's --make-tarball of the downloaded
 *     packages (suite, mirror, architecture, package list); a build from it needs no
 *     network but still unpacks and configures every package.
 *   - `rootfs-<suite>-<arch>-<key>.tar.zst` (or .tar.gz without zstd): the finished root
 *     filesystem (package key plus this file's recipe); a build from it is a tar extraction.
 * An entry whose compression check fails is deleted and the build falls back to the next
 * source, so a corrupt entry never breaks a build.
 *
 * debootstrap runs in a private mount namespace, so the /proc and /sys it mounts inside
 * the target never show on the host and vanish with it even when it is killed; on failure
 * the target is checked against /proc/self/mountinfo anyway, unmounted if needed, and
 * emptied without crossing file systems.
 */
import { createHash, randomBytes } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { removeTree } from '../runtime/remove-tree.js';
import { runLines, type LinesResult } from '../util/exec.js';
import { CubeboxError, errorMessage } from '../util/errors.js';

export interface BaseBuildOptions {
  /** Directory for cache entries (created if missing). */
  cacheDir: string;
  /** Receives debootstrap's output lines and the builder's own step lines ("base: ..."). */
  onProgress?: (line: string) => void;
  /** Debian suite; default bookworm. */
  suite?: string;
  /** Debian mirror URL; default: the host's configured mirror for the suite (apt sources). */
  mirror?: string;
  /** Packages installed on top of the base set. */
  extraPackages?: string[];
  /** Ignore existing cache entries (download again) and replace them. */
  refresh?: boolean;
  /** Aborts the build: debootstrap is killed and nothing is left behind. */
  signal?: AbortSignal;
}

export type BaseBuildSource = 'rootfs-cache' | 'package-cache' | 'mirror';

export interface BaseBuildResult {
  /** Disk usage of the built tree (du -sx, bytes). */
  bytes: number;
  seconds: number;
  /** Where the tree came from: the finished-rootfs cache, the package cache, or the mirror. */
  source: BaseBuildSource;
}

/** The packages that make `base`, on top of debootstrap's minbase variant. */
export const BASE_PACKAGES: readonly string[] = [
  'bash',
  'coreutils',
  'python3',
  'git',
  'curl',
  'ca-certificates',
  'sudo',
  'ncurses-bin',
  'procps',
  // Resolves the sandbox's own hostname whatever it is and whatever /etc/hosts says, so
  // sudo does not complain "unable to resolve host".
  'libnss-myhostname',
];

export const BASE_USER = { name: 'user', uid: 1000, gid: 1000, home: '/home/user', shell: '/bin/bash' } as const;

const VARIANT = 'minbase';
const FULL_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** Files the recipe writes into the tree. Part of the rootfs cache key. */
const FILES: Record<string, { content: string; mode: number }> = {
  '/etc/sudoers.d/user': { content: `${BASE_USER.name} ALL=(ALL:ALL) NOPASSWD: ALL\n`, mode: 0o440 },
  '/etc/hostname': { content: 'localhost\n', mode: 0o644 },
  '/etc/hosts': {
    content: '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n',
    mode: 0o644,
  },
  '/etc/resolv.conf': { content: '', mode: 0o644 },
  '/etc/profile': {
    // Debian's /etc/profile, with one PATH for every user (as in E2B's images). It must
    // stay quiet and succeed: the SDK runs every command as `/bin/bash -l -c cmd`.
    content: `# /etc/profile: system-wide .profile file for the Bourne shell (sh(1))
# and Bourne compatible shells (bash(1), ksh(1), ash(1), ...).

PATH="${FULL_PATH}"
export PATH

if [ "\${PS1-}" ]; then
  if [ "\${BASH-}" ] && [ "$BASH" != "/bin/sh" ]; then
    # The file bash.bashrc already sets the default PS1.
    if [ -f /etc/bash.bashrc ]; then
      . /etc/bash.bashrc
    fi
  else
    if [ "$(id -u)" -eq 0 ]; then
      PS1='# '
    else
      PS1='$ '
    fi
  fi
fi

if [ -d /etc/profile.d ]; then
  for i in /etc/profile.d/*.sh; do
    if [ -r "$i" ]; then
      . "$i"
    fi
  done
  unset i
fi
`,
    mode: 0o644,
  },
  // Like Debian's slim images: no documentation, manual pages or translations, now or
  // from packages installed later (copyright files stay).
  '/etc/dpkg/dpkg.cfg.d/cubebox-slim': {
    content: `path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
`,
    mode: 0o644,
  },
  // apt keeps no downloaded packages in the image.
  '/etc/apt/apt.conf.d/cubebox-clean': {
    content: 'APT::Keep-Downloaded-Packages "false";\n',
    mode: 0o644,
  },
};

/** Bumped whenever the post-debootstrap recipe below changes in a way FILES does not show. */
const RECIPE_VERSION = 1;

/** Builds the E2B-style `base` root filesystem into targetDir (which must not exist or be empty). */
export async function buildDebianBase(targetDir: string, opts: BaseBuildOptions): Promise<BaseBuildResult> {
  const started = process.hrtime.bigint();
  const progress = (line: string) => {
    try {
      opts.onProgress?.(line);
    } catch {
      /* a failing listener must not break the build */
    }
  };
  const step = (line: string) => progress(`base: ${line}`);
  const suite = opts.suite ?? 'bookworm';
  if (!/^[a-z][a-z0-9.-]*$/.test(suite)) throw new CubeboxError('invalid_argument', `invalid Debian suite "${suite}"`);
  const extra = opts.extraPackages ?? [];
  for (const p of extra) {
    if (!/^[a-z0-9][a-z0-9+.-]+$/.test(p)) throw new CubeboxError('invalid_argument', `invalid package name "${p}"`);
  }
  if (process.getuid?.() !== 0) throw new CubeboxError('unavailable', 'building the base template needs root (debootstrap, chroot, file ownership)');
  checkAborted(opts.signal);

  const target = path.resolve(targetDir);
  const created = await prepareTarget(target);
  const cacheDir = path.resolve(opts.cacheDir);
  const temps: string[] = [];
  try {
    await fs.mkdir(cacheDir, { recursive: true, mode: 0o700 });
    await removeStaleTemps(cacheDir);

    const mirror = opts.mirror?.replace(/\/+$/, '') ?? (await findDebianMirror(suite));
    if (!/^(https?|file):\/\/\S+$/.test(mirror)) throw new CubeboxError('invalid_argument', `invalid Debian mirror URL "${mirror}"`);
    const arch = debianArch();
    const packages = [...new Set([...BASE_PACKAGES, ...extra])].sort();
    const debsKey = hashOf({ suite, arch, mirror, variant: VARIANT, packages });
    const rootfsKey = hashOf({ debsKey, recipe: RECIPE_VERSION, files: FILES, user: BASE_USER, path: FULL_PATH });
    const compressor = (await haveProgram('zstd')) ? 'zstd' : 'gzip';
    const debsFile = path.join(cacheDir, `debs-${suite}-${arch}-${debsKey}.tgz`);
    const rootfsFile = path.join(cacheDir, `rootfs-${suite}-${arch}-${rootfsKey}.tar.${compressor === 'zstd' ? 'zst' : 'gz'}`);
    const rootfsCandidates = ['zst', 'gz'].map((e) => path.join(cacheDir, `rootfs-${suite}-${arch}-${rootfsKey}.tar.${e}`));
    const ctx: Ctx = { target, suite, arch, mirror, packages, progress, step, signal: opts.signal, temps, cacheDir };

    // 1. The finished tree, if cached.
    if (!opts.refresh) {
      for (const file of rootfsCandidates) {
        if (!(await exists(file))) continue;
        if (await extractRootfsCache(ctx, file)) {
          await touch(file);
          return await finish(ctx, started, 'rootfs-cache');
        }
      }
    }

    // 2. debootstrap from the cached packages, or download them first.
    let source: BaseBuildSource = 'package-cache';
    if (opts.refresh || !(await usableDebsCache(ctx, debsFile))) {
      source = 'mirror';
      await downloadPackages(ctx, debsFile);
    } else {
      await touch(debsFile);
    }
    step(`installing packages from ${path.basename(debsFile)}`);
    try {
      await runDebootstrap(ctx, `--unpack-tarball=${debsFile}`, target, 'installing packages');
    } catch (err) {
      // A cached package set that fails to install for a reason other than space (or an
      // abort) may itself be bad: the next build downloads it again.
      if (source === 'package-cache' && !opts.signal?.aborted && !NO_SPACE.test(errorMessage(err))) {
        await fs.rm(debsFile, { force: true });
        step(`discarded the cached packages ${path.basename(debsFile)}`);
      }
      throw err;
    }
    await configure(ctx);
    checkAborted(opts.signal);
    await writeRootfsCache(ctx, rootfsFile, compressor);
    return await finish(ctx, started, source);
  } catch (err) {
    let msg = errorMessage(err);
    // Free space is measured before the partial tree goes.
    const low = await lowSpaceHints([target, cacheDir]);
    if (low.length) msg += ` (${low.join('; ')})`;
    const cleanup: string[] = [];
    for (const t of temps) await removeTree(t, false).catch((e: unknown) => cleanup.push(errorMessage(e)));
    await removeTree(target, !created).catch((e: unknown) => cleanup.push(errorMessage(e)));
    if (cleanup.length) msg += `; cleanup also failed: ${cleanup.join('; ')}`;
    const kind = err instanceof CubeboxError ? err.kind : 'internal';
    throw new CubeboxError(kind, msg, { cause: err });
  }
}

interface Ctx {
  target: string;
  suite: string;
  arch: string;
  mirror: string;
  packages: string[];
  progress: (line: string) => void;
  step: (line: string) => void;
  signal: AbortSignal | undefined;
  temps: string[];
  cacheDir: string;
}

async function finish(ctx: Ctx, started: bigint, source: BaseBuildSource): Promise<BaseBuildResult> {
  const bytes = await diskUsage(ctx.target);
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  ctx.step(`done: ${(bytes / 1e6).toFixed(0)} MB in ${seconds.toFixed(1)} s (from ${source})`);
  return { bytes, seconds, source };
}

// ---------------------------------------------------------------------------------------
// Target directory

/** Checks that target does not exist or is an empty directory; returns whether it was created. */
async function prepareTarget(target: string): Promise<boolean> {
  let st;
  try {
    st = await fs.lstat(target);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    await fs.mkdir(path.dirname(target), { recursive: true });
    await fs.mkdir(target, { mode: 0o755 });
    return true;
  }
  if (!st.isDirectory()) throw new CubeboxError('invalid_argument', `${target} exists and is not a directory`);
  if ((await fs.readdir(target)).length) throw new CubeboxError('invalid_argument', `${target} is not empty`);
  return false;
}

// ---------------------------------------------------------------------------------------
// Cache

async function extractRootfsCache(ctx: Ctx, file: string): Promise<boolean> {
  const name = path.basename(file);
  ctx.step(`checking cached root filesystem ${name}`);
  const zstd = file.endsWith('.zst');
  if (!(await verifyCompressed(file, zstd ? 'zstd' : 'gzip'))) {
    ctx.step(`cached ${name} is corrupt: deleting it`);
    await fs.rm(file, { force: true });
    return false;
  }
  ctx.step(`extracting cached root filesystem ${name}`);
  const r = await runCapture('tar', [...TAR_FLAGS, zstd ? '--zstd' : '--gzip', '-xf', file, '-C', ctx.target], ctx.signal);
  if (r.code !== 0) {
    if (NO_SPACE.test(r.output)) {
      throw new CubeboxError('unavailable', `extracting cached root filesystem ${file} failed: ${tail(r.output, 5)}`);
    }
    ctx.step(`cannot extract ${name} (${tail(r.output, 2)}): deleting it`);
    await fs.rm(file, { force: true });
    await removeTree(ctx.target, true);
    return false;
  }
  // A valid archive of something else (a stray file under the right name) is as bad as a corrupt one.
  const missing = await missingEssentials(ctx.target);
  if (missing) {
    ctx.step(`cached ${name} lacks ${missing}: deleting it`);
    await fs.rm(file, { force: true });
    await removeTree(ctx.target, true);
    return false;
  }
  ctx.step(`used cached root filesystem ${name}`);
  return true;
}

async function usableDebsCache(ctx: Ctx, file: string): Promise<boolean> {
  if (!(await exists(file))) return false;
  ctx.step(`checking cached packages ${path.basename(file)}`);
  if (await verifyCompressed(file, 'gzip')) return true;
  ctx.step(`cached ${path.basename(file)} is corrupt: deleting it`);
  await fs.rm(file, { force: true });
  return false;
}

async function downloadPackages(ctx: Ctx, debsFile: string): Promise<void> {
  const tmp = tempName(ctx.cacheDir, 'debs.tgz');
  const work = tempName(ctx.cacheDir, 'work');
  ctx.temps.push(tmp, work);
  ctx.step(`downloading ${ctx.packages.length} packages and their dependencies for ${ctx.suite}/${ctx.arch} from ${ctx.mirror}`);
  await runDebootstrap(ctx, `--make-tarball=${tmp}`, work, 'downloading packages');
  await removeTree(work, false);
  await fs.rename(tmp, debsFile);
  ctx.step(`cached packages as ${path.basename(debsFile)}`);
  await pruneCache(ctx.cacheDir, debsFile);
}

async function writeRootfsCache(ctx: Ctx, file: string, compressor: 'zstd' | 'gzip'): Promise<void> {
  const tmp = tempName(ctx.cacheDir, path.basename(file));
  ctx.temps.push(tmp);
  ctx.step(`caching the root filesystem as ${path.basename(file)}`);
  const r = await runCapture('tar', [...TAR_FLAGS, compressor === 'zstd' ? '--zstd' : '--gzip', '-cf', tmp, '-C', ctx.target, '.'], ctx.signal);
  if (r.code !== 0) {
    // The build itself is fine; only later builds lose the shortcut.
    await fs.rm(tmp, { force: true });
    ctx.step(`warning: could not cache the root filesystem: ${tail(r.output, 3)}`);
    return;
  }
  await fs.rename(tmp, file);
  await pruneCache(ctx.cacheDir, file);
}

/** Failures that say nothing about a cache entry, only about the disk it is written to. */
const NO_SPACE = /No space left on device|Disk quota exceeded|Read-only file system/;

const TAR_FLAGS = ['--numeric-owner', '--xattrs', '--xattrs-include=*', '--preserve-permissions', '--same-owner'];

async function verifyCompressed(file: string, kind: 'zstd' | 'gzip'): Promise<boolean> {
  const r = await runCapture(kind, kind === 'zstd' ? ['-q', '-t', file] : ['-t', file], undefined);
  return r.code === 0;
}

/** Keeps, per kind/suite/arch, the entry just written or used plus the one used most recently before it. */
async function pruneCache(cacheDir: string, keep: string): Promise<void> {
  const base = path.basename(keep);
  const prefix = base.split('-').slice(0, 3).join('-') + '-';
  const names = (await fs.readdir(cacheDir)).filter((n) => n.startsWith(prefix) && n !== base);
  const entries = await Promise.all(
    names.map(async (n) => ({ n, t: (await fs.stat(path.join(cacheDir, n)).catch(() => null))?.mtimeMs ?? 0 })),
  );
  entries.sort((a, b) => b.t - a.t);
  for (const e of entries.slice(1)) await fs.rm(path.join(cacheDir, e.n), { force: true });
}

const TEMP_PREFIX = '.tmp-';

function tempName(dir: string, what: string): string {
  return path.join(dir, `${TEMP_PREFIX}${process.pid}-${randomBytes(4).toString('hex')}-${what}`);
}

/** Removes temporary files and directories left by builds whose process is gone. */
async function removeStaleTemps(cacheDir: string): Promise<void> {
  for (const n of await fs.readdir(cacheDir)) {
    if (!n.startsWith(TEMP_PREFIX)) continue;
    const pid = Number(n.slice(TEMP_PREFIX.length).split('-')[0]);
    if (Number.isInteger(pid) && pid > 0 && processAlive(pid)) continue;
    await removeTree(path.join(cacheDir, n), false).catch(() => undefined);
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

// ---------------------------------------------------------------------------------------
// debootstrap

async function runDebootstrap(ctx: Ctx, tarballArg: string, dir: string, what: string): Promise<void> {
  if (!(await findProgram('debootstrap'))) {
    throw new CubeboxError('unavailable', 'debootstrap is not installed (apt-get install debootstrap); it builds the base template');
  }
  const args = [
    '--mount',
    '--propagation',
    'private',
    'debootstrap',
    `--variant=${VARIANT}`,
    `--arch=${ctx.arch}`,
    `--include=${ctx.packages.join(',')}`,
    tarballArg,
    ctx.suite,
    dir,
    ctx.mirror,
  ];
  const r = await runStreaming('unshare', args, ctx.progress, ctx.signal);
  if (r.code === 0) return;
  if (r.error) throw new CubeboxError('unavailable', `cannot run debootstrap: ${r.error}`);
  if (ctx.signal?.aborted) throw abortError(ctx.signal);
  const logTail = await readTail(path.join(dir, 'debootstrap', 'debootstrap.log'), 25);
  const errLine = [...r.lines].reverse().find((l) => l.startsWith('E:')) ?? r.lines[r.lines.length - 1] ?? '';
  const how = r.signal ? `killed by ${r.signal}` : `exit ${r.code}`;
  let msg = `debootstrap failed (${how}) ${what} for ${ctx.suite}/${ctx.arch} from ${ctx.mirror}: ${errLine || 'no output'}`;
  msg += `\n--- last lines of debootstrap's output ---\n${r.lines.slice(-15).join('\n')}`;
  if (logTail) msg += `\n--- last lines of debootstrap.log ---\n${logTail}`;
  throw new CubeboxError('unavailable', msg);
}

/** Makes the debootstrapped tree into `base`. */
async function configure(ctx: Ctx): Promise<void> {
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
    '--uid', String(BASE_USER.uid),
    '--gid', String(BASE_USER.gid),
    '--create-home',
    '--home-dir', BASE_USER.home,
    '--shell', BASE_USER.shell,
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

async function missingEssentials(root: string): Promise<string | null> {
  for (const f of ['bin/bash', 'usr/bin/python3', 'usr/bin/git', 'usr/bin/sudo', 'etc/sudoers.d/user', 'home/user/.bashrc']) {
    try {
      await fs.lstat(path.join(root, f));
    } catch {
      return `/${f}`;
    }
  }
  return null;
}

// ---------------------------------------------------------------------------------------
// Host facts

/** The host's configured Debian mirror for suite, from /etc/apt/sources.list{,.d/*.list,.d/*.sources}. */
export async function findDebianMirror(suite: string, aptDir = '/etc/apt'): Promise<string> {
  const entries: { uri: string; suites: string[] }[] = [];
  const files = [path.join(aptDir, 'sources.list')];
  try {
    for (const n of (await fs.readdir(path.join(aptDir, 'sources.list.d'))).sort()) {
      if (n.endsWith('.list') || n.endsWith('.sources')) files.push(path.join(aptDir, 'sources.list.d', n));
    }
  } catch {
    /* no sources.list.d */
  }
  for (const f of files) {
    let text: string;
    try {
      text = await fs.readFile(f, 'utf8');
    } catch {
      continue;
    }
    if (f.endsWith('.sources')) entries.push(...parseDeb822Sources(text));
    else entries.push(...parseOneLineSources(text));
  }
  const usable = entries.filter((e) => /^(https?|file):/.test(e.uri));
  const hit = usable.find((e) => e.suites.includes(suite)) ?? usable.find((e) => e.suites.includes(`${suite}-updates`));
  if (!hit) {
    throw new CubeboxError(
      'unavailable',
      `no Debian mirror for "${suite}" in ${aptDir}/sources.list or ${aptDir}/sources.list.d: pass a mirror URL`,
    );
  }
  return hit.uri.replace(/\/+$/, '');
}

function parseOneLineSources(text: string): { uri: string; suites: string[] }[] {
  const out: { uri: string; suites: string[] }[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.replace(/#.*/, '').replace(/\[[^\]]*\]/, ' ').trim();
    const [type, uri, dist] = line.split(/\s+/);
    if (type === 'deb' && uri && dist) out.push({ uri, suites: [dist] });
  }
  return out;
}

function parseDeb822Sources(text: string): { uri: string; suites: string[] }[] {
  const out: { uri: string; suites: string[] }[] = [];
  for (const stanza of text.split(/\n\s*\n/)) {
    const fields = new Map<string, string>();
    let last = '';
    for (const raw of stanza.split('\n')) {
      if (raw.startsWith('#')) continue;
      if (/^\s/.test(raw) && last) {
        fields.set(last, `${fields.get(last)} ${raw.trim()}`);
        continue;
      }
      const m = /^([A-Za-z0-9-]+):\s*(.*)$/.exec(raw);
      if (m) {
        last = m[1]!.toLowerCase();
        fields.set(last, m[2]!.trim());
      }
    }
    const types = (fields.get('types') ?? '').split(/\s+/);
    if (!types.includes('deb') || /^(no|false)$/i.test(fields.get('enabled') ?? '')) continue;
    const suites = (fields.get('suites') ?? '').split(/\s+/).filter(Boolean);
    for (const uri of (fields.get('uris') ?? '').split(/\s+/).filter(Boolean)) out.push({ uri, suites });
  }
  return out;
}

function debianArch(): string {
  const map: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'armhf', ia32: 'i386', ppc64: 'ppc64el', s390x: 's390x', riscv64: 'riscv64' };
  const a = map[process.arch];
  if (!a) throw new CubeboxError('unavailable', `no Debian architecture for ${process.arch}`);
  return a;
}

async function findProgram(name: string): Promise<string | null> {
  for (const dir of FULL_PATH.split(':')) {
    const p = path.join(dir, name);
    try {
      await fs.access(p, fsConstants.X_OK);
      return p;
    } catch {
      /* next */
    }
  }
  return null;
}

async function haveProgram(name: string): Promise<boolean> {
  const r = await runCapture(name, ['--version'], undefined);
  return r.code === 0;
}

/** "only N MB free on dir" for each distinct file system holding one of dirs that is nearly full. */
async function lowSpaceHints(dirs: string[]): Promise<string[]> {
  const out: string[] = [];
  const seen = new Set<number>();
  for (const dir of dirs) {
    for (const d of [dir, path.dirname(dir)]) {
      try {
        const dev = (await fs.stat(d)).dev;
        if (seen.has(dev)) break;
        seen.add(dev);
        const s = await fs.statfs(d);
        const free = s.bavail * s.bsize;
        if (free < 512e6) out.push(`only ${(free / 1e6).toFixed(0)} MB free on ${d}`);
        break;
      } catch {
        /* gone: try its parent */
      }
    }
  }
  return out;
}

async function diskUsage(dir: string): Promise<number> {
  const r = await runCapture('du', ['-s', '-x', '-B1', dir], undefined);
  const n = Number(r.output.split(/\s/)[0]);
  if (r.code !== 0 || !Number.isFinite(n)) throw new CubeboxError('internal', `du ${dir} failed: ${tail(r.output, 3)}`);
  return n;
}

// ---------------------------------------------------------------------------------------
// Removal (a tree with mounts below it: removeTree in runtime/remove-tree.ts)

async function emptyDir(dir: string, match: (name: string) => boolean = () => true): Promise<void> {
  let names: string[];
  try {
    names = await fs.readdir(dir);
  } catch {
    return;
  }
  for (const n of names) if (match(n)) await fs.rm(path.join(dir, n), { recursive: true, force: true });
}

// ---------------------------------------------------------------------------------------
// Processes

const CHILD_ENV = (): NodeJS.ProcessEnv => {
  const env: NodeJS.ProcessEnv = { ...process.env, LC_ALL: 'C', LANG: 'C', DEBIAN_FRONTEND: 'noninteractive' };
  env.PATH = FULL_PATH; // debootstrap and chroot live in sbin; never a caller's odd PATH
  delete env.LANGUAGE;
  return env;
};

/** Runs a build program (in its own process group, killed on abort) with the builder's environment. */
function runStreaming(file: string, args: string[], onLine: (l: string) => void, signal: AbortSignal | undefined): Promise<LinesResult> {
  return runLines(file, args, { onLine, signal, env: CHILD_ENV() });
}

/** Runs a program to completion, collecting stdout and stderr together. */
async function runCapture(file: string, args: string[], signal: AbortSignal | undefined): Promise<{ code: number; output: string }> {
  const out: string[] = [];
  const r = await runStreaming(file, args, (l) => out.push(l), signal);
  if (r.error) return { code: -1, output: r.error };
  if (signal?.aborted) throw abortError(signal);
  return { code: r.code, output: out.join('\n') };
}

function abortError(signal: AbortSignal): CubeboxError {
  const reason = signal.reason instanceof Error ? signal.reason.message : signal.reason ? String(signal.reason) : 'aborted';
  return new CubeboxError('unavailable', `base build aborted: ${reason}`);
}

function checkAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw abortError(signal);
}

// ---------------------------------------------------------------------------------------
// Small helpers

function hashOf(v: unknown): string {
  return createHash('sha256').update(JSON.stringify(v)).digest('hex').slice(0, 16);
}

async function exists(p: string): Promise<boolean> {
  try {
    await fs.access(p, fsConstants.F_OK);
    return true;
  } catch {
    return false;
  }
}

async function touch(p: string): Promise<void> {
  const now = new Date();
  await fs.utimes(p, now, now).catch(() => undefined);
}

async function readTail(file: string, n: number): Promise<string> {
  try {
    const text = await fs.readFile(file, 'utf8');
    return text.trimEnd().split('\n').slice(-n).join('\n');
  } catch {
    return '';
  }
}

function tail(text: string, n: number): string {
  return text.trim().split('\n').slice(-n).join(' | ') || 'no output';
}
