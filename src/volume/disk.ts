// A volume's host side: its own size-limited disk (a sparse ext4 image, loop-mounted like a
// sandbox's disk) and, per sandbox that mounts it, an idmapped writable view of its data.
//
//   <data-dir>/volumes/<id>/disk.img    the image (sparse: costs what is written)
//   <data-dir>/volumes/<id>/disk        its mount point (nodev, nosuid)
//   <data-dir>/volumes/<id>/disk/data   the volume's root, owned by canonical 1000:1000
//
// Files on the disk carry canonical ids: what a sandbox sees (0 = root, 1000 = user). Each
// sandbox gets `<sandbox-dir>/volumes/<n>`, an idmapped bind of that root that shows
// canonical id N as the sandbox's host id hostId+N, so its user reads and writes as itself,
// whichever id block the sandbox has; the runtime binds that view at the mount path, like any
// directory, or (a runtime with a kernel of its own) serves it through its file proxy like the
// root: reads, writes and canonical ownership hold, and sandboxes see each other's changes.
import { randomBytes } from 'node:crypto';
import { chownSync, existsSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { HELPER_BIN, type Paths } from '../config.js';
import { loopDevicesUnder, mountsUnder, releaseLoopDevices, unmountRootfs } from '../runtime/rootfs.js';
import type { Store } from '../store/store.js';
import { runOk } from '../util/exec.js';
import { mountDevice } from '../util/safe-socket.js';
import type { VolumeMountSpec } from '../store/store.js';

/** Each helper call ends within this, or fails (as rootfs.ts's do). */
const HELPER_TIMEOUT_MS = 20_000;
/** The sandbox user's canonical id: the owner of a new volume's root. */
export const VOLUME_OWNER = 1000;

export const volumesDir = (paths: Paths) => join(paths.dataDir, 'volumes');
export const volumeDir = (paths: Paths, id: string) => join(volumesDir(paths), id);
export const volumeDisk = (paths: Paths, id: string) => join(volumeDir(paths, id), 'disk');
export const volumeImage = (paths: Paths, id: string) => join(volumeDir(paths, id), 'disk.img');
export const volumeRoot = (paths: Paths, id: string) => join(volumeDisk(paths, id), 'data');

/** The device of the volume's disk when it is mounted, else undefined. */
export function volumeDevice(paths: Paths, id: string): number | undefined {
  return mountDevice(volumeDisk(paths, id));
}

/** Makes the volume's disk (or, when its image exists, mounts it again) and its root directory. */
export async function mountVolumeDisk(paths: Paths, id: string, sizeMB: number): Promise<void> {
  const dir = volumeDir(paths, id);
  mkdirSync(volumesDir(paths), { recursive: true, mode: 0o700 });
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const image = volumeImage(paths, id);
  if (!existsSync(image)) {
    const empty = await emptyVolumeImage(join(paths.dataDir, 'disks'), sizeMB);
    await runOk('cp', ['--sparse=always', empty, `${image}.tmp`]);
    renameSync(`${image}.tmp`, image);
  }
  mkdirSync(volumeDisk(paths, id), { recursive: true });
  if (volumeDevice(paths, id) === undefined) await runOk(HELPER_BIN, ['mount-disk', image, volumeDisk(paths, id)], { timeoutMs: HELPER_TIMEOUT_MS });
  const root = volumeRoot(paths, id);
  if (!existsSync(root)) {
    mkdirSync(root, { mode: 0o755 });
    chownSync(root, VOLUME_OWNER, VOLUME_OWNER);
  }
}

/**
 * An empty journaled ext4 image of that size, formatted once per size. Unlike a sandbox's
 * scratch disk a volume keeps data across crashes, so it has a journal; no reserved blocks.
 */
async function emptyVolumeImage(dir: string, sizeMB: number): Promise<string> {
  const file = join(dir, `volume-ext4-${sizeMB}M.img`);
  if (existsSync(file)) return file;
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const tmp = `${file}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`; // concurrent creates each make their own
  try {
    await runOk('truncate', ['-s', `${sizeMB}M`, tmp]);
    await runOk('mkfs.ext4', ['-q', '-F', '-m', '0', '-E', 'lazy_itable_init=1,nodiscard', tmp]);
    renameSync(tmp, file);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw err;
  }
  return file;
}

/** Unmounts the volume's disk, waits for its loop device to go, and removes its directory (image included). */
export async function destroyVolumeDisk(paths: Paths, id: string): Promise<void> {
  const dir = volumeDir(paths, id);
  await unmountRootfs(mountsUnder(dir));
  await releaseLoopDevices(dir);
  // never a recursive remove through a mount: that would empty the volume's disk
  if (mountsUnder(dir).length) throw new Error(`mounts remain under ${dir}`);
  rmSync(dir, { recursive: true, force: true });
}

/** What of a volume remains on the host: mounts, loop devices, its directory. */
export function volumeRemains(paths: Paths, id: string): string[] {
  const dir = volumeDir(paths, id);
  return [...mountsUnder(dir).map((m) => `mount ${m}`), ...loopDevicesUnder(dir).map((l) => `loop device ${l}`), ...(existsSync(dir) ? [`dir ${dir}`] : [])];
}

/** Where a sandbox sees its n-th volume mount (under its own directory, so teardown finds it). */
export const viewPath = (sandboxDir: string, n: number) => join(sandboxDir, 'volumes', String(n));

/**
 * Mounts a sandbox's view of each of its volumes, each recorded in the sandbox's ledger as a
 * 'mount' before it is made (teardown unmounts it on every path). Views already mounted (a
 * cold resume) are kept. idMap: the sandbox's id block; none without a user namespace.
 */
export async function mountVolumeViews(
  store: Store,
  paths: Paths,
  sandboxId: string,
  sandboxDir: string,
  mounts: VolumeMountSpec[] | undefined,
  idMap: { hostId: number; size: number } | undefined,
): Promise<void> {
  if (!mounts?.length) return;
  // traversable by the sandbox's root (the runtime binds from inside the user namespace), listable by host root only
  mkdirSync(join(sandboxDir, 'volumes'), { recursive: true, mode: 0o711 });
  for (const [n, m] of mounts.entries()) {
    const view = viewPath(sandboxDir, n);
    store.recordResource(sandboxId, 'mount', view);
    if (mountDevice(view) !== undefined) continue;
    if (volumeDevice(paths, m.volumeId) === undefined) throw new Error(`the disk of volume '${m.name}' is not mounted`);
    mkdirSync(view, { recursive: true });
    await runOk(HELPER_BIN, ['mount-view', volumeRoot(paths, m.volumeId), view, String(idMap?.hostId ?? 0), String(idMap?.size ?? 0)], {
      timeoutMs: HELPER_TIMEOUT_MS,
    });
  }
}

/** The runtime's bind mounts of a sandbox's volume views (for its bundle). */
export function volumeBinds(sandboxDir: string, mounts: VolumeMountSpec[] | undefined): { source: string; destination: string; readonly: boolean }[] {
  return (mounts ?? []).map((m, n) => ({ source: viewPath(sandboxDir, n), destination: m.path, readonly: false }));
}
