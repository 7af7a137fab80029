/**
 * Builds the layer of the `code-interpreter-v1` template (E2B's default for
 * @e2b/code-interpreter) on top of `base`: Jupyter Server, IPython and IRkernel, the
 * Python data stack and a headless JDK (JShell), all from Debian packages.
 *
 * apt runs in a chroot of an overlay whose lower layers are base's and whose upper
 * directory is the new layer, so the layer holds exactly what the packages added or
 * changed (overlay whiteouts included). The overlay, /proc, /dev, the host's resolv.conf
 * and the package cache are mounted in a private mount namespace: they never show on the
 * host and vanish with it, even when the build is killed.
 *
 * Two cache entries, like base's (see debian-base.ts), under the cache directory:
 *   - `interp-debs/`: apt's downloaded packages, so a rebuild downloads nothing new;
 *   - `interp-layer-<arch>-<key>.tar.zst` (or .gz): the finished layer, keyed by the package
 *     list, this recipe and base's installed packages; a build from it is a tar extraction.
 *
 * What runs in the sandbox (the code-interpreter server, its kernels' helpers) is not in the
 * layer: it comes with the support tree at /.cubebox (src/interpreter/), so it follows the
 * project's version without a rebuild.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { SANDBOX_NODE } from '../runtime/support.js';
import { removeTree } from '../runtime/remove-tree.js';
import { CubeboxError, errorMessage } from '../util/errors.js';
import { NO_SPACE, removeStaleTemps, TAR_FLAGS, tempName, writeRootfsCache } from './debian/cache.js';
import { emptyDir, exists, runCapture, runStreaming, tail, touch, type Ctx } from './debian/exec.js';
import { debianArch, diskUsage, haveProgram } from './debian/host.js';
import { DETACH_PINNING_MOUNTS } from './debian/debootstrap.js';

export const CODE_INTERPRETER_TEMPLATE = 'code-interpreter-v1';

/** Debian 12 packages; apt adds their dependencies (never their recommendations). */
export const CODE_INTERPRETER_PACKAGES: readonly string[] = [
  'python3-jupyter-server',
  'python3-ipykernel',
  'python3-numpy',
  'python3-pandas',
  'python3-matplotlib',
  'python3-scipy',
  'python3-sklearn',
  'python3-seaborn',
  'python3-plotly',
  'python3-bs4',
  'python3-requests',
  'python3-openpyxl',
  'python3-pil',
  'python3-sympy',
  'r-base',
  'r-cran-irkernel',
  // Java contexts: the JDK's JShell (src/interpreter/java/); headless, no desktop libraries
  'openjdk-17-jdk-headless',
];

/** Bumped whenever the build below changes in a way the package list does not show. */
const RECIPE_VERSION = 1;

const NODE = SANDBOX_NODE;

/** The template's settings: the server (which starts Jupyter) and its readiness check. */
export const CODE_INTERPRETER_CONFIG = {
  memoryMB: 1024,
  startCommand: `exec ${NODE} /.cubebox/interpreter/server.mjs`,
  readyCommand: 'curl -fsS -m 2 http://127.0.0.1:49999/health >/dev/null',
} as const;

export interface LayerBuildResult {
  bytes: number;
  seconds: number;
  source: 'layer-cache' | 'apt';
}

/**
 * Fills layerDir (empty) with the code-interpreter layer over baseLayers (topmost first).
 * On failure everything this build made is removed; the caller removes layerDir.
 */
export async function buildCodeInterpreterLayer(
  layerDir: string,
  baseLayers: string[],
  opts: { cacheDir: string; onProgress?: (line: string) => void; signal?: AbortSignal },
): Promise<LayerBuildResult> {
  const started = process.hrtime.bigint();
  const progress = (line: string) => {
    try {
      opts.onProgress?.(line);
    } catch {
      /* a failing listener must not break the build */
    }
  };
  const step = (line: string) => progress(`code-interpreter: ${line}`);
  if (process.getuid?.() !== 0) throw new CubeboxError('unavailable', 'building the code-interpreter template needs root (overlay, chroot)');
  const cacheDir = path.resolve(opts.cacheDir);
  await fs.mkdir(cacheDir, { recursive: true, mode: 0o700 });
  await removeStaleTemps(cacheDir);
  const arch = debianArch();
  const status = await readBaseStatus(baseLayers);
  const key = createHash('sha256')
    .update(JSON.stringify({ packages: [...CODE_INTERPRETER_PACKAGES].sort(), recipe: RECIPE_VERSION, arch, base: status }))
    .digest('hex')
    .slice(0, 16);
  const compressor = (await haveProgram('zstd')) ? 'zstd' : 'gzip';
  const cacheName = (ext: string) => path.join(cacheDir, `interp-layer-${arch}-${key}.tar.${ext}`);
  const temps: string[] = [];
  const ctx: Ctx = { target: layerDir, suite: 'bookworm', arch, mirror: '', packages: [], progress, step, signal: opts.signal, temps, cacheDir };
  const done = async (source: LayerBuildResult['source']) => {
    const bytes = await diskUsage(layerDir);
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    step(`done: ${(bytes / 1e6).toFixed(0)} MB in ${seconds.toFixed(1)} s (from ${source})`);
    return { bytes, seconds, source };
  };
  try {
    for (const ext of ['zst', 'gz']) {
      const file = cacheName(ext);
      if ((await exists(file)) && (await extractLayerCache(ctx, file))) {
        await touch(file);
        return await done('layer-cache');
      }
    }
    await installPackages(ctx, layerDir, baseLayers);
    await writeRootfsCache(ctx, cacheName(compressor === 'zstd' ? 'zst' : 'gz'), compressor);
    return await done('apt');
  } catch (err) {
    let msg = errorMessage(err);
    const cleanup: string[] = [];
    for (const t of temps) await removeTree(t, false).catch((e: unknown) => cleanup.push(errorMessage(e)));
    if (cleanup.length) msg += `; cleanup also failed: ${cleanup.join('; ')}`;
    throw new CubeboxError(err instanceof CubeboxError ? err.kind : 'internal', msg, { cause: err });
  }
}

/** base's dpkg status: what the layer is installed against (part of the cache key). */
async function readBaseStatus(layers: string[]): Promise<string> {
  for (const l of layers) {
    const text = await fs.readFile(path.join(l, 'var/lib/dpkg/status'), 'utf8').catch(() => null);
    if (text !== null) return createHash('sha256').update(text).digest('hex');
  }
  throw new CubeboxError('invalid_argument', 'the parent template has no dpkg status: build code-interpreter on `base`');
}

/** A cached layer: checked, then extracted (a bad entry is deleted and the build goes on). */
async function extractLayerCache(ctx: Ctx, file: string): Promise<boolean> {
  const name = path.basename(file);
  const zstd = file.endsWith('.zst');
  ctx.step(`extracting cached layer ${name}`);
  const check = await runCapture(zstd ? 'zstd' : 'gzip', zstd ? ['-q', '-t', file] : ['-t', file], ctx.signal);
  const r = check.code === 0 ? await runCapture('tar', [...TAR_FLAGS, zstd ? '--zstd' : '--gzip', '-xf', file, '-C', ctx.target], ctx.signal) : check;
  if (r.code === 0 && (await missingFiles(ctx.target)) === null) return true;
  if (NO_SPACE.test(r.output)) throw new CubeboxError('unavailable', `extracting ${file} failed: ${tail(r.output, 5)}`);
  ctx.step(`cached ${name} is unusable (${tail(r.output, 2)}): deleting it`);
  await fs.rm(file, { force: true });
  await removeTree(ctx.target, true);
  return false;
}

/** The first file a complete layer must have that this one lacks, or null. */
async function missingFiles(layer: string): Promise<string | null> {
  for (const p of ['usr/lib/python3/dist-packages/jupyter_server', 'usr/lib/python3/dist-packages/ipykernel', 'usr/bin/R', 'usr/lib/jvm']) {
    if (!(await exists(path.join(layer, p)))) return `/${p}`;
  }
  return null;
}

/**
 * The script run in a private mount namespace: the overlay, the chroot's mounts, apt.
 * Positional arguments: lower upper work merged debs packages...
 */
// in a private copy of the host's mounts, which first lets go of what would pin sandboxes' disks (debootstrap.ts)
const INSTALL_SCRIPT = `${DETACH_PINNING_MOUNTS}
set -eu
lower=$1 upper=$2 work=$3 merged=$4 debs=$5
shift 5
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$upper,workdir=$work" "$merged"
mount -t proc proc "$merged/proc"
mount --rbind /dev "$merged/dev"
mount -t tmpfs tmpfs "$merged/tmp"
mount --bind /etc/resolv.conf "$merged/etc/resolv.conf"
mount --bind "$debs" "$merged/var/cache/apt/archives"
export DEBIAN_FRONTEND=noninteractive LC_ALL=C LANG=C
chroot "$merged" apt-get -q -o Dpkg::Use-Pty=0 update
chroot "$merged" apt-get -q -y -o Dpkg::Use-Pty=0 -o Dpkg::Options::=--force-unsafe-io -o APT::Keep-Downloaded-Packages=true \
  --no-install-recommends install "$@"
`;

async function installPackages(ctx: Ctx, layerDir: string, baseLayers: string[]): Promise<void> {
  const work = tempName(path.dirname(layerDir), 'interp-work');
  const merged = tempName(path.dirname(layerDir), 'interp-root');
  ctx.temps.push(work, merged);
  await fs.mkdir(work, { mode: 0o700 });
  await fs.mkdir(merged, { mode: 0o700 });
  const debs = path.join(ctx.cacheDir, 'interp-debs');
  await fs.mkdir(path.join(debs, 'partial'), { recursive: true, mode: 0o755 });
  ctx.step(`installing ${CODE_INTERPRETER_PACKAGES.length} packages and their dependencies with apt (packages cached in ${debs})`);
  const args = ['--mount', '--propagation', 'private', '/bin/sh', '-c', INSTALL_SCRIPT, 'install', baseLayers.join(':'), layerDir, work, merged, debs];
  const r = await runStreaming('unshare', [...args, ...CODE_INTERPRETER_PACKAGES], ctx.progress, ctx.signal);
  if (r.code !== 0) {
    const how = r.error ?? (r.signal ? `killed by ${r.signal}` : `exit ${r.code}`);
    throw new CubeboxError('unavailable', `installing the code-interpreter packages failed (${how}): ${tail(r.lines.join('\n'), 15)}`);
  }
  await removeTree(work, false);
  await removeTree(merged, false);
  ctx.step('removing apt lists, logs and caches from the layer');
  const t = layerDir;
  await emptyDir(path.join(t, 'var/lib/apt/lists'));
  await emptyDir(path.join(t, 'var/cache/apt'), (n) => n.endsWith('.bin'));
  await emptyDir(path.join(t, 'var/cache/debconf'), (n) => n.endsWith('-old'));
  await emptyDir(path.join(t, 'var/lib/dpkg'), (n) => n.endsWith('-old'));
  for (const log of ['dpkg.log', 'alternatives.log', 'apt']) await fs.rm(path.join(t, 'var/log', log), { recursive: true, force: true });
  const missing = await missingFiles(t);
  if (missing) throw new CubeboxError('internal', `the built layer lacks ${missing}`);
}
