// debootstrap, in a private mount namespace: downloading the packages into a cache entry,
// and installing them into the target.
import fs from 'node:fs/promises';
import path from 'node:path';
import { removeTree } from '../../runtime/remove-tree.js';
import { CubeboxError } from '../../util/errors.js';
import { pruneCache, tempName } from './cache.js';
import { abortError, readTail, runStreaming, type Ctx } from './exec.js';
import { findProgram } from './host.js';
import { VARIANT } from './recipe.js';

export async function downloadPackages(ctx: Ctx, debsFile: string): Promise<void> {
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

/**
 * debootstrap mounts /proc and /sys inside the target, so it runs in a mount namespace of its
 * own: they never show on the host. That namespace starts as a private copy of the host's, and
 * a copy pins what it holds: a sandbox's disk, overlay or volume unmounted on the host while
 * the build runs would stay alive in it (its loop device held, the sandbox's delete failing)
 * until debootstrap ends. So the copy first lets go of every overlay, network namespace and
 * loop-backed filesystem (deepest first; never the root), none of which a build needs, then
 * runs debootstrap. The code-interpreter layer's apt step does the same.
 */
export const DETACH_PINNING_MOUNTS = `awk '{ i = 7; while ($i != "-") i++; print $5, $(i + 1), $(i + 2) }' /proc/self/mountinfo | sort -r |
while read -r point type source; do
  [ "$point" = / ] && continue
  case "$type:$source" in overlay:*|nsfs:*|*:/dev/loop*) umount -l "$point" 2>/dev/null || true ;; esac
done`;

export async function runDebootstrap(ctx: Ctx, tarballArg: string, dir: string, what: string): Promise<void> {
  if (!(await findProgram('debootstrap'))) {
    throw new CubeboxError('unavailable', 'debootstrap is not installed (apt-get install debootstrap); it builds the base template');
  }
  const args = [
    '--mount',
    '--propagation',
    'private',
    '/bin/sh',
    '-c',
    `${DETACH_PINNING_MOUNTS}\nexec debootstrap "$@"`,
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
