// The two cache entries (see debian-base.ts): checking and extracting the finished-rootfs
// entry, checking the package entry, writing entries under temporary names, pruning old
// entries and removing temporaries left by builds that died. A corrupt entry is deleted.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { removeTree } from '../../runtime/remove-tree.js';
import { CubeboxError } from '../../util/errors.js';
import { missingEssentials } from './configure.js';
import { exists, runCapture, tail, type Ctx } from './exec.js';

export async function extractRootfsCache(ctx: Ctx, file: string): Promise<boolean> {
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

export async function usableDebsCache(ctx: Ctx, file: string): Promise<boolean> {
  if (!(await exists(file))) return false;
  ctx.step(`checking cached packages ${path.basename(file)}`);
  if (await verifyCompressed(file, 'gzip')) return true;
  ctx.step(`cached ${path.basename(file)} is corrupt: deleting it`);
  await fs.rm(file, { force: true });
  return false;
}

export async function writeRootfsCache(ctx: Ctx, file: string, compressor: 'zstd' | 'gzip'): Promise<void> {
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
export const NO_SPACE = /No space left on device|Disk quota exceeded|Read-only file system/;

export const TAR_FLAGS = ['--numeric-owner', '--xattrs', '--xattrs-include=*', '--preserve-permissions', '--same-owner'];

async function verifyCompressed(file: string, kind: 'zstd' | 'gzip'): Promise<boolean> {
  const r = await runCapture(kind, kind === 'zstd' ? ['-q', '-t', file] : ['-t', file], undefined);
  return r.code === 0;
}

/** Keeps, per kind/suite/arch, the entry just written or used plus the one used most recently before it. */
export async function pruneCache(cacheDir: string, keep: string): Promise<void> {
  const base = path.basename(keep);
  const prefix = base.split('-').slice(0, 3).join('-') + '-';
  const names = (await fs.readdir(cacheDir)).filter((n) => n.startsWith(prefix) && n !== base);
  const entries = await Promise.all(names.map(async (n) => ({ n, t: (await fs.stat(path.join(cacheDir, n)).catch(() => null))?.mtimeMs ?? 0 })));
  entries.sort((a, b) => b.t - a.t);
  for (const e of entries.slice(1)) await fs.rm(path.join(cacheDir, e.n), { force: true });
}

const TEMP_PREFIX = '.tmp-';

export function tempName(dir: string, what: string): string {
  return path.join(dir, `${TEMP_PREFIX}${process.pid}-${randomBytes(4).toString('hex')}-${what}`);
}

/** Removes temporary files and directories left by builds whose process is gone. */
export async function removeStaleTemps(cacheDir: string): Promise<void> {
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
