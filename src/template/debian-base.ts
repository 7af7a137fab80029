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
 *
 * The parts live in ./debian/: the recipe (recipe.ts), the cache entries (cache.ts),
 * debootstrap (debootstrap.ts), the post-processing into `base` (configure.ts), host facts
 * such as the mirror (host.ts), and the builder's processes and context (exec.ts).
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { removeTree } from '../runtime/remove-tree.js';
import { CubeboxError, errorMessage } from '../util/errors.js';
import { extractRootfsCache, NO_SPACE, removeStaleTemps, usableDebsCache, writeRootfsCache } from './debian/cache.js';
import { configure } from './debian/configure.js';
import { downloadPackages, runDebootstrap } from './debian/debootstrap.js';
import { checkAborted, exists, hashOf, touch, type Ctx } from './debian/exec.js';
import { debianArch, diskUsage, findDebianMirror, haveProgram, lowSpaceHints } from './debian/host.js';
import { BASE_PACKAGES, BASE_USER, FILES, FULL_PATH, RECIPE_VERSION, VARIANT } from './debian/recipe.js';

export { BASE_PACKAGES, BASE_USER } from './debian/recipe.js';
export { findDebianMirror } from './debian/host.js';

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
